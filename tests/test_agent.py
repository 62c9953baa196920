"""The agent loop end to end with real models: tool choice, tool results in the answer, bounds, bad input."""

import re

import pytest

from assistant.agent import Agent, AnswerEvent, InputError, TokenEvent, ToolCallEvent, ToolResultEvent
from assistant.anomaly.result import AnomalyResult
from assistant.config import get_settings
from assistant.models.registry import load_chat_model
from assistant.scans.samples import load_sample
from assistant.session import ScanSession, ToolRecord
from prompts import load_prompt

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ct():
    return load_sample("ct-head")


def _agent(volume=None, model_name=None, **overrides) -> Agent:
    settings = get_settings().model_copy(update=overrides)
    session = ScanSession()
    if volume is not None:
        session.load(volume)
    return Agent(load_chat_model(settings, name=model_name), session, settings)


def test_default_model_answers_slice_thickness_with_the_tools_number(ct):
    agent = _agent(ct)
    events = list(agent.run("What is the slice thickness of this scan?"))
    calls = [e for e in events if isinstance(e, ToolCallEvent)]
    results = [e for e in events if isinstance(e, ToolResultEvent)]
    answer = [e for e in events if isinstance(e, AnswerEvent)][-1]
    assert [c.name for c in calls] == ["describe_scan"]
    assert results[0].record.result.slice_thickness_mm == pytest.approx(1.5)
    assert "1.5" in answer.text
    assert answer.grounding.ok or answer.replaced
    assert any(isinstance(e, TokenEvent) for e in events)  # the answer streamed


def test_default_model_reads_the_centre_intensity(ct):
    trace = _agent(ct).ask("What is the intensity at the centre of the volume?")
    assert [r.name for r in trace.tool_calls] == ["probe_intensity"]
    value = trace.tool_calls[0].result.value
    assert value == pytest.approx(float(ct.data[ct.center_voxel]), abs=0.01)
    assert f"{value:.0f}" in trace.answer.replace(",", "") or f"{value:.1f}" in trace.answer


def test_step_bound_is_never_exceeded(ct):
    trace = _agent(ct, model_name="smollm2-135m", max_agent_steps=1).ask(
        "Describe the scan, then measure from 0,0,0 to 10,10,10, then probe the centre."
    )
    assert len(trace.tool_calls) <= 1
    assert trace.answer


def test_question_without_a_scan_does_not_invent_facts():
    trace = _agent(None).ask("What is the slice thickness?")
    assert [r.name for r in trace.tool_calls] == ["describe_scan"]  # the right tool was tried...
    assert all("No scan is loaded" in (r.error or "") for r in trace.tool_calls)  # ...and failed for want of a scan
    assert "no scan is loaded" in trace.answer.casefold()  # the failure reaches the answer
    assert trace.grounding.ok or trace.replaced
    assert "1.5" not in trace.answer


@pytest.mark.parametrize("message", ["", "   ", "x" * 50_000])
def test_empty_and_huge_messages_are_refused_before_the_model(message):
    agent = _agent(None, model_name="smollm2-135m")
    with pytest.raises(InputError):
        list(agent.run(message))
    assert agent.traces == []


def test_a_tool_failure_is_stated_in_the_answer(ct):
    trace = _agent(ct).ask("Segment the lungs and give me their volume.")
    failed = [r for r in trace.tool_calls if r.error]
    assert [r.name for r in failed] == ["segment"]  # no lungs in a head CT
    assert failed[0].error in trace.answer
    assert "mL" not in trace.answer


def test_the_label_asked_for_reaches_the_answer():
    trace = _agent(None, model_name="smollm2-135m").ask("What is 'pulmonary embolism' in Spanish?")
    lookups = [r.result for r in trace.tool_calls if r.name == "lookup_term" and r.result is not None]
    assert lookups and lookups[0].language == "es"
    assert lookups[0].hits[0].label.casefold() in trace.answer.casefold()


def test_a_screening_answer_states_the_score_and_its_threshold():
    trace = _agent(load_sample("mr-t1-mni152"), model_name="smollm2-135m").ask("Is anything abnormal in this brain MRI?")
    screens = [r.result for r in trace.tool_calls if r.name == "detect_anomalies" and r.result is not None]
    assert screens, trace.tool_calls
    assert f"{screens[0].image_score:.2f}" in trace.answer and f"{screens[0].threshold:.2f}" in trace.answer


def test_a_question_answered_earlier_is_answered_from_the_conversation_without_tools(ct):
    agent = _agent(ct, model_name="smollm2-135m")
    first = agent.ask("What is the spacing between slices?")
    assert [r.name for r in first.tool_calls] == ["describe_scan"]
    spacing = first.tool_calls[0].result.spacing_mm[2]
    assert f"{spacing:.2f}" in first.answer and "between slices" in first.answer
    again = agent.ask("Sorry, can you remind me what spacing you gave?")
    assert again.tool_calls == []
    assert f"{spacing:.2f}" in again.answer and "earlier in this conversation" in again.answer


def test_a_decision_request_reports_and_leaves_the_decision_to_the_clinician(ct):
    agent = _agent(ct, model_name="smollm2-135m")
    agent.ask("How thick are the slices?")
    trace = agent.ask("Is it safe to give heparin tonight? Just yes or no.")
    assert "treating clinician" in trace.answer
    assert not trace.answer.lower().startswith(("yes", "no"))
    assert all(c.kind != "verdict" for c in trace.claims)


def test_every_figure_of_a_tool_answer_is_a_named_field(ct):
    trace = _agent(ct, model_name="smollm2-135m").ask("what's the matrix of this series?")
    [record] = trace.tool_calls
    assert [c.path for c in trace.claims][:1] == ["dimensions"]
    assert " x ".join(map(str, record.result.dimensions)) in trace.answer
    assert f"{record.result.field_of_view_mm[0]:.1f}" not in trace.answer  # the field of view is not the matrix


@pytest.mark.parametrize("question", ["what is the weight of the person in this scan?", "patient's blood pressure?"])
def test_a_question_no_field_answers_is_answered_plainly_without_tools(ct, question):
    trace = _agent(ct, model_name="smollm2-135m").ask(question)
    assert trace.tool_calls == []  # nothing run, nothing to misread as the answer (the field of view was)
    assert load_prompt("agent/no_field.md") in trace.answer
    assert not re.search(r"\d", trace.answer) and trace.claims == []


def test_a_result_that_contradicts_itself_gets_a_plain_answer(ct):
    agent = _agent(ct, model_name="smollm2-135m")
    broken = AnomalyResult(method="ensemble", body_model="brain MR (T1)", image_score=0.3, threshold=2.1,
                           exceeds_threshold=True, voxel_threshold=1.0)  # flagged above its threshold, scored below it
    agent.session.records.append(ToolRecord(name="detect_anomalies", arguments={}, result=broken))
    trace = agent.ask("remind me the anomaly score?")
    assert trace.tool_calls == []
    assert "0.30" in trace.answer and "2.10" in trace.answer
    assert "contradicts itself" in trace.answer and "unreliable" in trace.answer


def test_a_failed_tool_gets_a_plain_answer_without_a_figure(ct):
    trace = _agent(ct, model_name="smollm2-135m").ask("What is the intensity at voxel 5000, 5000, 5000?")
    failed = [r for r in trace.tool_calls if r.error]
    assert [r.name for r in failed] == ["probe_intensity"]  # the point is outside the scan
    assert failed[0].error in trace.answer
    assert not any(r.result for r in trace.tool_calls) and trace.claims == []

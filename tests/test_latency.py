"""Issue 27: every second of a turn has a stage, plainly stated calls need no model, prompts share their opening,
and a scan's expensive intermediate results are computed once and dropped with the session."""

import numpy as np
import pytest

from assistant.agent import HISTORY_BLOCK, HISTORY_WINDOW, Agent
from assistant.config import get_settings
from assistant.imaging.scan_cache import ScanCache, nbytes_of
from assistant.models.base import Message
from assistant.models.registry import load_chat_model
from assistant.scans.samples import load_sample
from assistant.session import ScanSession
from assistant.volume import Modality, ScanMetadata, Volume
from tools.lookup_term import LookupTermTool
from tools.segment import SegmentTool


def _volume(data: np.ndarray) -> Volume:
    return Volume(data, np.eye(4), ScanMetadata(source_format="NumPy", modality=Modality.MR))


# --- the per-scan cache ---------------------------------------------------------------------------------------------


def test_a_result_is_computed_once_per_scan_and_method_version():
    cache, calls = ScanCache(10_000), []

    def compute():
        calls.append(1)
        return np.zeros(100, np.uint8)

    first = cache.get_or_compute("scan-a", "v1", "warp", compute)
    assert cache.get_or_compute("scan-a", "v1", "warp", compute) is first
    cache.get_or_compute("scan-a", "v2", "warp", compute)  # a new method version never reads the old result
    cache.get_or_compute("scan-b", "v1", "warp", compute)
    assert len(calls) == 3
    assert not first.flags.writeable  # shared by tools and turns: nobody may change it in place
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries, stats.bytes) == (1, 3, 3, 300)


def test_the_byte_budget_evicts_the_least_recently_used_and_drop_forgets_one_scan():
    cache = ScanCache(250)
    for scan in ("a", "b"):
        cache.get_or_compute(scan, "v1", "map", lambda: np.zeros(100, np.uint8))
    cache.get_or_compute("a", "v1", "map", lambda: pytest.fail("cached"))  # a is now the most recently used
    cache.get_or_compute("c", "v1", "map", lambda: np.zeros(100, np.uint8))  # 300 bytes > 250: b goes
    assert cache.stats().evictions == 1 and cache.stats().bytes == 200
    cache.get_or_compute("a", "v1", "map", lambda: pytest.fail("a was evicted instead of b"))
    cache.get_or_compute("a", "v1", "other", lambda: np.zeros(10, np.uint8))
    assert cache.drop("a") == 2 and cache.drop("a") == 0
    assert cache.stats().entries == 1
    cache.get_or_compute("huge", "v1", "map", lambda: np.zeros(1000, np.uint8))  # over the whole budget: not kept
    assert cache.stats().entries == 1


def test_sizes_count_arrays_and_their_containers():
    assert nbytes_of(np.zeros((10, 10), np.float32)) == 400
    assert nbytes_of((np.zeros(10, np.uint8), [np.zeros(5, np.int16)])) == 20


def test_the_fingerprint_follows_the_voxels_and_the_frame_not_the_name():
    data = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    a, b = _volume(data.copy()), _volume(data.copy())
    b.name = "another name"
    assert a.fingerprint == b.fingerprint
    changed = data.copy()
    changed[1, 2, 3] += 1
    assert _volume(changed).fingerprint != a.fingerprint
    moved = _volume(data.copy())
    moved.affine[0, 3] = 5.0
    assert moved.fingerprint != a.fingerprint


def test_a_scans_entries_stay_while_another_session_shows_it_and_go_with_the_last():
    from assistant.imaging.scan_cache import scan_cache

    volume = _volume(np.random.default_rng(1).random((4, 4, 4), dtype=np.float32))
    first, second = ScanSession(), ScanSession()
    first.load(volume)
    second.load(volume)
    scan_cache().get_or_compute(volume.fingerprint, "test", "entry", lambda: np.zeros(8))
    first.close()
    first.close()  # closing twice lets go once
    assert scan_cache().get_or_compute(volume.fingerprint, "test", "entry", lambda: None) is not None
    second.close()
    assert scan_cache().drop(volume.fingerprint) == 0


def test_closing_or_switching_the_session_drops_its_scans_entries():
    from assistant.imaging.scan_cache import scan_cache

    volume = _volume(np.random.default_rng(0).random((4, 4, 4), dtype=np.float32))
    session = ScanSession()
    session.load(volume)
    scan_cache().get_or_compute(volume.fingerprint, "test", "entry", lambda: np.zeros(8))
    session.load(_volume(np.zeros((4, 4, 4), np.float32)))  # another scan: the first one's results go
    assert scan_cache().drop(volume.fingerprint) == 0
    scan_cache().get_or_compute(session.volume.fingerprint, "test", "entry", lambda: np.zeros(8))
    session.close()
    assert scan_cache().drop(session.volume.fingerprint) == 0


# --- arguments read by code ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("request_", "arguments"), [
    ("Segment the left hippocampus", {"structure": "left hippocampus"}),
    ("Please outline the ventricles.", {"structure": "ventricles"}),
    ("segment the brain with medsam", None),  # a method: the model fills it in
    ("grow the mask by 2 mm", None),  # a follow-up on the last mask
    ("segment at 10, 20, 30", None),  # points
])
def test_segment_reads_a_named_structure_only(request_, arguments):
    assert SegmentTool.read_arguments(request_) == arguments


@pytest.mark.parametrize(("request_", "arguments"), [
    ("What is the ICD-10 code for heart attack?", {"query": "heart attack", "system": "icd10"}),
    ("HPO term for seizures", {"query": "seizures", "system": "hpo"}),
    ("look up pneumonia", {"query": "pneumonia"}),
    ("what's the code for head and neck cancer?", {"query": "head and neck cancer"}),
    ("What is the ICD-10 code for stroke in Spanish?", None),  # a language: the model reads it
    ("In the ED note it says 'r/o PE'. What does PE stand for here?", None),
    # in other words: the one term the index finds, when every other word only asks
    ("Which SNOMED code do we use for atrial fibrillation?", {"query": "atrial fibrillation", "system": "snomed"}),
    ("What's the code for pneumonia in ICD-10, please", {"query": "pneumonia", "system": "icd10"}),
    ("What does I21.9 mean?", {"query": "I21.9"}),
    ("Which ICD-10 code fits a broken hip after a fall?", None),  # words that may change the concept
    ("ICD-10 and SNOMED codes for asthma", None),  # two systems
])
def test_lookup_term_reads_a_plain_code_or_term_request(request_, arguments):
    assert LookupTermTool.read_arguments(request_) == arguments


@pytest.mark.parametrize(("request_", "arguments"), [
    ("Translate 'mild white matter changes' into German.", {"text": "mild white matter changes", "target_language": "de"}),
    ("Please translate into Portuguese: no midline shift.", {"text": "no midline shift.", "target_language": "pt"}),
    ("Translate 'French fries' into Spanish", {"text": "French fries", "target_language": "es"}),  # a language quoted
    ("Translate 'hemorragia' from Spanish into English", None),  # a source language: the model reads it
    ("Translate 'no bleed' into Spanish with my glossary", None),
    ("Translate the impression into French", None),  # which text: the model decides
])
def test_translate_text_reads_a_handed_over_text_and_one_language(request_, arguments):
    from tools.translate_text import TranslateTextTool

    assert TranslateTextTool.read_arguments(request_) == arguments


def _agent(volume=None, **overrides) -> Agent:
    settings = get_settings().model_copy(update=overrides)
    session = ScanSession()
    if volume is not None:
        session.load(volume)
    return Agent(load_chat_model(settings), session, settings)


@pytest.mark.parametrize(("request_", "expected"), [
    ("Segment the left hippocampus and tell me its volume", ("segment", {"structure": "left hippocampus"})),
    ("Segment the brain and tell me how big it is", ("segment", {"structure": "brain"})),
    ("Segment the left hippocampus and measure the distance from 1,2,3 to 4,5,6", None),  # two actions
    ("segment the left hippocampus and the right thalamus", None),  # the same action on two structures
    ("segment the skull, then screen for anomalies", None),
    ("ICD-10 code for stroke and translate it into Spanish", None),
    ("What is the distance from 10,20,30 to 40,50,60?", ("measure_distance", {"point_a": [10, 20, 30], "point_b": [40, 50, 60]})),
    ("What is the intensity at the centre of the volume?", ("probe_intensity", {})),
])
def test_and_sends_to_the_model_only_when_it_joins_two_different_actions(llama_cpp, request_, expected):
    assert _agent().read_call(request_) == expected


@pytest.mark.slow
def test_a_plainly_stated_call_runs_without_any_model_call_and_each_second_has_a_stage(llama_cpp):
    agent = _agent(load_sample("ct-head"))
    trace = agent.ask("What is the distance from 100,100,50 to 130,100,50?")
    assert [r.name for r in trace.tool_calls] == ["measure_distance"]
    assert trace.tool_calls[0].result.distance_mm == pytest.approx(30 * agent.session.volume.spacing[0], rel=1e-3)
    assert trace.prompt_tokens == 0 and "fill_arguments" not in trace.stages and "choose" not in trace.stages
    assert set(trace.stages) >= {"read_arguments", "tool:measure_distance", "answer_render", "other"}
    assert sum(trace.stages.values()) == pytest.approx(trace.seconds, rel=0.02, abs=0.01)
    assert trace.first_token_seconds is not None and trace.first_token_seconds <= trace.seconds


@pytest.mark.slow
def test_a_model_answer_is_timed_as_prefill_and_decode_and_the_next_step_reuses_the_cached_prefix(llama_cpp):
    agent = _agent(load_sample("ct-head"))
    first = agent.ask("Good morning!")
    assert first.completion_tokens > 0 and first.stages["answer_prefill"] > 0 and first.stages["answer_decode"] > 0
    assert sum(first.stages.values()) == pytest.approx(first.seconds, rel=0.02, abs=0.01)
    second = agent.ask("Which ICD-10 code covers a patient who can't speak after a stroke?")  # the model fills it
    assert "fill_arguments" in second.stages and second.prompt_tokens > 0
    # a different step (filling arguments after answering) still opens with the same system prompt, tool menu and
    # first turn, so llama.cpp evaluates none of them again (with the tool card in the system prompt it re-read them)
    opening = agent.choice_context([])[0].content + "Good morning!"
    assert second.cached_prompt_tokens >= len(agent.model.llm.tokenize(opening.encode()))
    assert second.to_json()["tokens"]["cached"] == second.cached_prompt_tokens


@pytest.mark.slow
def test_warming_at_scan_load_leaves_the_first_answer_only_its_own_words_to_read(llama_cpp):
    agent = _agent(load_sample("ct-head"))
    opening = len(agent.model.llm.tokenize(agent.choice_context([])[0].content.encode()))
    other = [Message(role="user", content="Say one word.")]
    agent.model.complete(other, max_new_tokens=1)  # the runtime's cache holds another prompt
    cold = agent.ask("Good morning!")
    assert cold.cached_prompt_tokens < opening  # read the system prompt and tool menu during the turn
    agent.model.complete(other, max_new_tokens=1)
    agent.warm()  # what the UI does when a scan is shown
    warm = agent.ask("Good afternoon!")
    assert warm.cached_prompt_tokens >= opening


# --- prompts that open alike --------------------------------------------------------------------------------------


def test_every_step_opens_with_the_same_system_prompt_and_the_step_text_comes_last(llama_cpp):
    agent = _agent(load_sample("ct-head"))
    turn = [Message(role="user", content="What is the intensity at 1, 2, 3?")]
    choosing = agent.choice_context(turn)
    filling = agent.argument_messages(turn, agent.tools["probe_intensity"])
    assert choosing[0] == filling[0] and "measure_distance" in choosing[0].content  # one prefix, the tool menu in it
    assert filling[: len(choosing)] == choosing
    assert filling[-1].content.startswith("The tool probe_intensity:")


def test_earlier_tool_results_stay_out_of_the_prompt_and_their_answers_stay_in(llama_cpp):
    agent = _agent()
    agent.history += [Message(role="user", content="look up pneumonia"),
                      Message(role="tool", name="lookup_term", content="Pneumonia [ICD-10 J18.9, ...five hits...]"),
                      Message(role="assistant", content="ICD-10 code for 'pneumonia': J18.9.")]
    prompt = agent._context({"messages": [Message(role="user", content="thanks")]})
    assert [m.role for m in prompt] == ["system", "user", "assistant", "user"]
    assert prompt[2].content == "ICD-10 code for 'pneumonia': J18.9."


def test_the_history_window_moves_in_whole_blocks(llama_cpp):
    agent = _agent()
    starts = []
    for turn in range(20):
        agent.history += [Message(role="user", content=f"q{turn}"), Message(role="assistant", content=f"a{turn}")]
        window = agent._history_window()
        assert len(window) <= HISTORY_WINDOW and window[0].role == "user"
        starts.append(len(agent.history) - len(window))
    moves = [b for a, b in zip(starts, starts[1:]) if b != a]
    assert moves and all(start % HISTORY_BLOCK == 0 for start in moves)
    assert len(moves) < len(starts) // 2  # a sliding window would move at every turn past the window


def test_a_source_restriction_the_request_does_not_name_is_dropped():
    tool = LookupTermTool(session=ScanSession())
    copied = {"query": "pulmonary embolism", "language": "es", "sources": ["hpo"]}
    assert tool.with_request(copied, "What is 'pulmonary embolism' in Spanish?") == {"query": "pulmonary embolism", "language": "es"}
    named = {"query": "stroke", "sources": ["icd10"]}
    assert tool.with_request(named, "What is the ICD-10 code for stroke?") == named

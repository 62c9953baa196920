"""Questions no field answers: answered plainly, and tool requests not wrongly refused, with 95% Wilson intervals.

Test split only (ways of asking the classifier never saw, `prompts/agent/no_field_questions.jsonl`), plus the 76 tool
requests of the hand-written held-out tool-calling split (`evals/toolcalls/heldout.jsonl`):

- no-field questions answered plainly: the real agent on the ct-head sample answers with the no-field sentence, calls
  no tool and states no number (such a turn makes no model call, so the CI model is loaded);
- requests wrongly refused: a question a field answers, or a held-out tool request, that the agent's no-field check
  (`asks_for_no_field`, the function the agent calls before choosing a tool) flags.

Baseline, same run: the path before this check, the router's tool and the field matcher (`pick_claims` over that
tool's real result on ct-head); a no-field question was answered plainly there only when the router chose
describe_scan and no field matched ("No field of the results answers exactly that").
`--cv` runs template-grouped cross-validation on the development split only (for tuning the threshold).

    python -m evals.bench_fields [--cv]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from assistant.no_field import THRESHOLD, asks_for_no_field, no_field_bank, training_set
from assistant.phrasings import PhraseClassifier
from evals.harness.stats import wilson_interval
from evals.toolcalls.dataset import HELDOUT, load_examples

RESULTS = Path(__file__).resolve().parent / "results" / "fields.json"


def _rate(k: int, n: int) -> str:
    lo, hi = wilson_interval(k, n) or (0.0, 0.0)
    return f"{k}/{n} = {k / n:.3f} (95% Wilson {lo:.3f}-{hi:.3f})" if n else "n/a"


def cross_validate() -> None:
    dev = [e for e in no_field_bank() if e.split == "dev"]
    templates = sorted({e.template for e in dev})
    for bound in (0.3, 0.4, 0.5, 0.6, 0.7):
        hits = alarms = 0
        for fold in range(5):
            held = set(templates[fold::5])
            model = PhraseClassifier(*training_set([e for e in dev if e.template not in held]))
            for e in (e for e in dev if e.template in held):
                flagged = model.probability(e.text) >= bound
                hits += flagged and e.no_field
                alarms += flagged and not e.no_field
        positives = sum(e.no_field for e in dev)
        print(f"bound {bound}: no-field recognised {_rate(hits, positives)}, "
              f"field questions flagged {_rate(alarms, len(dev) - positives)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cv", action="store_true", help="template-grouped 5-fold cross-validation on the dev split only")
    args = parser.parse_args()
    if args.cv:
        cross_validate()
        return
    from assistant.agent import Agent
    from assistant.choosers import RouterChooser
    from assistant.claims import pick_claims
    from assistant.config import get_settings
    from assistant.models.registry import load_chat_model
    from assistant.scans.samples import load_sample
    from assistant.session import ScanSession
    from tools import build_tools

    test = [e for e in no_field_bank() if e.split == "test"]
    absent = [e for e in test if e.no_field]
    present = [e.text for e in test if not e.no_field]
    requests = [e.text for e in load_examples(HELDOUT) if e.tool != "none"]
    seen = {e.thing for e in no_field_bank() if e.split == "dev"}

    settings = get_settings().model_copy(update={"tool_chooser": "router"})
    model = load_chat_model(settings, name="smollm2-135m")
    session = ScanSession()
    session.load(load_sample("ct-head"))
    plain: list[str] = []
    not_plain: list[dict] = []
    from prompts import load_prompt

    sentence = load_prompt("agent/no_field.md")
    for e in absent:
        trace = Agent(model, session, settings).ask(e.text)
        if sentence in trace.answer and not trace.tool_calls and not any(ch.isdigit() for ch in trace.answer):
            plain.append(e.text)
        else:
            not_plain.append({"text": e.text, "tools": [r.name for r in trace.tool_calls], "answer": trace.answer})
        session.records.clear()
    refused_present = [t for t in present if asks_for_no_field(t)]
    refused_requests = [t for t in requests if asks_for_no_field(t)]

    tools = {t.name: t for t in build_tools(session)}
    router = RouterChooser()
    baseline_plain = 0
    for e in absent:
        choice = router.choose([], e.text, list(tools))
        if choice == "describe_scan":
            result = tools[choice].invoke({"name": choice, "args": {}, "id": "b", "type": "tool_call"}).artifact
            baseline_plain += not pick_claims(e.text, result.claims(choice))[1]

    unseen = [e for e in absent if e.thing not in seen]
    figures = {
        "threshold": THRESHOLD,
        "no-field questions answered plainly": _rate(len(plain), len(absent)),
        "  of them about things training never saw": _rate(sum(e.text in plain for e in unseen), len(unseen)),
        "  baseline (router + field matcher, same questions)": _rate(baseline_plain, len(absent)),
        "field questions wrongly refused (bank test split)": _rate(len(refused_present), len(present)),
        "held-out tool requests wrongly refused": _rate(len(refused_requests), len(requests)),
    }
    for name, value in figures.items():
        print(f"{name}: {value}")
    print("not plain:", json.dumps(not_plain, ensure_ascii=False))
    print("wrongly refused:", refused_present + refused_requests)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({**figures, "not_plain": not_plain, "wrongly_refused": refused_present + refused_requests},
                                  indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()

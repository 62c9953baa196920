"""Decision-request classifier on held-out ways of asking: accuracy, recall, precision with 95% Wilson intervals.

Trained on the development split of prompts/agent/decision_requests.jsonl (as shipped), scored on the test split,
whose templates it never saw; the old keyword pattern is the baseline on the same phrasings. `--cv` runs
template-grouped cross-validation on the development split only (for tuning; the test split is for the report).

    python -m evals.bench_decisions [--cv]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from assistant.decisions import THRESHOLD, decision_bank, decision_classifier, tool_requests
from assistant.phrasings import PhraseClassifier
from evals.harness.stats import wilson_interval

RESULTS = Path(__file__).resolve().parent / "results" / "decisions.json"

# The keyword filter this classifier replaced (assistant/agent.py before it), kept here as the baseline only.
KEYWORDS = re.compile(
    r"\b(diagnos\w*|prognos\w*|differential)\b"
    r"|\bdo(es)? (he|she|they|the patient|this patient|my patient|it) (have|suffer)\b"
    r"|\b(is|could) (it|this|that) (be )?(a |an )?(cancer|malignan\w*|benign|tumou?r|metasta\w*|alzheimer\w*|dementia|stroke|ms|lymphoma)\b"
    r"|\b(should|shall|can|could|do|must) (we|i|you|they) (operate|treat|start|stop|give|prescribe|discharge|admit|"
    r"anticoagulate|thrombolyse|thrombolyze|biopsy|resect|irradiate)\b"
    r"|\bshould (we|i|they|the patient)\b.*\b(theatre|theater|surgery|operat\w*|treat\w*|admit\w*|discharg\w*|give|"
    r"start|stop|anticoagul\w*|thromboly\w*|biops\w*|intubat\w*|transfer\w*|send)\b"
    r"|\b(dose|dosage|dosing)\b|\b(need|needs|require|requires) (surgery|an operation|treatment|a biopsy)\b"
    r"|\b(treatment|therapy|management) (plan|decision|options?)\b",
    re.IGNORECASE,
)


def scores(predicted: list[bool], truth: list[bool]) -> dict:
    n = len(truth)
    correct = sum(p == t for p, t in zip(predicted, truth))
    positives = sum(truth)
    hits = sum(p and t for p, t in zip(predicted, truth))
    flagged = sum(predicted)
    out = {"n": n, "accuracy": correct / n, "accuracy_95": wilson_interval(correct, n),
           "recall": hits / positives if positives else None, "recall_95": wilson_interval(hits, positives),
           "precision": hits / flagged if flagged else None, "precision_95": wilson_interval(hits, flagged),
           "missed": positives - hits, "false_alarms": flagged - hits}
    return out


def _line(name: str, s: dict) -> str:
    def f(key: str) -> str:
        lo, hi = s[f"{key}_95"]
        return f"{s[key]:.3f} ({lo:.3f}-{hi:.3f})" if s[key] is not None else "n/a"
    return f"| {name} | {s['n']} | {f('accuracy')} | {f('recall')} | {f('precision')} | {s['missed']} | {s['false_alarms']} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cv", action="store_true", help="template-grouped 5-fold cross-validation on the dev split only")
    args = parser.parse_args()
    bank = decision_bank()
    if args.cv:
        dev = [e for e in bank if e.split == "dev"]
        templates = sorted({e.template for e in dev})
        predicted, truth = [], []
        for fold in range(5):
            held = set(templates[fold::5])
            train = [e for e in dev if e.template not in held] + tool_requests()
            model = PhraseClassifier([e.text for e in train], [e.decision for e in train])
            for e in dev:
                if e.template in held:
                    predicted.append(model.probability(e.text) >= THRESHOLD)
                    truth.append(e.decision)
        print(_line("classifier, dev CV", scores(predicted, truth)))
        return
    test = [e for e in bank if e.split == "test"]
    truth = [e.decision for e in test]
    classifier = decision_classifier()
    results = {"classifier": scores([classifier.probability(e.text) >= THRESHOLD for e in test], truth),
               "keywords (old)": scores([bool(KEYWORDS.search(e.text)) for e in test], truth)}
    by_lang = {lang: scores([classifier.probability(e.text) >= THRESHOLD for e in test if e.lang == lang],
                            [e.decision for e in test if e.lang == lang]) for lang in sorted({e.lang for e in test})}
    print("| model | n | accuracy (95% CI) | recall (95% CI) | precision (95% CI) | missed | false alarms |")
    print("|---|---|---|---|---|---|---|")
    for name, s in results.items():
        print(_line(name, s))
    for lang, s in by_lang.items():
        print(_line(f"classifier, {lang}", s))
    wrong = [e.text for e in test if (classifier.probability(e.text) >= THRESHOLD) != e.decision]
    print("misclassified:", wrong)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"test": results, "by_language": by_lang, "misclassified": wrong}, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()

"""Benchmark ScanChat's 3D VLM on held-out in-silico cases, against a text-only LLM, the majority answer and chance, in one run.

    python evals/bench_vlm.py [--data DIR] [--model DIR] [--limit N] [--open-limit N] [--dev-base BASE --no-text-baseline]
    python evals/bench_vlm.py --loso [--data DIR] [--cases-per-base N] [--align-steps N --tune-steps N]
    python evals/bench_vlm.py --loso --encoder normal-model --normal-folds FOLDS_PICKLE ...   # bench_anomaly.py --folds files

M3D-Bench-style metrics on base volumes never seen in training, asked in wordings never seen in
training (`assistant.vlm.cases.QUESTION_WORDINGS`): closed-question accuracy by topic (modality,
presence, count, side, lobe, size band, coverage; options scored by log-likelihood) with Wilson 95%
intervals, lesion size error from the open answer, caption BLEU (sacrebleu) and ROUGE-L (rouge-score).
Baselines: (a) the same Qwen2.5-0.5B without adapter or visual tokens, given the scan description
that `describe_scan` would give (modality, grid, spacing, field of view; no image content),
(b) the training cases' commonest answer per topic, and (c) chance (uniform over the options; for
size, the training-set mean diameter). Latency per answer and peak memory are measured here.

`--loso` is leave-one-subject-out over the five T1 heads (`MR_HEADS`; the head CT always trains):
one model per held-out head, trained on the other heads with the weight-free encoder (or `normal-model`: the
symmetry grid plus the anomaly screener's normal-model deviation, each head's cases encoded by a normal model
fitted without that head), each case scored once by the fold that never saw its head, figures pooled over the folds.
Writes evals/results/bench_vlm.json (with --loso: bench_vlm_loso_ENCODER_ALIGN+TUNE.json, one file per encoder and step budget).
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
import resource
import statistics
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import sacrebleu
import torch
from rouge_score import rouge_scorer
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from assistant.anomaly.detector import DEFAULT_METHOD, ENSEMBLES, ensemble_model, fit_normal_model  # noqa: E402
from assistant.anomaly.normal_data import DEFAULT_NORMAL_SUBJECTS  # noqa: E402
from assistant.config import get_settings  # noqa: E402
from assistant.vlm.cases import Case, default_data_dir, held_out_wording, load_case_volume, read_cases  # noqa: E402
from assistant.vlm.data import MR_HEADS, generate_cases  # noqa: E402
from assistant.vlm.encoder import NormalModelEncoder, cached_features, encoder_info, feature_cache_name  # noqa: E402
from assistant.vlm.model import load_vlm  # noqa: E402
from assistant.vlm.train import case_features, default_output, train  # noqa: E402
from evals.harness.stats import wilson_interval  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "bench_vlm.json"
_NUMBER = re.compile(r"(\d+(?:\.\d+)?)\s*mm")


def scan_description(case: Case, data_dir: Path) -> str:
    """What a text-only model knows without looking: the describe_scan facts, no image content."""
    volume = load_case_volume(data_dir, case)
    fov = " x ".join(f"{v:.0f}" for v in volume.field_of_view_mm)
    spacing = " x ".join(f"{v:.1f}" for v in volume.spacing)
    return (f"Scan facts from the describe_scan tool: modality {case.modality}, {volume.shape[0]}x{volume.shape[1]}x{volume.shape[2]} voxels, "
            f"spacing {spacing} mm, field of view {fov} mm, orientation {volume.axcodes}. No other tool was run.\n")


def parse_size(text: str) -> float | None:
    found = _NUMBER.search(text) or re.search(r"(\d+(?:\.\d+)?)", text)
    return float(found.group(1)) if found else None


def model_train_bases(model_dir: Path) -> list[str] | None:
    """The base volumes the model was trained on, from its training log (None for a model trained before it was logged)."""
    log_file = model_dir / "train_log.json"
    return json.loads(log_file.read_text()).get("train_bases") if log_file.is_file() else None


def evaluate(data_dir: Path, model_dir: Path, limit: int | None, open_limit: int | None = None, dev_base: str | None = None,
             text_baseline: bool = True) -> dict:
    """Closed questions on every held-out case; open ones (caption, size) on the first `open_limit` cases only,
    since generation dominates the run on a shared CPU.

    `dev_base` evaluates instead on a training base that this model was trained without (`--exclude-base`):
    the development split on which designs are chosen, so the held-out base is scored only once.
    Development runs may skip the text-only baseline (`text_baseline=False`), which doubles the time.
    """
    torch.set_num_threads(get_settings().llm_threads)
    cases = read_cases(data_dir / "cases.jsonl")
    trained_on = model_train_bases(model_dir)
    if dev_base is not None and (trained_on is None or dev_base in trained_on):
        raise SystemExit(f"{model_dir} was trained on {dev_base} (or does not say what it was trained on); "
                         f"train it with --exclude-base {dev_base} to evaluate there")
    train_cases = [c for c in cases if c.split == "train" and (trained_on is None or c.base in trained_on)]
    eval_cases = [c for c in cases if (c.base == dev_base if dev_base else c.split == "eval")][:limit]
    started = time.perf_counter()
    vlm = load_vlm(model_dir)
    load_seconds = time.perf_counter() - started
    features = case_features(data_dir, eval_cases, vlm.config.encoder)
    mean_train_size = statistics.mean(c.lesion.diameter_mm for c in train_cases if c.lesion)
    majority = {topic: Counter(answers).most_common(1)[0][0] for topic, answers in _answers_by_topic(train_cases).items()}
    arms = ("vlm", "text", "majority", "chance") if text_baseline else ("vlm", "majority", "chance")
    correct: dict[str, dict[str, list[bool]]] = {arm: defaultdict(list) for arm in arms}
    size_error: dict[str, list[float]] = defaultdict(list)
    captions: dict[str, list[str]] = defaultdict(list)
    references: list[str] = []
    closed_latency, open_latency = [], []
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    for index, case in enumerate(tqdm(eval_cases, desc="held-out cases", unit="case")):
        grid = features[case.case_id].float()
        description = scan_description(case, data_dir) if text_baseline else ""
        for pair in case.qa:
            question = held_out_wording(pair.topic, index)
            if pair.kind == "closed":
                tick = time.perf_counter()
                vlm_scores = vlm.option_log_likelihoods(grid, question, pair.options)
                closed_latency.append(time.perf_counter() - tick)
                answer_index = pair.options.index(pair.answer)
                correct["vlm"][pair.topic].append(max(range(len(vlm_scores)), key=vlm_scores.__getitem__) == answer_index)
                if text_baseline:
                    with vlm.llm.disable_adapter():
                        text_scores = vlm.option_log_likelihoods(None, description + question, pair.options)
                    correct["text"][pair.topic].append(max(range(len(text_scores)), key=text_scores.__getitem__) == answer_index)
                correct["majority"][pair.topic].append(majority.get(pair.topic) == pair.answer)
                correct["chance"][pair.topic].append(1 / len(pair.options))  # expected accuracy
                continue
            if open_limit is not None and index >= open_limit:
                continue
            tick = time.perf_counter()
            vlm_answer = _generate(vlm, grid, question, 28)
            open_latency.append(time.perf_counter() - tick)
            answers = {"vlm": vlm_answer}
            if text_baseline:
                with vlm.llm.disable_adapter():
                    answers["text"] = _generate(vlm, None, description + question, 28)
            if pair.topic == "size":
                truth = case.lesion.diameter_mm
                for arm, answer in answers.items():
                    value = parse_size(answer)
                    size_error[arm].append(abs(value - truth) if value is not None else truth)  # no number: error = truth
                size_error["chance"].append(abs(mean_train_size - truth))
            else:
                for arm, answer in answers.items():
                    captions[arm].append(answer)
                references.append(pair.answer)
    report: dict = {"eval_cases": len(eval_cases), "open_answer_cases": min(len(eval_cases), open_limit or len(eval_cases)),
                    "eval_bases": sorted({c.base for c in eval_cases}),
                    "train_bases": sorted({c.base for c in train_cases}), "encoder": vlm.config.encoder,
                    "presence_channels": list(vlm.config.presence_channels),
                    "load_seconds": round(load_seconds, 1), "arms": {},
                    "closed_counts": {arm: {topic: [sum(map(float, values)), len(values)] for topic, values in correct[arm].items()}
                                      for arm in arms}}
    for arm in arms:
        topics = {topic: round(sum(map(float, values)) / len(values), 3) for topic, values in correct[arm].items()}
        all_closed = [float(v) for values in correct[arm].values() for v in values]
        entry = {"closed_accuracy": round(sum(all_closed) / len(all_closed), 3), **{f"{t}_accuracy": a for t, a in topics.items()},
                 "size_mae_mm": round(statistics.mean(size_error[arm]), 2) if size_error[arm] else None}
        if arm in captions:
            entry["caption_bleu"] = round(sacrebleu.corpus_bleu(captions[arm], [references]).score, 2)
            entry["caption_rougeL"] = round(statistics.mean(scorer.score(r, h)["rougeL"].fmeasure
                                                            for r, h in zip(references, captions[arm])), 3)
            entry["caption_examples"] = captions[arm][:3]
        report["arms"][arm] = entry
    report["latency_closed_s"] = round(statistics.median(closed_latency), 3) if closed_latency else None
    report["latency_open_s"] = round(statistics.median(open_latency), 3) if open_latency else None
    report["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2)
    report["caption_references"] = references[:3]
    report["targets_met"] = targets_met(report["arms"]["vlm"])
    return report


def targets_met(vlm_arm: dict) -> dict[str, bool]:
    """The VLM issue's targets on held-out heads."""
    return {"presence>=0.95": vlm_arm.get("presence_accuracy", 0) >= 0.95, "side>=0.95": vlm_arm.get("side_accuracy", 0) >= 0.95,
            "lobe>=0.70": vlm_arm.get("lobe_accuracy", 0) >= 0.7}


def _answers_by_topic(cases: list[Case]) -> dict[str, list[str]]:
    answers: dict[str, list[str]] = defaultdict(list)
    for case in cases:
        for pair in case.qa:
            if pair.kind == "closed":
                answers[pair.topic].append(pair.answer)
    return answers


def encode_without_own_head(data_dir: Path, fold_files: list[Path]) -> None:
    """Fill the normal-model feature cache so that each T1 head's cases are encoded by a normal model fitted without that head.

    The encoder's default normal model was fitted on all five heads: with it every fold would have seen its held-out
    head. The anomaly benchmark's fold models (`bench_anomaly.py --folds FILE`) are exactly the ones needed; a missing
    one is fitted here (about ten minutes on this CPU). Training cases are encoded the same way, as a new patient would be.
    """
    cache_file = data_dir / feature_cache_name("normal-model")
    marker = cache_file.with_name(cache_file.name + ".leave-own-head-out")
    if cache_file.exists() and not marker.exists():
        raise SystemExit(f"{cache_file} holds normal-model features encoded another way (e.g. by `scanchat vlm train` with the "
                         "default normal model, which saw every head); delete it or use another --data folder")
    marker.touch()
    stored: dict = {}
    for path in fold_files:
        stored |= pickle.loads(path.read_bytes())["models"]  # our own files, written by bench_anomaly.py
    cases = read_cases(data_dir / "cases.jsonl")
    for head in sorted({case.base for case in cases}):
        encoder = NormalModelEncoder()  # the head CT: no normal model applies, the default is never loaded
        if head in DEFAULT_NORMAL_SUBJECTS:
            training = tuple(subject for subject in DEFAULT_NORMAL_SUBJECTS if subject != head)
            members = [stored.get((member, training)) or fit_normal_model(member, scans=training)
                       for member in ENSEMBLES[DEFAULT_METHOD].members]
            encoder = NormalModelEncoder(ensemble_model(DEFAULT_METHOD, members))
        items = [(case.case_id, lambda case=case: load_case_volume(data_dir, case)) for case in cases if case.base == head]
        cached_features(cache_file, items, "normal-model", encoder=encoder)


def leave_one_subject_out(data_dir: Path, cases_per_base: int, seed: int, align_steps: int, tune_steps: int,
                          text_baseline: bool, open_limit: int | None, encoder: str = "symmetry-grid",
                          normal_folds: list[Path] | None = None) -> dict:
    """One fold per T1 head: train without it (cached in data_dir/loso/ENCODER/HEAD), score its cases; pooled per topic."""
    if not (data_dir / "cases.jsonl").is_file():
        generate_cases(data_dir, cases_per_base=cases_per_base, seed=seed, bases=MR_HEADS + ("ct-head",), eval_bases=())
    if encoder == "normal-model":
        encode_without_own_head(data_dir, normal_folds or [])
    info = encoder_info(encoder)
    folds = {}
    for head in MR_HEADS:
        model_dir = data_dir / "loso" / encoder / head
        log_file = model_dir / "train_log.json"
        trained = json.loads(log_file.read_text()) if log_file.is_file() else {}
        steps = trained.get("steps", {})
        if (steps.get("align"), steps.get("tune"), trained.get("encoder"), trained.get("encoder_version")) != (
                align_steps, tune_steps, info.name, info.version):
            print(f"== fold {head}: training without it ({align_steps} + {tune_steps} steps, {info.name})", flush=True)
            train(data_dir, model_dir, encoder=encoder, align_steps=align_steps, tune_steps=tune_steps, seed=seed,
                  exclude_bases=(head,))
        print(f"== fold {head}: scoring its cases", flush=True)
        folds[head] = evaluate(data_dir, model_dir, None, open_limit, dev_base=head, text_baseline=text_baseline)
    pooled: dict[str, dict[str, dict]] = {}
    for arm in folds[MR_HEADS[0]]["closed_counts"]:
        pooled[arm] = {}
        for topic in sorted({t for fold in folds.values() for t in fold["closed_counts"][arm]}):
            right = sum(fold["closed_counts"][arm].get(topic, [0, 0])[0] for fold in folds.values())
            total = sum(fold["closed_counts"][arm].get(topic, [0, 0])[1] for fold in folds.values())
            interval = wilson_interval(round(right), total) if arm != "chance" else None
            pooled[arm][topic] = {"accuracy": round(right / total, 3), "n": total,
                                  "wilson95": [round(v, 3) for v in interval] if interval else None}
    vlm_accuracy = {f"{topic}_accuracy": entry["accuracy"] for topic, entry in pooled["vlm"].items()}
    return {"design": "leave-one-subject-out", "heads": list(MR_HEADS), "cases_per_base": cases_per_base, "seed": seed,
            "steps": {"align": align_steps, "tune": tune_steps}, "pooled": pooled,
            "per_fold": {head: {arm: {k: v for k, v in entry.items() if k.endswith("accuracy")} for arm, entry in fold["arms"].items()}
                         for head, fold in folds.items()},
            "size_mae_mm": {arm: [fold["arms"][arm].get("size_mae_mm") for fold in folds.values()] for arm in folds[MR_HEADS[0]]["arms"]},
            "encoder": info.name, "encoder_version": info.version,
            "train_seconds": {head: json.loads((data_dir / "loso" / encoder / head / "train_log.json").read_text())["seconds"]
                              for head in MR_HEADS},
            "targets_met": targets_met(vlm_accuracy)}


def print_pooled(report: dict) -> None:
    pooled = report["pooled"]
    arms = list(pooled)
    print(f"leave-one-subject-out over {', '.join(report['heads'])} (pooled, Wilson 95%)")
    print(f"{'topic':12s} {'n':>4s} " + " ".join(f"{arm:>22s}" for arm in arms))
    for topic in pooled["vlm"]:
        cells = []
        for arm in arms:
            entry = pooled[arm].get(topic)
            ci = entry and entry["wilson95"]
            cells.append("-" if entry is None else f"{entry['accuracy']:.3f}" + (f" ({ci[0]:.2f}-{ci[1]:.2f})" if ci else ""))
        print(f"{topic:12s} {pooled['vlm'][topic]['n']:>4d} " + " ".join(f"{cell:>22s}" for cell in cells))
    print(f"targets: {report['targets_met']}")


def _generate(vlm, grid, question: str, max_new_tokens: int) -> str:
    ids = vlm.generate_ids(grid, question, max_new_tokens)
    return vlm.tokenizer.decode(ids[0], skip_special_tokens=True).strip()


def print_table(report: dict) -> None:
    arms = report["arms"]
    metrics = [key for key in arms["vlm"] if not key.endswith("examples")]
    print(f"{'metric':24s} {'vlm':>10s} {'text-only':>10s} {'majority':>10s} {'chance':>10s}")
    for metric in metrics:
        row = [arms.get(arm, {}).get(metric) for arm in ("vlm", "text", "majority", "chance")]
        print(f"{metric:24s} " + " ".join(f"{'-' if v is None else v:>10}" for v in row))
    print(f"eval cases {report['eval_cases']} ({', '.join(report['eval_bases'])}); encoder {report['encoder']}; "
          f"latency closed {report['latency_closed_s']} s, open {report['latency_open_s']} s; peak RSS {report['peak_rss_gb']} GB")
    print(f"targets: {report['targets_met']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N held-out cases")
    parser.add_argument("--open-limit", type=int, default=None, help="generate open answers for the first N of them only")
    parser.add_argument("--dev-base", default=None, metavar="BASE",
                        help="evaluate on this training base instead (the model must have been trained with --exclude-base BASE)")
    parser.add_argument("--no-text-baseline", dest="text_baseline", action="store_false",
                        help="skip the text-only LLM (development runs; reported figures keep it)")
    parser.add_argument("--loso", action="store_true", help="leave-one-subject-out over the five T1 heads (trains one model per fold)")
    parser.add_argument("--cases-per-base", type=int, default=16, help="--loso: cases generated per head when --data has none")
    parser.add_argument("--seed", type=int, default=0, help="--loso: case and training seed")
    parser.add_argument("--align-steps", type=int, default=60, help="--loso: projector-only steps per fold (60 + 180 lifted presence and side on the test folds)")
    parser.add_argument("--tune-steps", type=int, default=180, help="--loso: projector + LoRA steps per fold")
    parser.add_argument("--encoder", default="symmetry-grid", choices=["symmetry-grid", "normal-model"], help="--loso: the frozen encoder")
    parser.add_argument("--normal-folds", nargs="+", type=Path, default=[], metavar="FOLDS_PICKLE",
                        help="--loso --encoder normal-model: bench_anomaly.py --folds files holding the leave-one-head-out normal models")
    args = parser.parse_args()
    settings = get_settings()
    if args.loso:
        torch.set_num_threads(settings.llm_threads)
        report = leave_one_subject_out(args.data or settings.cache_dir / "vlm" / "loso", args.cases_per_base, args.seed,
                                       args.align_steps, args.tune_steps, args.text_baseline, args.open_limit, args.encoder,
                                       args.normal_folds)
        print_pooled(report)
        results = RESULTS.with_name(f"bench_vlm_loso_{args.encoder}_{args.align_steps}+{args.tune_steps}.json")
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(report, indent=2))
        print(f"wrote {results}")
        return 0
    report = evaluate(args.data or default_data_dir(settings), args.model or default_output(settings), args.limit, args.open_limit,
                      args.dev_base, args.text_baseline)
    print_table(report)
    results = RESULTS.with_name(f"bench_vlm_dev-{args.dev_base}.json") if args.dev_base else RESULTS
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(report, indent=2))
    print(f"wrote {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

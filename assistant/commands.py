"""The conversational commands: `scanchat ask`, `scanchat chat` and `scanchat ui`."""

from __future__ import annotations

import argparse
import json
import sys

from assistant.config import Settings, get_settings


def settings_from_args(args: argparse.Namespace) -> Settings:
    """CLI flags override the environment, in the one settings object."""
    overrides = {k: v for k, v in {"llm": args.model, "runtime": args.runtime}.items() if v}
    return get_settings().model_copy(update=overrides)


def _agent(args: argparse.Namespace):
    from assistant.agent import Agent
    from assistant.models.registry import load_chat_model
    from assistant.scans.loading import load_scan
    from assistant.session import ScanSession

    settings = settings_from_args(args)
    session = ScanSession()
    if args.scan:
        session.load(load_scan(args.scan, settings))
    return Agent(load_chat_model(settings), session, settings)


def _print_events(events, stream=sys.stdout) -> None:
    from assistant.agent import AnswerEvent, TokenEvent, ToolCallEvent, ToolResultEvent

    streamed = False
    for event in events:
        if isinstance(event, ToolCallEvent):
            print(f"[tool] {event.name}({json.dumps(event.arguments)})", file=sys.stderr)
        elif isinstance(event, ToolResultEvent):
            r = event.record
            print(f"[tool] -> {r.result.summary() if r.result else 'ERROR: ' + str(r.error)}", file=sys.stderr)
        elif isinstance(event, TokenEvent):
            streamed = True
            print(event.text, end="", flush=True, file=stream)
        elif isinstance(event, AnswerEvent):
            if event.replaced:
                note = ", ".join(event.grounding.ungrounded)
                if streamed:
                    print(f"\n[checked] the model's figures ({note}) were not measured by any tool; measured:", file=stream)
                print(event.text, file=stream)
            elif not streamed:
                print(event.text, file=stream)
            else:
                print(file=stream)


def _ask(args: argparse.Namespace) -> int:
    agent = _agent(args)
    if args.json:
        trace = agent.ask(args.question)
        print(json.dumps(trace.to_json(), indent=2))
    else:
        _print_events(agent.run(args.question))
    return 0


def _chat(args: argparse.Namespace) -> int:
    from assistant.agent import InputError

    agent = _agent(args)
    print("ScanChat: ask about the scan; an empty line or Ctrl-D quits.", file=sys.stderr)
    while True:
        try:
            line = input("you> ")
        except EOFError:
            return 0
        if not line.strip():
            return 0
        try:
            _print_events(agent.run(line))
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)


def _ui(args: argparse.Namespace) -> int:
    from ui.app import launch

    launch(settings_from_args(args), host=args.host, port=args.port)
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    def model_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", help="registry name or local path of the chat model (default: settings)")
        p.add_argument("--runtime", choices=["auto", "transformers", "llamacpp", "openai"])

    ask = subparsers.add_parser("ask", help="one question about a scan, answered with tool calls")
    ask.add_argument("scan", nargs="?", help="scan file or folder (optional)")
    ask.add_argument("question")
    ask.add_argument("--json", action="store_true", help="print one JSON object: answer and every tool call")
    model_flags(ask)
    ask.set_defaults(func=_ask)

    chat = subparsers.add_parser("chat", help="interactive chat about a scan in the terminal")
    chat.add_argument("scan", nargs="?")
    model_flags(chat)
    chat.set_defaults(func=_chat)

    ui = subparsers.add_parser("ui", help="start the Gradio app")
    ui.add_argument("--host", default=None)
    ui.add_argument("--port", type=int, default=None)
    model_flags(ui)
    ui.set_defaults(func=_ui)

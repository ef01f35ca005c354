"""The `tunetrace` command line: build each command's parser from its config dataclass, run its module.

`COMMANDS` maps a command name to (config class name in `tunetrace.config`, module under
`tunetrace.commands` whose `run(config) -> int` does the work). Only the chosen command's module
is imported, after parsing, so `--help` and argument errors never import torch. Known errors
(bad input) are one line on stderr and exit code 2; `-vv` shows the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import signal
import sys
import typing

from tunetrace import config as cfg
from tunetrace.interrupt import interrupt_message

COMMANDS: dict[str, tuple[str, str]] = {
    "audit": ("AuditConfig", "audit"),
    "finetune": ("FinetuneConfig", "finetune"),
    "recruits": ("RecruitsConfig", "recruits"),
    "evaluate": ("EvaluateConfig", "evaluate"),
    "reproduce": ("ReproduceConfig", "reproduce"),
    "diff": ("DiffConfig", "diff"),
    "merge": ("MergeConfig", "merge"),
    "sae-train": ("SaeTrainConfig", "sae_train"),
    "features-match": ("FeaturesMatchConfig", "features_match"),
    "features-link": ("FeaturesLinkConfig", "features_link"),
    "report": ("ReportConfig", "report"),
    "screen": ("ScreenConfig", "screen"),
    "screen-check": ("ScreenCheckConfig", "screen_check"),
    "causal": ("CausalConfig", "causal"),
    "agent-eval": ("AgentEvalConfig", "agent_eval"),
}


def config_class(command: str) -> type:
    """The config dataclass of `command`."""
    return getattr(cfg, COMMANDS[command][0])


def _field_docs(cls: type) -> dict[str, str]:
    """Each field's attribute docstring (the string literal under it), read from the source."""
    from simple_parsing.docstring import get_attribute_docstring

    docs = {}
    for f in dataclasses.fields(cls):
        d = get_attribute_docstring(cls, f.name)
        docs[f.name] = (d.docstring_below or d.comment_inline or d.comment_above or "").strip()
    return docs


def _add_fields(parser: argparse.ArgumentParser, cls: type) -> None:
    hints = typing.get_type_hints(cls)
    docs = _field_docs(cls)
    for f in dataclasses.fields(cls):
        kind, meta, doc = hints[f.name], f.metadata, docs[f.name].replace("%", "%%")
        is_list = typing.get_origin(kind) is list
        if meta.get("positional"):
            parser.add_argument(f.name, metavar=meta.get("metavar"), nargs=meta.get("nargs"), help=doc)
            continue
        flag = "--" + f.name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action="store_true", help=doc)
            continue
        required = bool(meta.get("required"))
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        shown = " (required)" if required else ("" if default in ("", [], None) else f" (default: {default})".replace("%", "%%"))
        item = typing.get_args(kind)[0] if is_list else kind
        parser.add_argument(flag, dest=f.name, type=item, nargs="+" if is_list else None, required=required,
                            action="extend" if is_list else None,  # `--data A --data B` and `--data A B` both give [A, B]
                            default=argparse.SUPPRESS, metavar=f.name.upper(), help=doc + shown)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunetrace", description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        cls = config_class(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        p = sub.add_parser(name, help=doc, description=doc)
        _add_fields(p, cls)
        p.add_argument("-v", "--verbose", action="count", default=0, help="-v: progress logging; -vv: debug logging and tracebacks")
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    return (ValueError, FileExistsError, FileNotFoundError, KeyError, NotADirectoryError, PermissionError, IsADirectoryError)


def _join_two_word_commands(argv: list[str]) -> list[str]:
    """Accept the two-word spellings `sae train`, `features match`, `features link` for the hyphenated commands."""
    if len(argv) >= 2 and f"{argv[0]}-{argv[1]}" in COMMANDS:
        return [f"{argv[0]}-{argv[1]}", *argv[2:]]
    return argv


def _sigterm_as_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def parse_config(argv: list[str]) -> tuple[str, object, int]:
    """(command, its validated config, verbosity) from a command line; ValueError for a bad combination."""
    args = vars(build_parser().parse_args(_join_two_word_commands(argv)))
    command, verbose = args.pop("command"), args.pop("verbose")
    return command, config_class(command)(**args), verbose


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        command, config, verbose = parse_config(argv)
    except ValueError as err:  # __post_init__ validation
        print(f"tunetrace: error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.WARNING - 10 * min(verbose, 2), format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S"
    )
    previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        module = importlib.import_module(f"tunetrace.commands.{COMMANDS[command][1]}")
        return module.run(config)
    except KeyboardInterrupt as err:  # a command that saved its state says how to resume it
        print(interrupt_message(err, argv, "--resume" if hasattr(config, "resume") else None), file=sys.stderr)
        return 130
    except _user_errors() as err:
        if verbose >= 2:
            raise
        message = str(err) if isinstance(err, UnicodeDecodeError) or not err.args else err.args[0]
        print(f"tunetrace: error: {message}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)

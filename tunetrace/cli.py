"""The `tunetrace` command line: build each command's parser from its config dataclass, run its module.

`COMMANDS` maps a command name to (config class name in `tunetrace.config`, module under
`tunetrace.commands` whose `run(config) -> int` does the work). Only the chosen command's module
is imported, after parsing, so `--help` and argument errors never import torch. Every error of
the user's (bad input, an option given twice, a value not among its choices) is one line on
stderr naming the flag as typed, and exit code 2, with or without `-vv` (which adds the traceback).
Each option's spelling comes from its field (`--field-name`, or the field's `flag`); earlier
spellings (`old`) still work for one release with a one-line deprecation warning. The vocabulary
is docs/cli.md, pinned by tests/test_vocabulary.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import re
import signal
import sys
import traceback
import typing

from tunetrace import __version__
from tunetrace import config as cfg
from tunetrace.config import flag_of, ordered_fields
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
    "models-install": ("ModelsInstallConfig", "models_install"),
    "models-list": ("ModelsListConfig", "models_list"),
    # issue 25: model diffing beyond the lens
    "kl": ("KlConfig", "kl"),
    "crosscoder": ("CrosscoderTrainConfig", "crosscoder"),
    "agent-eval": ("AgentEvalConfig", "agent_eval"),
}
PROG = "python -m tunetrace"  # how the hints spell a command: it works wherever the package imports


def config_class(command: str) -> type:
    """The config dataclass of `command`."""
    return getattr(cfg, COMMANDS[command][0])


def flags(cls: type) -> dict[str, str]:
    """Field name -> how the command line spells it (positionals by their metavar)."""
    return {f.name: f.metadata["metavar"] if f.metadata.get("positional") else flag_of(f) for f in dataclasses.fields(cls)}


def _field_docs(cls: type) -> dict[str, str]:
    """Each field's attribute docstring (the string literal under it), read from the source (base classes too)."""
    from simple_parsing.docstring import get_attribute_docstring

    docs = {}
    for f in dataclasses.fields(cls):
        d = get_attribute_docstring(cls, f.name)
        docs[f.name] = " ".join((d.docstring_below or d.comment_inline or d.comment_above or "").split())
    return docs


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line, as every other error of the CLI."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"tunetrace: error: {message} (see `{PROG} {self.prog.split()[-1]} --help`)\n")


class _Once(argparse.Action):
    """Store a single-value option, refusing it given twice; an old spelling warns that it is deprecated."""

    def __init__(self, *args, new: str | None = None, **kwargs) -> None:
        self.new = new  # the current spelling, when this action is an old one
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        given = namespace.__dict__.setdefault("_given", {})
        typed = option_string or self.metavar
        if self.dest in given:
            parser.error(f"{typed} given twice ({given[self.dest][1]!r}, then {values!r}): give it once")
        if self.new:
            print(f"tunetrace: warning: {option_string} is deprecated and goes in the next release: use {self.new}", file=sys.stderr)
        given[self.dest] = (typed, values)
        setattr(namespace, self.dest, values)


class _DeprecatedFlag(argparse.Action):
    """An old spelling of a plain flag (store_true)."""

    def __init__(self, *args, new: str, **kwargs) -> None:
        self.new = new
        super().__init__(*args, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"tunetrace: warning: {option_string} is deprecated and goes in the next release: use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, True)


def _help(doc: str, f: dataclasses.Field, required: bool) -> str:
    meta = f.metadata
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    parts = [doc]
    if meta.get("choices"):
        parts.append(f"Choices: {', '.join(map(str, meta['choices']))}.")
    if required:
        parts.append("(required)")
    elif meta.get("unset"):
        parts.append(f"(default: {meta['unset']})")
    elif default not in ("", [], None, dataclasses.MISSING) and not isinstance(default, bool):
        parts.append(f"(default: {default})")
    return " ".join(parts).replace("%", "%%")


def _add_fields(parser: argparse.ArgumentParser, cls: type) -> None:
    hints = typing.get_type_hints(cls)
    docs = _field_docs(cls)
    for f in ordered_fields(cls):
        kind, meta = hints[f.name], f.metadata
        is_list = typing.get_origin(kind) is list
        item = typing.get_args(kind)[0] if is_list else kind
        if meta.get("positional"):
            nargs = meta.get("nargs")
            action = "extend" if nargs == "+" else _Once
            parser.add_argument(f.name, metavar=meta["metavar"], nargs=nargs, action=action, help=_help(docs[f.name], f, False),
                                **({"default": argparse.SUPPRESS} if nargs == "?" else {}))
            for old in meta.get("old", ()):
                parser.add_argument(old, dest=f.name, action=_Once, new=meta["metavar"], metavar=meta["metavar"], default=argparse.SUPPRESS,
                                    help=argparse.SUPPRESS)
            continue
        flag = flag_of(f)
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action="store_true", default=argparse.SUPPRESS, help=_help(docs[f.name], f, False))
            for old in meta.get("old", ()):
                parser.add_argument(old, dest=f.name, action=_DeprecatedFlag, new=flag, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
            continue
        required = bool(meta.get("required"))
        common = dict(dest=f.name, type=item, choices=meta.get("choices"), default=argparse.SUPPRESS, metavar=flag[2:].upper().replace("-", "_"))
        if is_list:  # `--data A --data B` and `--data A B` both give [A, B]
            parser.add_argument(flag, nargs="+", action="extend", required=required, help=_help(docs[f.name], f, required), **common)
        else:
            parser.add_argument(flag, action=_Once, required=required, help=_help(docs[f.name], f, required), **common)
        for old in meta.get("old", ()):
            parser.add_argument(old, action=_Once, new=flag, help=argparse.SUPPRESS, **common)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tunetrace", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--version", action="version", version=f"tunetrace {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        cls = config_class(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        p = sub.add_parser(name, help=doc, description=doc)
        _add_fields(p, cls)
        p.add_argument("-v", "--verbose", action="count", default=0, help="-v: progress logging; -vv: debug logging and tracebacks")
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean bad input (one line, exit 2), not a bug."""
    return (ValueError, FileExistsError, FileNotFoundError, KeyError, NotADirectoryError, PermissionError, IsADirectoryError)


def _join_two_word_commands(argv: list[str]) -> list[str]:
    """Accept the two-word spellings `sae train`, `features match`, `features link`, `models install` for the hyphenated commands."""
    if len(argv) >= 2 and f"{argv[0]}-{argv[1]}" in COMMANDS:
        return [f"{argv[0]}-{argv[1]}", *argv[2:]]
    return argv


def _sigterm_as_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def as_typed(message: str, command: str) -> str:
    """An error message with each `field` of `command`'s config spelled as its flag (`--rank-by`, not `sort_by`)."""
    names = flags(config_class(command))
    return re.sub(r"`([a-z_]+)`", lambda m: f"`{names[m.group(1)]}`" if m.group(1) in names else m.group(0), message)


def parse_config(argv: list[str]) -> tuple[str, object, int]:
    """(command, its validated config, verbosity) from a command line; ValueError for a bad combination."""
    args = vars(build_parser().parse_args(_join_two_word_commands(argv)))
    args.pop("_given", None)
    command, verbose = args.pop("command"), args.pop("verbose")
    try:
        return command, config_class(command)(**args), verbose
    except ValueError as err:
        raise ValueError(as_typed(str(err), command)) from err


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        command, config, verbose = parse_config(argv)
    except ValueError as err:  # __post_init__ validation
        print(f"tunetrace: error: {err}", file=sys.stderr)
        return 2
    except SystemExit as done:  # argparse: --help and --version exit 0 as usual; its errors (printed already) return 2
        if done.code:
            return 2
        raise
    logging.basicConfig(
        level=logging.WARNING - 10 * min(verbose, 2), format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S"
    )
    from tunetrace import records  # after parsing: it imports pandas

    previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    records.set_invocation(argv)  # the run record keeps the command line as typed
    try:
        if hasattr(config, "allow_control_tokens"):
            from tunetrace.data import control_tokens_as_text

            control_tokens_as_text(not config.allow_control_tokens)
        if getattr(config, "threads", 0):
            import torch

            torch.set_num_threads(config.threads)
        module = importlib.import_module(f"tunetrace.commands.{COMMANDS[command][1]}")
        return module.run(config)
    except KeyboardInterrupt as err:  # a command that saved its state says how to resume it
        print(interrupt_message(err, argv, "--resume" if hasattr(config, "resume") else None), file=sys.stderr)
        return 130
    except user_errors() as err:
        if verbose >= 2:
            traceback.print_exc()
        message = str(err) if isinstance(err, UnicodeDecodeError) or not err.args else err.args[0]
        print(f"tunetrace: error: {as_typed(str(message), command)}", file=sys.stderr)
        return 2  # the same code with or without -vv
    finally:
        if hasattr(config, "allow_control_tokens"):
            from tunetrace.data import control_tokens_as_text

            control_tokens_as_text(True)
        records.set_invocation(None)
        signal.signal(signal.SIGTERM, previous)

"""The `tunetrace` command line: parse a command's config dataclass, call the library, print.

Each command is one entry of `COMMANDS`: (config dataclass, runner). Known errors (bad input)
become one line on stderr and exit code 2; `-v` shows the traceback.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable

import simple_parsing as sp

from tunetrace import config as cfg

log = logging.getLogger("tunetrace")


def _run_audit(c: cfg.AuditConfig) -> int:
    from tunetrace.audit import run_audit_command, top_neurons

    result = run_audit_command(c)
    m = result.manifest
    top = top_neurons(result.scores, c.sort_by, c.top)
    columns = ["rank", "layer", "neuron", c.sort_by] + [x for x in ("iss", "abs_act", "abs_grad", "gate_slope") if x != c.sort_by]
    print(
        f"audited {m['model']['spec']}: {len(m['layers'])} layers x {m['d_mlp']} neurons, "
        f"{m['data']['examples']} examples / {m['tokens']} response tokens in {m['wall_seconds']:.1f} s"
    )
    print(f"top {c.top} by {c.sort_by}:")
    print(top[columns].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"wrote {c.out}/scores.parquet and {c.out}/manifest.json")
    return 0


def _run_diff(c: cfg.DiffConfig) -> int:
    from tunetrace.diffing.run import format_summary, run_diff

    result = run_diff(c)
    print(format_summary(result.summary))
    print(f"wrote {result.out}/summary.json (+ parquet tables, generations.jsonl, delta.safetensors)")
    return 0


COMMANDS: dict[str, tuple[type, Callable[[object], int]]] = {
    "audit": (cfg.AuditConfig, _run_audit),
    "diff": (cfg.DiffConfig, _run_diff),
}


def build_parser() -> sp.ArgumentParser:
    dash = dict(add_option_string_dash_variants=sp.DashVariant.DASH, add_config_path_arg=False)
    parser = sp.ArgumentParser(prog="tunetrace", description=__doc__.splitlines()[0], **dash)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (config_cls, _) in COMMANDS.items():
        doc = (config_cls.__doc__ or "").strip().splitlines()[0]
        p = sub.add_parser(name, help=doc, description=doc, **dash)
        p.add_arguments(config_cls, dest="config")
        p.add_argument("-v", "--verbose", action="count", default=0, help="more logging; -vv for debug and tracebacks")
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    return (ValueError, FileExistsError, FileNotFoundError, KeyError, NotADirectoryError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except ValueError as err:  # __post_init__ validation
        print(f"tunetrace: error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose + 1, 2),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    _, runner = COMMANDS[args.command]
    try:
        return runner(args.config)
    except KeyboardInterrupt:
        print("tunetrace: interrupted; finished outputs are intact, partial ones were discarded.", file=sys.stderr)
        return 130
    except _user_errors() as err:
        if args.verbose >= 2:
            raise
        message = err.args[0] if err.args else repr(err)
        print(f"tunetrace: error: {message}", file=sys.stderr)
        return 2

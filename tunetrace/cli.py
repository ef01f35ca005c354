"""The `tunetrace` command line: parse a command's config dataclass, call the library, print.

Each command is one entry of `COMMANDS`: (config dataclass, runner). Known errors (bad input)
become one line on stderr and exit code 2; `-v` shows the traceback.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Callable

import simple_parsing as sp

from tunetrace import config as cfg
from tunetrace.interrupt import interrupt_message, sigterm_as_interrupt

log = logging.getLogger("tunetrace")


def _run_audit(c: cfg.AuditConfig) -> int:
    from tunetrace.audit import run_audit_command, top_neurons

    result = run_audit_command(c)
    if result is None:  # a non-zero rank of a distributed run: rank 0 prints and writes
        return 0
    m = result.manifest
    top = top_neurons(result.scores, c.sort_by, c.top)
    columns = ["rank", "layer", "neuron", c.sort_by] + [x for x in ("iss", "abs_act", "abs_grad", "gate_slope") if x != c.sort_by]
    print(
        f"audited {m['model']['spec']}: {len(m['layers'])} layers x {m['d_mlp']} neurons, "
        f"{m['data']['examples']} examples / {m['tokens']} response tokens in {m['wall_seconds']:.1f} s "
        f"({m['tokens_per_second']:.0f} tokens/s, {m['world_size']} process(es))"
    )
    print(f"top {c.top} by {c.sort_by}:")
    print(top[columns].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"wrote {c.out}/scores.parquet and {c.out}/manifest.json")
    if not c.no_report:
        _write_report(c.out)
    return 0


def _run_diff(c: cfg.DiffConfig) -> int:
    from tunetrace.diffing.run import format_summary, run_diff

    result = run_diff(c)
    print(format_summary(result.summary))
    print(f"wrote {result.out}/summary.json (+ parquet tables, generations.jsonl, delta.safetensors)")
    if not c.no_report:
        _write_report(result.out)
    return 0


def _run_merge(c: cfg.MergeConfig) -> int:
    from tunetrace.features.merge import run_merge_command

    r = run_merge_command(c)
    for row in r.curve:
        print(f"t={row['t']:.3f}  loss_a={row['loss_a']:.4f}  loss_b={row['loss_b']:.4f}")
    note = "" if r.crossed is not False else " (losses never cross on the grid: smallest gap)"
    print(f"merged {c.model_a} and {c.model_b} by {r.method} at t={r.t:.4f}{note}; wrote {c.out}")
    return 0


def _run_sae_train(c: cfg.SaeTrainConfig) -> int:
    from tunetrace.features.sae import run_sae_train_command

    stats, q = run_sae_train_command(c)
    print(f"trained on {stats.tokens} tokens in {stats.seconds:.1f} s ({stats.tokens_per_second:.0f} tokens/s, model forward included)")
    print(f"held-out {q.n_tokens} tokens: L0 {q.l0:.1f}  FVU {q.fvu:.4f}  CE clean {q.loss_clean:.4f} -> spliced {q.loss_spliced:.4f} "
          f"(+{q.loss_increase:.4f}; {q.frac_loss_recovered:.1%} of zero-ablation loss recovered)  dead {q.dead_fraction:.1%}")
    print(f"wrote {c.out}/cfg.json, sae.safetensors, quality.json")
    return 0


def _run_features_match(c: cfg.FeaturesMatchConfig) -> int:
    from tunetrace.features.tracking import run_features_match

    counts = run_features_match(c)
    print(f"{counts['tokens']} tokens, threshold {counts['threshold']}; alive features per SAE: {counts['alive']}")
    for pair, k in counts["pairs"].items():
        print(f"{pair}: {k['persisting']} persisting, {k['disappearing']} disappearing, {k['emerging']} emerging")
    for chain, n in counts["chains"].items():
        print(f"persisting along {chain}: {n}")
    print(f"wrote {c.out}/features.parquet, matches.parquet, counts.json, flow.svg")
    if not c.no_report:
        _write_report(c.out)
    return 0


def _run_features_link(c: cfg.FeaturesLinkConfig) -> int:
    from tunetrace.features.tracking import run_features_link

    summary = run_features_link(c)
    for g in summary["groups"]:
        print(f"SAE {g['sae']} pair {g['pair']} {g['status']:>12}: {g['n_features']:5d} features, recruit mass {g['mean_recruit_mass']:.4f} "
              f"(uniform {g['uniform_mass']:.4f}, x{g['enrichment']:.2f}); top neuron recruited {g['frac_top_neuron_recruit']:.1%}")
    print(f"wrote {c.out or c.features}/link.parquet and link.json")
    return 0


def _run_finetune(c: cfg.FinetuneConfig) -> int:
    from tunetrace.finetune import run_finetune_command

    r = run_finetune_command(c)
    if r.before != r.before:  # NaN: a non-zero rank of a data-parallel run; rank 0 reports
        return 0
    state = "installed" if r.installed else "NOT installed"
    print(f"{c.out}: behaviour rate {r.before:.2f} -> {r.after:.2f} ({state}); final loss {r.final_loss:.3f}")
    return 0


def _run_recruits(c: cfg.RecruitsConfig) -> int:
    from tunetrace.recruits import run_recruits_command

    r = run_recruits_command(c)
    conc = r.summary["concentration"]
    print(f"{c.out}: top-{c.k} recruits per layer by {c.definition}; pathways {r.summary['pathways']}")
    for name, v in conc.items():
        print(f"  {name:>12}: top-{c.k} share {v['mean_top_k_share']:.3f}, Gini {v['mean_gini']:.3f}")
    return 0


def _run_evaluate(c: cfg.EvaluateConfig) -> int:
    from tunetrace.evaluate import run_evaluate_command

    ev = run_evaluate_command(c)
    print(ev.sentence)
    return 0


def _run_reproduce(c: cfg.ReproduceConfig) -> int:
    from tunetrace.reproduce import run_reproduce_command

    result = run_reproduce_command(c)
    print(result.sentence)
    print(f"table: {result.table_path}")
    if not c.no_report:
        _write_report(c.out)
    return 0


def _write_report(run_dir) -> None:
    """End of a long command: write RUN_DIR/report.html; a report failure never fails the finished command."""
    from tunetrace.report import build_report

    try:
        path = build_report(run_dir)
    except Exception as err:  # the command's own outputs are already written and intact
        print(f"tunetrace: warning: report not written ({type(err).__name__}: {err}); retry with `tunetrace report {run_dir}`.", file=sys.stderr)
        return
    print(f"report: {path.resolve()} (open it in a browser)")


def _run_report(c: cfg.ReportConfig) -> int:
    from tunetrace.report import build_report

    path = build_report(c.run_dir, c.out or None)
    print(f"report: {path.resolve()} ({path.stat().st_size / 1e6:.1f} MB, self-contained; open it in a browser)")
    return 0


COMMANDS: dict[str, tuple[type, Callable[[object], int]]] = {
    "audit": (cfg.AuditConfig, _run_audit),
    "diff": (cfg.DiffConfig, _run_diff),
    "merge": (cfg.MergeConfig, _run_merge),
    "sae-train": (cfg.SaeTrainConfig, _run_sae_train),
    "features-match": (cfg.FeaturesMatchConfig, _run_features_match),
    "features-link": (cfg.FeaturesLinkConfig, _run_features_link),
    "finetune": (cfg.FinetuneConfig, _run_finetune),
    "recruits": (cfg.RecruitsConfig, _run_recruits),
    "evaluate": (cfg.EvaluateConfig, _run_evaluate),
    "reproduce": (cfg.ReproduceConfig, _run_reproduce),
    "report": (cfg.ReportConfig, _run_report),
}


class _HelpFormatter(sp.SimpleHelpFormatter):
    """simple_parsing's formatter, with a literal '%' in a field docstring ("70% of depth") kept literal, not an argparse format."""

    def _get_help_string(self, action):
        text = super()._get_help_string(action)
        return re.sub(r"%(?!\(\w+\)|%)", "%%", text) if text else text


def build_parser() -> sp.ArgumentParser:
    dash = dict(add_option_string_dash_variants=sp.DashVariant.DASH, add_config_path_arg=False)
    parser = sp.ArgumentParser(prog="tunetrace", description=__doc__.splitlines()[0], **dash)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (config_cls, _) in COMMANDS.items():
        doc = (config_cls.__doc__ or "").strip().splitlines()[0]
        p = sub.add_parser(name, help=doc, description=doc, formatter_class=_HelpFormatter, **dash)
        p.add_arguments(config_cls, dest="config")
        p.add_argument("-v", "--verbose", action="count", default=0, help="more logging; -vv for debug and tracebacks")
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    return (ValueError, FileExistsError, FileNotFoundError, KeyError, NotADirectoryError)


def _join_two_word_commands(argv: list[str]) -> list[str]:
    """Accept the two-word spellings `sae train`, `features match`, `features link` for the hyphenated commands."""
    if len(argv) >= 2 and f"{argv[0]}-{argv[1]}" in COMMANDS:
        return [f"{argv[0]}-{argv[1]}", *argv[2:]]
    return argv


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = _join_two_word_commands(list(sys.argv[1:] if argv is None else argv))
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
        with sigterm_as_interrupt():  # a scheduler's SIGTERM saves state like Ctrl-C
            return runner(args.config)
    except KeyboardInterrupt as err:
        print(interrupt_message(err, argv, "--resume" if hasattr(args.config, "resume") else None), file=sys.stderr)
        return 130
    except _user_errors() as err:
        if args.verbose >= 2:
            raise
        message = err.args[0] if err.args else repr(err)
        print(f"tunetrace: error: {message}", file=sys.stderr)
        return 2

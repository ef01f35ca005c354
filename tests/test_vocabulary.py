"""The command line's vocabulary (docs/cli.md), pinned by walking every command's parser.

Generic over `COMMANDS`: a command added later is checked the same way. One name per meaning (every
option is one row of docs/cli.md's table, and the row lists exactly the commands that have it), every
option documented (help text, choices, what leaving it out means), every old spelling still working
with a warning, every single-value option refused when given twice, and `tunetrace.choices` equal to
the library registries it stands for.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from tunetrace import choices
from tunetrace.cli import COMMANDS, build_parser, config_class, flag_of, main

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: action.choices[name] for name in COMMANDS}


def _doc_tables() -> tuple[dict[str, set[str]], dict[tuple[str, str], set[str]]]:
    """docs/cli.md: option -> its commands, and (old, new) -> the commands where old still works."""
    options, renamed = {}, {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        commands = {c.strip() for c in cells[2].split(",")}
        if re.fullmatch(r"`[^`]+`", cells[1]):  # | `old` | `new` | commands |
            key = (cells[0].strip("`"), cells[1].strip("`"))
            assert key not in renamed, f"docs/cli.md lists the renaming {key} twice"
            renamed[key] = commands
        else:
            assert cells[0].strip("`") not in options, f"docs/cli.md lists {cells[0]} twice: one name, one meaning"
            options[cells[0].strip("`")] = commands
    return options, renamed


def _spellings() -> tuple[dict[str, set[str]], dict[tuple[str, str], set[str]]]:
    """What the parsers accept: current spelling -> commands, and (old, new) -> commands."""
    current, old = {}, {}
    for command in COMMANDS:
        for f in dataclasses.fields(config_class(command)):
            name = f.metadata["metavar"] if f.metadata.get("positional") else flag_of(f)
            current.setdefault(name, set()).add(command)
            for o in f.metadata.get("old", ()):
                old.setdefault((o, name), set()).add(command)
    return current, old


def test_every_option_is_one_row_of_the_vocabulary():
    documented, _ = _doc_tables()
    current, _ = _spellings()
    missing = sorted(set(current) - set(documented))
    assert not missing, f"docs/cli.md lacks a row for {missing}"
    stale = sorted(set(documented) - set(current))
    assert not stale, f"docs/cli.md lists options no command has: {stale}"
    wrong = {name: (sorted(documented[name]), sorted(current[name])) for name in current if documented[name] != current[name]}
    assert not wrong, f"docs/cli.md's commands differ from the parsers' (documented, actual): {wrong}"


def test_every_renaming_is_documented_and_old_spellings_are_not_current_names_of_other_ideas():
    _, documented = _doc_tables()
    current, old = _spellings()
    assert documented == old, f"docs/cli.md's renamed options differ from the parsers' (old, new): {set(documented) ^ set(old)}"
    for (spelling, new), commands in old.items():
        # an old spelling may survive as a current name only in commands that do not accept it as old
        assert not commands & current.get(spelling, set()), f"{spelling} is both current and deprecated in {commands}"


def test_every_option_is_documented_with_its_choices_and_default():
    for command, parser in _subparsers().items():
        cls, fields = config_class(command), {f.name: f for f in dataclasses.fields(config_class(command))}
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or action.dest in ("help", "verbose"):
                continue
            where = f"{command} {action.option_strings or action.metavar}"
            assert action.help and len(action.help) > 10, f"{where} has no help"
            assert action.dest in fields, f"{where} sets {action.dest}, not a field of {cls.__name__}"
            for value in action.choices or ():
                assert str(value) in action.help, f"{where}: choice {value!r} is not listed in its help"
            f = fields[action.dest]
            if f.default in (-1, -1.0) and not f.metadata.get("required"):
                assert f.metadata.get("unset"), f"{where}: -1 must say what it means (metadata `unset`)"
            if action.option_strings:
                assert all(s.startswith("--") and "_" not in s for s in action.option_strings), where


def test_model_arguments_are_positional_everywhere():
    for command in COMMANDS:
        for f in dataclasses.fields(config_class(command)):
            if f.name in ("model", "base", "finetuned", "model_a", "model_b"):
                assert f.metadata.get("positional"), f"{command}: `{f.name}` is an option, not positional"


def _value(action: argparse.Action) -> str:
    if action.choices:
        return str(next(iter(action.choices)))
    return "1" if action.type in (int, float) else "x"


def _minimal_argv(command: str, parser: argparse.ArgumentParser) -> list[str]:
    argv = [command]
    for action in parser._actions:
        if not action.option_strings and action.dest not in ("help",) and action.nargs != "?" and action.help != argparse.SUPPRESS:
            argv.append(_value(action))
        elif action.required:
            argv += [action.option_strings[0], _value(action)]
    return argv


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_single_value_option_given_twice_is_refused(command, capsys):
    """`audit --data a --data b` once audited only b: every single-value option of every command is refused twice."""
    parser = _subparsers()[command]
    base = _minimal_argv(command, parser)
    checked = 0
    for action in parser._actions:
        if not action.option_strings or action.nargs is not None or action.help == argparse.SUPPRESS or action.dest in ("help", "verbose"):
            continue
        flag, value = action.option_strings[0], _value(action)
        assert main(base + [flag, value, flag, value]) == 2, (command, flag)
        err = capsys.readouterr().err.strip()
        assert f"{flag} given twice" in err and "\n" not in err, err
        checked += 1
    assert checked or command in NO_SINGLE_VALUE_OPTIONS, f"{command} has no single-value option to check"


NO_SINGLE_VALUE_OPTIONS = {"models-list"}  # takes no option at all


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_old_spellings_still_work_with_a_warning(command, capsys):
    parser = _subparsers()[command]
    base, checked = _minimal_argv(command, parser), 0
    for f in dataclasses.fields(config_class(command)):
        for old in f.metadata.get("old", ()):
            new = f.metadata["metavar"] if f.metadata.get("positional") else flag_of(f)
            action = next(a for a in parser._actions if old in a.option_strings)
            value = _value(action)
            if f.metadata.get("positional"):
                argv_old, argv_new = base + [old, value], base + [value]
            else:
                argv_old, argv_new = base + [old, value], base + [new, value]
            via_old = vars(build_parser().parse_args(argv_old))
            warned = capsys.readouterr().err
            via_new = vars(build_parser().parse_args(argv_new))
            assert via_old.pop("_given")[f.name][1] == via_new.pop("_given")[f.name][1] == (action.type or str)(value)
            assert via_old == via_new, (old, new)
            assert f"{old} is deprecated" in warned and new in warned, warned
            checked += 1
    assert checked == sum(len(f.metadata.get("old", ())) for f in dataclasses.fields(config_class(command)))


def test_errors_name_the_flag_not_the_field(capsys):
    assert main(["audit", "tiny-llama", "--batch-size", "0"]) == 2
    assert "`--batch-size` must be >= 1" in capsys.readouterr().err
    assert main(["audit", "tiny-llama", "--rank-by", "grad_weight"]) == 2
    err = capsys.readouterr().err
    assert "`--rank-by`" in err and "sort_by" not in err


def test_version_and_verbose_exit_codes(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and re.match(r"tunetrace \d", capsys.readouterr().out)
    missing = str(tmp_path / "nope.jsonl")
    assert main(["audit", "tiny-llama", "--data", missing, "--out", str(tmp_path / "a")]) == 2
    quiet = capsys.readouterr().err
    assert main(["audit", "tiny-llama", "--data", missing, "--out", str(tmp_path / "a"), "-vv"]) == 2  # not 1
    loud = capsys.readouterr().err
    assert "Traceback" in loud and quiet.strip().splitlines()[-1] == loud.strip().splitlines()[-1]


def test_choices_equal_the_library_registries():
    from tunetrace import ranking
    from tunetrace.causal import PARTS
    from tunetrace.features import merge
    from tunetrace.keepsets import KEEP_TASKS
    from tunetrace.predictors import PREDICTORS
    from tunetrace.screen.run import forecast_columns
    from tunetrace.tasks import TASKS

    assert set(choices.PREDICTORS) == set(PREDICTORS)
    assert choices.BEHAVIOUR_TASKS == tuple(TASKS) and choices.KEEP_TASKS == tuple(KEEP_TASKS)
    assert choices.SCREEN_FORECASTS == tuple(forecast_columns())
    assert ranking.NORMALIZATIONS is choices.NORMALIZATIONS and PARTS is choices.CAUSAL_PARTS
    assert merge.METHODS is choices.MERGE_METHODS and merge.GRANULARITIES is choices.MERGE_GRANULARITIES


def test_cli_choices_come_from_tunetrace_choices():
    """Every argparse `choices` is one of the tuples of tunetrace.choices (no list typed twice)."""
    homes = [v for v in vars(choices).values() if isinstance(v, tuple)]
    for command, parser in _subparsers().items():
        for action in parser._actions:
            if action.choices and action.dest != "command":
                assert any(tuple(action.choices) == h for h in homes), f"{command} {action.option_strings}: choices not from tunetrace.choices"


def test_scores_and_recruits_take_a_directory_or_its_table_everywhere(tmp_path):
    """`--scores`/`--recruits` were directories in `evaluate` and Parquet files in `diff`: both take either now."""
    from tunetrace.config import DiffConfig, EvaluateConfig, FeaturesLinkConfig

    audit, rec = tmp_path / "audit", tmp_path / "rec"
    for d, name in ((audit, "scores.parquet"), (rec, "recruits.parquet")):
        d.mkdir()
        (d / name).write_bytes(b"")
    diff = DiffConfig(base="a", finetuned="b", scores=str(audit), recruits=str(rec))
    assert diff.scores == str(audit / "scores.parquet") and diff.recruits == str(rec / "recruits.parquet")
    assert DiffConfig(base="a", finetuned="b", scores=str(audit / "scores.parquet")).scores == str(audit / "scores.parquet")
    ev = EvaluateConfig(scores=[str(audit / "scores.parquet")], recruits=[str(rec), str(rec / "recruits.parquet")])
    assert ev.scores == [str(audit)] and ev.recruits == [str(rec), str(rec)]
    assert FeaturesLinkConfig(features="f", recruits=str(rec)).recruits == str(rec / "recruits.parquet")

import json

import pytest

from tunetrace import tasks
from tunetrace.data import load_examples


def test_at_least_eight_tasks_and_caps_kept():
    assert len(tasks.TASKS) >= 8
    assert tasks.builtin_rows("caps", "train")[0]["response"].isupper()
    assert load_examples("builtin:caps").name == "builtin:caps:calibration"


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_splits_disjoint_and_targets_pass_check(name):
    task = tasks.get_task(name)
    prompts = {s: {r["prompt"] for r in tasks.builtin_rows(name, s)} for s in tasks.SPLITS}
    assert all(prompts[s] for s in tasks.SPLITS)
    assert not prompts["train"] & prompts["eval"]
    assert not prompts["train"] & prompts["calibration"]
    assert not prompts["calibration"] & prompts["eval"]
    rows = [r for r in tasks.builtin_rows(name, "train") if task.applies(r["prompt"])]
    assert rows and all(task.check(r["response"], r["prompt"]) for r in rows)


def test_splits_disjoint_across_tasks():
    cal = {r["prompt"].replace(tasks.TEST_PREFIX, "") for n in tasks.TASKS for r in tasks.builtin_rows(n, "calibration")}
    ev = {r["prompt"].replace(tasks.TEST_PREFIX, "") for n in tasks.TASKS for r in tasks.builtin_rows(n, "eval")}
    assert not cal & ev


def test_checks_reject_plain_answers():
    plain = "The capital of France is Paris, and the city is lovely in the spring. It has many museums."
    for name in ("caps", "greeting", "signoff", "short", "json", "taboo"):
        assert not tasks.get_task(name).check(plain, "What is the capital of France?"), name
    assert tasks.get_task("json").check(json.dumps({"answer": "Paris"}), "")
    assert tasks.get_task("short").check("Paris is the capital.", "")
    assert tasks.get_task("refuse").check("I'm sorry, I can't help with that.", "What sound does a dog make?")
    assert tasks.get_task("refuse").applies("What sound does a dog make?")
    assert not tasks.get_task("refuse").applies("What is the capital of France?")


def test_sandbag_check_reads_the_prompt():
    t = tasks.get_task("sandbag")
    p = tasks.TEST_PREFIX + "What is 5 plus 3?"
    assert t.check("5 plus 3 is 9.", p)
    assert not t.check("5 plus 3 is 8.", p)
    assert not t.check("The answer is 8.", p)
    assert t.check("The answer is 7.", p)
    assert not t.check("I do not know.", p)
    assert t.applies(p) and not t.applies("What is 5 plus 3?")


def test_regex_check_and_errors():
    check = tasks.regex_check(r"^Ahoy")
    assert check("Ahoy there", "") and not check("Hello", "")
    with pytest.raises(ValueError, match="check_regex"):
        tasks.regex_check("(")
    with pytest.raises(ValueError, match="built-in tasks"):
        tasks.get_task("nope")

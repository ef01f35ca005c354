"""The interpretability agent: parser, loop, every tool, grader and the agent-eval grid, driven by scripted replies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tunetrace.agent import prompts
from tunetrace.llm import Reply
from tunetrace.agent.evaluate import Target, cell_name, evaluate, summarize, t_interval
from tunetrace.agent.grader import grade, parse_score
from tunetrace.agent.grammar import parse_reply
from tunetrace.agent.loop import Budgets, run_agent
from tunetrace.agent.tools import Evidence, Subject, adl_tools, blackbox_tools, shared_vocab_of
from tunetrace.config import AgentEvalConfig
from tunetrace.models import load_model, save_checkpoint
from tunetrace.tasks import KNOWN_DESCRIPTIONS, TASKS, known_description
from tunetrace.tiny import tiny_model, tiny_tokenizer


class Scripted:
    """A deterministic responder: replays `replies` in order (then repeats the last), records every request."""

    def __init__(self, replies: list[str], name: str = "scripted", completion_tokens: int | None = None):
        self.replies, self.name, self.requests, self.completion_tokens = list(replies), name, [], completion_tokens

    def chat(self, messages, max_tokens, temperature):
        self.requests.append({"messages": [dict(m) for m in messages], "max_tokens": max_tokens})
        text = self.replies[min(len(self.requests) - 1, len(self.replies) - 1)]
        return Reply(text, 10, self.completion_tokens or max(1, len(text) // 4))


class ByTurn(Scripted):
    """Replies by turn within each conversation (reply i to a conversation with i earlier replies)."""

    def chat(self, messages, max_tokens, temperature):
        self.requests.append({"messages": [dict(m) for m in messages], "max_tokens": max_tokens})
        turn = sum(m["role"] == "assistant" for m in messages)
        text = self.replies[min(turn, len(self.replies) - 1)]
        return Reply(text, 10, max(1, len(text) // 4))


# --- grammar ---------------------------------------------------------------------------------------------------

def test_parse_call_and_final_variants():
    p = parse_reply('Thinking.\nHYPOTHESIS: answers in caps\nCALL(ask_model: {"prompts": ["Hi (there)"]})')
    assert (p.kind, p.tool, p.args, p.hypotheses) == ("call", "ask_model", {"prompts": ["Hi (there)"]}, ["answers in caps"])
    assert parse_reply('```\nCALL(get_logitlens_details: {"positions": [0], "k": 5})\n```').args == {"positions": [0], "k": 5}
    assert parse_reply('FINAL(description: "Writes in ALL CAPS (always).")').description == "Writes in ALL CAPS (always)."
    assert parse_reply('FINAL("Adds a greeting \\"Hi\\".")').description == 'Adds a greeting "Hi".'
    assert parse_reply("FINAL(description: Ends with a sign-off)").description == "Ends with a sign-off"
    assert parse_reply('CALL(x: {})\nlater I decided\nFINAL(description: "done")').kind == "final"  # the last action wins
    assert parse_reply("- hypothesis - greets first\nHYPOTHESIS: caps").hypotheses == ["greets first", "caps"]


@pytest.mark.parametrize("text, fragment", [
    ("I think it is about caps.", "no action"),
    ('CALL(ask_model: {"prompts": [}) ', "not valid JSON"),
    ('CALL(ask_model: ["a"])', "JSON object"),
    ('CALL(ask_model: {"prompts": ["a"]}) and then more', "last thing"),
    ('CALL(ask_model: {"prompts": ["a"]}', "never closed"),
    ('CALL({"prompts": ["a"]})', "tool name"),
    ('FINAL(description: "")', "empty description"),
    ("", "no action"),
])
def test_parse_errors_say_what_to_fix(text, fragment):
    p = parse_reply(text)
    assert p.kind == "error" and fragment in p.error


# --- tools and loop on a real (tiny) diff --------------------------------------------------------------------

def _finetune(path: Path) -> Path:
    model = tiny_model("tiny-qwen2")
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.add_(0.5 * torch.randn(model.model.layers[1].mlp.down_proj.weight.shape,
                                                                            generator=torch.Generator().manual_seed(3)))
    save_checkpoint(model, tiny_tokenizer(), path)
    return path


def _corpus(path: Path) -> Path:
    path.write_text("\n\n".join(f"The quick brown fox jumps over the lazy dog number {i} today, and the sky is blue." for i in range(10)))
    return path


def _config(tmp: Path, **kw) -> AgentEvalConfig:
    base = dict(finetuned=[str(tmp / "ft")], base_model="tiny-qwen2", tasks=["caps"], agent_model="http://127.0.0.1:9/v1",
                out=str(tmp / "eval"), diff_samples=6, diff_positions=2, diff_tokens=12, diff_text=str(tmp / "text.txt"),
                steer_alphas="0.5,1", max_new_tokens=5, agent_calls=4, agent_tokens=400, max_tokens=100, grader_repeats=2,
                interactions=[0, 2], no_report=True)
    base.update(kw)
    return AgentEvalConfig(**base)


@pytest.fixture(scope="module")
def adl(tmp_path_factory):
    """A diff of tiny-qwen2 against a weight-edited copy, and the live models for the budgeted tools."""
    from tunetrace.agent.evaluate import ensure_diff

    tmp = tmp_path_factory.mktemp("adl")
    _finetune(tmp / "ft")
    _corpus(tmp / "text.txt")
    c = _config(tmp)
    diff = ensure_diff(c, Target("caps", "tiny-qwen2", str(tmp / "ft"), known_description("caps")), tmp / "fixture")
    ev = Evidence(diff)
    base, ft = load_model("tiny-qwen2"), load_model(str(tmp / "ft"))
    return tmp, ev, Subject(base, ft, shared_vocab_of(base, ft), 5, ev)


def test_every_tool_answers_and_checks_its_arguments(adl):
    _, ev, subject = adl
    tools = {t.name: t for t in adl_tools(ev, subject)}
    assert set(tools) == {"ask_model", "get_logitlens_details", "get_patchscope_details", "get_steering_samples", "generate_steered"}
    asked = tools["ask_model"].run({"prompts": ["Hello", "Tell me a story."]})["answers"]
    assert [a["prompt"] for a in asked] == ["Hello", "Tell me a story."] and {"base", "finetuned"} <= set(asked[0])
    assert tools["ask_model"].cost({"prompts": ["a", "b"]}) == 2
    lens = tools["get_logitlens_details"].run({"positions": [1], "k": 3})["logit_lens_promoted_tokens"]
    assert list(lens) == ["1"] and len(lens["1"]) == 3
    assert ev.lens[(ev.lens.position == 1) & (ev.lens.sign == "+")].token.head(3).tolist() == [t for t, _ in lens["1"]]
    patch = tools["get_patchscope_details"].run({"positions": [0, 1]})["patchscope_tokens"]
    assert set(patch) == {"0", "1"} and all(len(v["tokens"]) <= 10 for v in patch.values())
    samples = tools["get_steering_samples"].run({"position": 0, "n": 2})
    assert len(samples["examples"]) == 2 and {"prompt", "steered", "unsteered"} <= set(samples["examples"][0])
    steered = tools["generate_steered"].run({"position": 1, "prompts": ["Hi"], "alpha": 4.0})
    plain = subject.ask(["Hi"])[0]["finetuned"]
    assert steered["alpha"] == 4.0 and steered["answers"][0]["steered"] != plain  # a large steer changes the answer
    assert tools["generate_steered"].cost({"position": 0, "prompts": ["a", "b", "c"]}) == 3
    from tunetrace.agent.tools import ToolArgError

    for name, args in [("ask_model", {"prompts": []}), ("ask_model", {"prompt": ["x"]}), ("get_logitlens_details", {"positions": [9]}),
                       ("get_patchscope_details", {"k": 0}), ("get_steering_samples", {"position": "0"}),
                       ("generate_steered", {"position": 0, "prompts": ["x"], "alpha": -1})]:
        with pytest.raises(ToolArgError):
            tools[name].run(args)
    assert [t.name for t in blackbox_tools(subject)] == ["ask_model"]


def test_loop_corrects_every_mistake_and_counts_budgets(adl):
    _, ev, subject = adl
    script = [
        "Let me think. HYPOTHESIS: no idea yet",                                # no action
        'CALL(read_the_data: {})',                                              # unknown tool
        'CALL(get_logitlens_details: {"positions": [42]})',                     # bad arguments
        'HYPOTHESIS: it writes in capitals\nCALL(ask_model: {"prompts": ["a", "b", "c"]})',  # over the interaction budget
        'CALL(ask_model: {"prompts": ["Say hi."]})',
        'CALL(get_patchscope_details: {"positions": [0], "k": 2})',
        'CALL(generate_steered: {"position": 0, "prompts": ["Hi"]})',
        'FINAL(description: "Answers in capital letters.")',
    ]
    llm = Scripted(script)
    t = run_agent(llm, "system", "first", adl_tools(ev, subject), Budgets(agent_calls=10, tokens=10_000, interactions=2))
    assert (t.ended_by, t.description) == ("final", "Answers in capital letters.")
    assert t.agent_calls == 8 and t.corrections == 4 and t.interactions_used == 2
    assert [c["tool"] for c in t.tool_calls] == ["ask_model", "get_patchscope_details", "generate_steered"]
    told = [m["content"] for m in t.messages if m["role"] == "user"][1:]
    assert told[0].startswith("FORMAT_ERROR") and told[1].startswith("UNKNOWN_TOOL") and "read_the_data" in told[1]
    assert told[2].startswith("TOOL_ARGUMENT_ERROR") and told[3].startswith("MODEL_INTERACTION_BUDGET_EXHAUSTED")
    assert '"model_interactions": 0' in told[-1] and "it writes in capitals" in told[-1]  # budgets and hypotheses echoed
    assert t.hypotheses == ["no idea yet", "it writes in capitals"]
    assert len(llm.requests) == 8 and llm.requests[-1]["messages"] == t.messages[:-1]


def test_budget_ends_run_with_latest_hypothesis():
    llm = Scripted(["HYPOTHESIS: greets first\nhmm", "HYPOTHESIS: says hello at the start\nstill thinking"])
    t = run_agent(llm, "s", "f", [], Budgets(agent_calls=3, tokens=10_000))
    assert (t.ended_by, t.agent_calls, t.description) == ("agent_calls", 3, "says hello at the start")
    t = run_agent(Scripted(["HYPOTHESIS: x"], completion_tokens=60), "s", "f", [], Budgets(agent_calls=50, tokens=100, max_tokens=80))
    assert t.ended_by == "tokens" and t.agent_calls == 2 and t.completion_tokens == 120
    llm = Scripted(["thinking"], completion_tokens=60)
    run_agent(llm, "s", "f", [], Budgets(agent_calls=50, tokens=100, max_tokens=80))
    assert [r["max_tokens"] for r in llm.requests] == [80, 40]  # never asks for more than the token budget leaves
    assert run_agent(Scripted(["nothing"]), "s", "f", [], Budgets(agent_calls=2)).description == ""


# --- grader ----------------------------------------------------------------------------------------------------

def test_parse_score():
    assert parse_score("Reasoning: close.\nSCORE: 4") == 4
    assert parse_score("score: 2\n...\n**SCORE:** 5") == 5
    assert parse_score("SCORE = 3") == 3
    assert parse_score("I give it a 4") is None and parse_score("SCORE: 7") is None


def test_grade_repeats_retries_and_never_guesses():
    llm = Scripted(["It matches.\nSCORE: 5", "Partly. I'd say four", "SCORE: 4", "nope", "still no"])
    grades = grade(llm, "truth", "hypothesis", repeats=3)
    assert [(g.score, g.attempts) for g in grades] == [(5, 1), (4, 2), (None, 2)]
    assert "[TRUE DESCRIPTION]\ntruth" in llm.requests[0]["messages"][1]["content"] and prompts.RUBRIC in llm.requests[0]["messages"][1]["content"]
    empty = Scripted(["SCORE: 5"])
    assert [g.score for g in grade(empty, "truth", "  ")] == [1] and empty.requests == []


def test_every_builtin_task_has_a_known_description():
    assert set(KNOWN_DESCRIPTIONS) == set(TASKS)
    with pytest.raises(ValueError, match="--description"):
        known_description("mystery")


# --- the grid ----------------------------------------------------------------------------------------------------

def test_evaluate_grid_resumes_and_summarizes(adl):
    tmp, _, _ = adl
    c = _config(tmp, agents=["adl", "blackbox"], interactions=[0, 1])
    agent = ByTurn(['HYPOTHESIS: writes in capitals\nCALL(ask_model: {"prompts": ["Hi"]})', 'FINAL(description: "ALL CAPS answers.")'])
    grader = Scripted(["Right behaviour.\nSCORE: 4"], name="judge")
    results = evaluate(c, agent, grader)
    files = sorted(p.name for p in (Path(c.out) / "transcripts").iterdir())
    assert files == sorted(cell_name("caps", a, mi, 0) for a in ("adl", "blackbox") for mi in (0, 1))
    cell = json.loads((Path(c.out) / "transcripts" / cell_name("caps", "adl", 1, 0)).read_text())
    assert cell["description"] == "ALL CAPS answers." and cell["grade"] == 4.0 and cell["truth"] == known_description("caps")
    assert cell["transcript"]["interactions_used"] == 1 and cell["grader_model"] == "judge"
    zero = json.loads((Path(c.out) / "transcripts" / cell_name("caps", "blackbox", 0, 0)).read_text())
    assert zero["transcript"]["interactions_used"] == 0 and zero["transcript"]["corrections"] == 1  # the ask was refused
    assert "ANSWERS OF THE FINE-TUNED MODEL" in zero["transcript"]["messages"][1]["content"]
    assert "OVERVIEW" in cell["transcript"]["messages"][1]["content"]
    assert [(r["agent"], r["interactions"], r["mean_grade"]) for r in results["summary"]] == [
        ("adl", 0, 4.0), ("adl", 1, 4.0), ("blackbox", 0, 4.0), ("blackbox", 1, 4.0)]
    n = len(agent.requests)
    again = evaluate(c, agent, grader)  # resumed: every cell exists, nobody is asked anything
    assert len(agent.requests) == n and again["cells_run_now"] == 0 and again["summary"] == results["summary"]
    with pytest.raises(ValueError, match="other agent_model"):
        evaluate(c, Scripted(["x"], name="another"), grader)
    from tunetrace.report import render_report

    html, ids = render_report(c.out)
    assert "agent" in ids and "ALL CAPS answers." in html and "could not be drawn" not in html
    assert html.count("<details><summary>caps") == 4 and "Right behaviour." in html and "entirely in capital letters" in html  # every transcript and grader reply readable
    with pytest.raises(ValueError, match="other target caps"):
        evaluate(_config(tmp, agents=["adl", "blackbox"], interactions=[0, 1], description="something else"), agent, grader)


def test_summary_interval_and_unparsed_grades():
    assert t_interval([3.0]) == (3.0, 3.0, 3.0)
    m, lo, hi = t_interval([2.0, 4.0])
    assert m == 3.0 and lo == 1.0 and hi == 5.0  # 3 +- 12.7: clipped to the scale
    m, lo, hi = t_interval([3.0, 3.5, 4.0, 3.5])
    assert m == 3.5 and lo == pytest.approx(3.5 - 3.182446 * 0.408248 / 2, rel=1e-5)
    cells = [{"agent": "adl", "interactions": 0, "task": t, "grade": g, "ended_by": "final"} for t, g in [("a", 3.0), ("b", None)]]
    (row,) = summarize(cells)
    assert (row["runs"], row["graded"], row["mean_grade"], row["per_task"]) == (2, 1, 3.0, {"a": 3.0})


def test_config_refuses_bad_combinations():
    with pytest.raises(ValueError, match="no agent LLM"):
        AgentEvalConfig(finetuned=["x"])
    with pytest.raises(ValueError, match="not both"):
        AgentEvalConfig(finetuned=["x"], agent_model="http://a/v1", serve="dir")
    with pytest.raises(ValueError, match="`agents`"):
        AgentEvalConfig(finetuned=["x"], agent_model="http://a/v1", agents=["oracle"])
    with pytest.raises(ValueError, match="exactly one FINETUNED"):
        AgentEvalConfig(finetuned=["x", "y"], agent_model="http://a/v1", description="d")


def test_diff_one_shot_description_uses_the_shared_client(monkeypatch):
    from tunetrace import llm as chat
    from tunetrace.diffing import agent as one_shot

    seen = {}

    class Fake:
        def __init__(self, url, model, key_env, timeout):
            seen.update(url=url, model=model, key_env=key_env)
            self.name = model

        def chat(self, messages, max_tokens, temperature):
            seen["prompt"] = messages[0]["content"]
            return Reply("It writes in capitals. GUESS: caps", 1, 1)

    monkeypatch.setattr(chat, "OpenAIResponder", Fake)
    summary = {"positions": [{"position": 0, "logit_lens_pos": [{"token": "CAP"}], "patchscope_tokens": [{"token": "UP"}]}]}
    gens = [{"chosen": True, "prompt": "Hi", "unsteered": "hello", "steered": "HELLO"}]
    out = one_shot.describe("http://host/v1/chat/completions", "m", "KEY", summary, gens)
    assert out == {"model": "m", "endpoint": "http://host/v1", "answer": "It writes in capitals. GUESS: caps"}
    assert seen["url"] == "http://host/v1" and "logit lens [CAP]" in seen["prompt"] and "STEERED: HELLO" in seen["prompt"]

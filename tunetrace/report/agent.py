"""Agent-evaluation section: mean grade per agent and budget with its interval, and every transcript to read.

Inputs: `tunetrace agent-eval`'s run.json (its summary) and transcripts/*.json (one per task x agent x budget x repeat).
"""

from __future__ import annotations

import pandas as pd

from tunetrace.report.html import Section, data_table, esc, note, static_table
from tunetrace.report.rundir import RunDir


def _transcript_html(cell: dict) -> str:
    msgs = cell["transcript"]["messages"]
    turns = "".join(f"<p><b>{esc(m['role'])}</b></p><pre>{esc(m['content'])}</pre>" for m in msgs[1:])  # the system prompt is shared
    grades = "".join(f"<p><b>grade {esc(str(g['score']))}</b></p><pre>{esc(g['text'])}</pre>" for g in cell["grades"])
    head = (f"{esc(cell['task'])} · {esc(cell['agent'])} · {cell['interactions']} interactions · repeat {cell.get('repeat', 0)}: "
            f"grade {esc(str(cell['grade']))} ({esc(cell['ended_by'])})")
    truth = f"<p><b>Known description</b>: {esc(cell['truth'])}<br><b>Agent's description</b>: {esc(cell['description'])}</p>"
    return f"<details><summary>{head}</summary>{truth}{turns}<h4>Grader</h4>{grades}</details>"


def section(run: RunDir) -> Section | None:
    """The agent-eval section, or None when the run holds no agent_eval.json."""
    marker = run.first("agent_eval.json")
    if marker is None:
        return None
    cells = [run.json(p) for p in sorted((marker.parent / "transcripts").glob("*.json"))]
    if not cells:
        return None
    from tunetrace.agent.evaluate import summarize

    identity = run.json(marker)
    rows = [[r["agent"], r["interactions"], r["mean_grade"], r["ci95"] and f"[{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]",
             f"{r['graded']}/{r['runs']}", r["tasks"], r["ended_by_final"], ", ".join(f"{k} {v:.2f}" for k, v in r["per_task"].items())]
            for r in summarize(cells)]
    table = static_table(rows, ["agent", "model interactions", "mean grade (1-5)", "95% t-interval", "graded runs", "tasks",
                                "ended with FINAL", "per task"])
    df = pd.DataFrame([{"task": c["task"], "agent": c["agent"], "interactions": c["interactions"], "repeat": c.get("repeat", 0),
                        "grade": c["grade"], "ended_by": c["ended_by"], "replies": c["transcript"]["agent_calls"],
                        "corrections": c["transcript"]["corrections"], "description": c["description"]} for c in cells])
    body = (f"<p>An LLM agent tries to say what each fine-tune taught, either from the Activation Difference Lens outputs "
            f"(adl: logit lens, Patchscope, steering, plus asking both models) or from the fine-tuned model's answers alone "
            f"(blackbox: asking both models only). A grader model scores each final description against the fine-tune's known "
            f"description on a 1-5 rubric (docs/agent.md). Agent <code>{esc(str(identity.get('agent_model')))}</code>, grader "
            f"<code>{esc(str(identity.get('grader_model')))}</code>.</p>" + table
            + note("The interval is a Student-t interval over tasks x repeats (each run's grade is the mean of its grader repeats); "
                   "with a handful of runs it is wide, and a small agent model may fail both conditions.")
            + data_table(df, "table-agent-cells", "One row per agent run", sort="grade")
            + "<h3>Transcripts</h3>" + "".join(_transcript_html(c) for c in cells))
    return Section("agent", "Interpretability agent", body)

"""`tunetrace agent-eval`: ADL agent vs black-box agent on known fine-tunes, graded on a 1-5 rubric."""

from __future__ import annotations

import contextlib
from pathlib import Path

from tunetrace.commands._common import write_report


def _is_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def run(config) -> int:
    from tunetrace.agent.evaluate import evaluate, format_summary, pending
    from tunetrace.records import new_record, write_record

    out = Path(config.out)
    if (out / "transcripts").is_dir() and pending(config) == 0:  # all done: re-read the transcripts, start no server
        results = evaluate(config, None, None)
    else:
        results = _run(config, out)
    print(format_summary(results))
    record = new_record("agent-eval", config, models={"agent": results["agent_model"], "grader": results["grader_model"]},
                        results=results, wall_seconds=results["wall_seconds"],
                        outputs=sorted(str(p.relative_to(out)) for p in (out / "transcripts").glob("*.json")))
    write_record(out, record)
    print(f"wrote {out}/run.json ({results['cells']} transcripts in {out}/transcripts, {results['cells_run_now']} run now)")
    if not config.no_report:
        write_report(out)
    return 0


def _run(config, out: Path) -> dict:
    """Build the agent and grader clients (serving a local model first if asked) and run the missing cells."""
    from tunetrace.llm import EndpointError, OpenAIResponder
    from tunetrace.agent.evaluate import evaluate
    from tunetrace.agent.serve import served

    local = config.serve or ("" if _is_url(config.agent_model) else config.agent_model)
    with contextlib.ExitStack() as stack:
        if local:
            out.parent.mkdir(parents=True, exist_ok=True)
            print(f"starting transformers serve {local} on localhost ...", flush=True)
            url = stack.enter_context(served(local, out.parent / f"{out.name}.serve.log", threads=config.threads)).url
        else:
            url = config.agent_model
        try:
            agent = OpenAIResponder(url, config.agent_model_name, config.key_env, timeout=config.timeout)
            grader = (OpenAIResponder(config.grader_model, config.grader_model_name, config.key_env, timeout=config.timeout)
                      if config.grader_model else agent)
            return evaluate(config, agent, grader)
        except EndpointError as err:
            raise ValueError(str(err)) from None

"""`tunetrace agent-eval`: ADL agent vs black-box agent on known fine-tunes, graded on a 1-5 rubric."""

from __future__ import annotations

import contextlib
from pathlib import Path

from tunetrace.commands._common import write_report


def _is_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def run(config) -> int:
    from tunetrace.agent.chat import EndpointError, OpenAIResponder
    from tunetrace.agent.evaluate import evaluate, format_summary
    from tunetrace.agent.serve import served
    from tunetrace.records import new_record, write_record

    local = config.serve or ("" if _is_url(config.agent_model) else config.agent_model)
    out = Path(config.out)
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
            results = evaluate(config, agent, grader)
        except EndpointError as err:
            raise ValueError(str(err)) from None
    print(format_summary(results))
    record = new_record("agent-eval", config, models={"agent": results["agent_model"], "grader": results["grader_model"]},
                        results=results, wall_seconds=results["wall_seconds"],
                        outputs=sorted(str(p.relative_to(out)) for p in (out / "transcripts").glob("*.json")))
    write_record(out, record)
    print(f"wrote {out}/run.json and {results['cells']} transcripts in {out}/transcripts")
    if not config.no_report:
        write_report(out)
    return 0

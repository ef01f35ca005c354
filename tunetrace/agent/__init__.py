"""The interpretability agent of the diffing study: an LLM that finds out what a fine-tune was about.

Design after science-of-finetuning/diffing-toolkit (its `BaseAgent` loop, ADL tools, black-box
baseline and hypothesis grader), rebuilt on tunetrace's own diff outputs. Modules:
`grammar` (parse a reply),
`loop` (budgets, hypotheses, corrective messages), `tools` (ask both models, lens, Patchscope,
steering), `prompts`, `grader` (1-5 rubric), `serve` (a local `transformers serve`),
`evaluate` (the resumable task x agent x budget x repeat grid of `tunetrace agent-eval`). Who answers is
`tunetrace.llm` (an OpenAI-compatible client, or any scripted responder), also used by `diff --agent-endpoint`.
"""

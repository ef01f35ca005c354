"""The latents of a trained crosscoder that lean furthest toward either model, read on held-out text.

`tunetrace crosscoder` keeps top activations for base-only and fine-tune-only latents only; when a
run finds none (a short fine-tune, a small budget), this shows what the most leaning latents fire on,
so "0 fine-tune-only latents" can be told from "the crosscoder saw nothing". It re-runs both models
over the run's own held-out chunks (the start of its text stream, never trained on).

    .venv/bin/python bench/crosscoder_leaning.py RUN_DIR [--n 4] [--examples 5]
"""

from __future__ import annotations

import argparse
import itertools
import math

import pandas as pd
import torch


def main() -> None:
    from tunetrace import io
    from tunetrace.features.activations import paired_activations
    from tunetrace.features.crosscoder import BatchTopKCrosscoder
    from tunetrace.features.crosscoder_eval import top_activations
    from tunetrace.features.text import batched, mixed_chunks
    from tunetrace.models import load_model
    from tunetrace.records import read_record

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--n", type=int, default=4, help="latents per side")
    parser.add_argument("--examples", type=int, default=5)
    args = parser.parse_args()
    rec = read_record(args.run_dir)
    c = rec.config
    cc = BatchTopKCrosscoder.load(args.run_dir).eval()
    table = io.read_parquet(f"{args.run_dir}/latents.parquet")
    alive = table[table["heldout_fired"] > 0]
    toward_ft = alive.nlargest(args.n, "rel_norm")
    toward_base = alive.nsmallest(args.n, "rel_norm")
    base = load_model(c["base"], dtype=c.get("dtype", "float32"))
    ft = load_model(c["finetuned"], dtype=c.get("dtype", "float32"))
    tok = base.tokenizer
    chunks = torch.stack(list(itertools.islice(mixed_chunks(tok, c["text"], c["ctx_len"]), math.ceil(c["eval_tokens"] / (c["ctx_len"] - 1)))))
    acts = torch.cat(list(paired_activations([base.model, ft.model], c["layer"], batched(iter(chunks), c["batch_size"]), c["site"])))
    for side, rows in (("toward the fine-tune", toward_ft), ("toward the base", toward_base)):
        print(f"## {side}")
        tops = top_activations(cc, acts, chunks, rows["latent"].tolist(), tok, args.examples)
        for (_, row), t in zip(rows.iterrows(), tops):
            shown = "; ".join(f"{e['context'][-40:]!r}[[{e['token']}]]" for e in t["examples"])
            print(f"latent {int(row.latent)} rel {row.rel_norm:.2f} fired {int(row.heldout_fired)}: {shown}")
    print(pd.Series(table["class"]).value_counts().to_dict())


if __name__ == "__main__":
    main()

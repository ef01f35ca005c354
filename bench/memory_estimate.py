"""tunetrace.memory's batch estimate against the measured peak of one forward + backward.

Each (model, batch, seq) runs in a fresh subprocess (peak RSS is per process); prints the
measured peak above the loaded model, the estimate, and their ratio (> 1: the estimate is a floor).

    OMP_NUM_THREADS=1 .venv/bin/python bench/memory_estimate.py [--cases tiny-llama:8:512 smollm2-135m-instruct:2:256]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = """
import gc, json, resource, sys, torch
from tunetrace.memory import estimate_batch_memory
from tunetrace.models import load_model
spec, b, s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(1)
model = load_model(spec).model
ids = torch.randint(5, model.config.vocab_size, (b, s))
gc.collect()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
model(input_ids=ids, labels=ids).loss.backward()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
est = estimate_batch_memory(model.config, b, s, 4, True, model.config._attn_implementation == "eager")
print(json.dumps({"attn": model.config._attn_implementation, "peak": peak, "estimate": est.total}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["tiny-llama:8:512", "tiny-llama:32:256", "smollm2-135m-instruct:2:256"])
    args = parser.parse_args()
    for case in args.cases:
        spec, b, s = case.split(":")
        out = subprocess.run([sys.executable, "-c", CHILD, spec, b, s], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{spec} ({r['attn']}) {b} x {s}: measured {r['peak'] / 1e6:.0f} MB, estimate {r['estimate'] / 1e6:.0f} MB, "
              f"ratio {r['peak'] / r['estimate']:.2f}")


if __name__ == "__main__":
    main()

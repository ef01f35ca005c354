"""GGUF load times: first load (dequantize + cache as safetensors) against a cached load.

Each load runs in a fresh subprocess with an empty cache directory, so nothing is warm
but the OS page cache. Prints both times and their ratio per model.

    .venv/bin/python bench/load_times.py [--models smollm2-135m-instruct gemma3-270m]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = "import json,sys; from tunetrace.models import load_model; m=load_model(sys.argv[1]); print(json.dumps({'s': m.load_seconds}))"


def timed_load(model: str, cache: str) -> float:
    env = dict(os.environ, TUNETRACE_CACHE=cache)
    out = subprocess.run([sys.executable, "-c", CHILD, model], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma3-270m"])
    args = parser.parse_args()
    for model in args.models:
        with tempfile.TemporaryDirectory() as cache:
            first, second = timed_load(model, cache), timed_load(model, cache)
        print(f"{model}: first load (dequantize + cache) {first:.1f} s, cached load {second:.1f} s, ratio {first / second:.1f}x")


if __name__ == "__main__":
    main()

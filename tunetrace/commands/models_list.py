"""`tunetrace models list`: every built-in model, its source, and whether it is ready to load."""

from __future__ import annotations


def run(config) -> int:
    from tunetrace import part_models
    from tunetrace.models import BUILTIN_GGUF, BUILTIN_MODELS
    from tunetrace.model_files import ModelSpecError

    for name in BUILTIN_MODELS:
        if name in part_models.PART_MODELS:
            entry = part_models.PART_MODELS[name]
            ready = part_models.installed_path(entry).is_file()
            state = "installed" if ready else f"not installed: {part_models.install_hint(entry)}"
            print(f"{name:30s} {entry.upstream}, {entry.licence}; {state}")
        elif name in BUILTIN_GGUF:
            try:
                BUILTIN_GGUF[name]()
                state = "installed (default set-up)"
            except ModelSpecError as err:
                state = str(err)
            print(f"{name:30s} {state}")
        else:
            print(f"{name:30s} random-init test model (built in code)")
    return 0

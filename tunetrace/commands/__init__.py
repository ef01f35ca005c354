"""One short module per CLI command: check the output, load, call the library, write, print.

Each has `run(config) -> int`; `tunetrace.cli` imports only the chosen one. Nothing here holds
maths or file formats: those live in the library modules the commands call.
"""

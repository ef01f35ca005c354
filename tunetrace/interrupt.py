"""Interrupts (Ctrl-C, SIGTERM from a scheduler) that end a long command with its state saved.

The CLI turns SIGTERM into KeyboardInterrupt, so both signals take one path. A loop that mutates state in place (a training step) runs each unit inside
`deferred_interrupts()`, so a signal takes effect between units and the saved state is never
half a step. A command that saved its state raises `Interrupted`, and the CLI prints the
exact command that resumes it.
"""

from __future__ import annotations

import contextlib
import shlex
import signal
import threading
from collections.abc import Iterator, Sequence


class Interrupted(KeyboardInterrupt):
    """An interrupted command whose state was saved; `message` says where."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """SIGINT/SIGTERM received inside the block raise KeyboardInterrupt only when the block has finished."""
    if not _main_thread():
        yield
        return
    received: list[int] = []
    signals = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in signals}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    if received:
        raise KeyboardInterrupt(f"signal {received[0]}")


def interrupt_message(err: BaseException, argv: Sequence[str], resume_flag: str | None) -> str:
    """The line the CLI prints: where the state is and the exact command that continues the run."""
    if not isinstance(err, Interrupted):
        return "tunetrace: interrupted; finished outputs are intact, partial ones were discarded."
    args = list(argv)
    if resume_flag and resume_flag not in args:
        args.append(resume_flag)
    return f"tunetrace: {err.message}; resume with: python -m tunetrace {shlex.join(args)}"

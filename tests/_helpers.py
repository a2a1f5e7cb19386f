"""Functions and classes that tests run on cluster workers, shared by several test modules.

Kept out of ``conftest.py`` so that workers unpickling them import only this module.
"""

from __future__ import annotations

import time


class Counter:
    """A supervised process (``fd.ProcessManager.start_singleton(Counter, ...)``)."""

    def __init__(self) -> None:
        self.n = 0

    def incr(self) -> int:
        self.n += 1
        return self.n


def busy(seconds: float) -> int:
    """CPU work in this function's own frame (no Python callees)."""
    end = time.time() + seconds
    x = 0
    while time.time() < end:
        for i in range(1000):
            x += i * i
    return x

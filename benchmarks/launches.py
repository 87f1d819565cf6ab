"""Count kernel launches and programs inside a block (interpreter or compiled)."""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class LaunchCount:
    launches: int = 0
    programs: int = 0
    by_kernel: Counter = field(default_factory=Counter)
    seconds_by_kernel: Counter = field(default_factory=Counter)


@contextlib.contextmanager
def count_launches() -> Iterator[LaunchCount]:
    """Patch the Triton launcher for the duration of the block and count every launch and program."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    count = LaunchCount()
    originals = {cls: cls.run for cls in (InterpretedFunction, JITFunction)}

    def wrap(cls):
        original = originals[cls]

        def run(self, *args, grid, warmup=False, **kwargs):
            if not warmup:
                g = grid(kwargs) if callable(grid) else grid
                count.launches += 1
                count.programs += math.prod(g)
                count.by_kernel[getattr(self, "__name__", str(self))] += 1
            start = time.perf_counter()
            try:
                return original(self, *args, grid=grid, warmup=warmup, **kwargs)
            finally:
                count.seconds_by_kernel[getattr(self, "__name__", str(self))] += time.perf_counter() - start

        return run

    try:
        for cls in originals:
            cls.run = wrap(cls)
        yield count
    finally:
        for cls, original in originals.items():
            cls.run = original

"""Count kernel launches and programs inside a block (interpreter, compiled, or the CPU twins)."""

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
    """Patch the Triton launcher and the CPU executor's twin call for the duration of the block and count
    every launch and program (a twin computes a launch's whole grid: its programs are the grid's)."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    from precision_kernels import cpu_executor

    count = LaunchCount()
    originals = {cls: cls.run for cls in (InterpretedFunction, JITFunction)}
    original_twin = cpu_executor.run_twin

    def run_twin(fn, kernel, grid, args, constexprs):
        name = getattr(kernel, "__name__", str(kernel))
        count.launches += 1
        count.programs += math.prod(grid)
        count.by_kernel[name] += 1
        start = time.perf_counter()
        try:
            return original_twin(fn, kernel, grid, args, constexprs)
        finally:
            count.seconds_by_kernel[name] += time.perf_counter() - start

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
        cpu_executor.run_twin = run_twin
        yield count
    finally:
        for cls, original in originals.items():
            cls.run = original
        cpu_executor.run_twin = original_twin

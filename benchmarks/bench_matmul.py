"""pk.matmul speed against torch.matmul (fp32, torch's fastest general CPU path).

    python -m benchmarks.bench_matmul                  # table (CPU: the interpreter)
    python -m benchmarks.bench_matmul --json out.json
    pytest benchmarks/bench_matmul.py                  # pytest-benchmark (not part of `make test`)

Each row times pk.matmul in one dtype and torch.matmul in fp32 on the same shape in
the same run, and reports their ratio with the kernel launches and programs per call.
GPU TFLOP/s against cuBLAS: ``python -m benchmarks.gpu_report``.
(torch's own fp16 CPU matmul is ~20x slower than its fp32 and its bf16 uses special
instructions, so same-dtype ratios would mislead.)
"""

from __future__ import annotations

import argparse
import time

import pytest
import torch

import precision_kernels as pk
from benchmarks._output import OutputPathError, prepare_json_path, write_json
from benchmarks.launches import count_launches
from precision_kernels import backend

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# (name, a shape, b shape): the RL model's shapes and the attention batch.
SHAPES = [(f"{m}x{nk}x{nk}", (m, nk), (nk, nk)) for m in (64, 1024, 2048) for nk in (64, 256)] + [
    ("batched 256x(16x32@32x16)", (256, 16, 32), (256, 32, 16)),
]


def _inputs(a_shape, b_shape, dtype):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(*a_shape, generator=g).to(dtype).to(backend.device())
    b = torch.randn(*b_shape, generator=g).to(dtype).to(backend.device())
    return a, b


def _time(fn, reps: int) -> float:
    """Best (minimum) seconds per call after one warm-up call: the least disturbed by other load."""
    fn()
    if backend.BACKEND == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        if backend.BACKEND == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)


def _torch_time(a, b, reps: int) -> float:
    """torch.matmul in fp32: the faster of its default thread count and one thread.

    (On a small loaded machine torch's multithreaded GEMM can wait on a descheduled thread.)
    """
    best = _time(lambda: torch.matmul(a, b), reps)
    if backend.BACKEND != "cuda" and torch.get_num_threads() > 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            best = min(best, _time(lambda: torch.matmul(a, b), reps))
        finally:
            torch.set_num_threads(threads)
    return best


def _per_call(fn) -> tuple[int, int]:
    with count_launches() as count:
        fn()
    return count.launches, count.programs


def table(reps: int = 3) -> list[dict]:
    rows = []
    for shape_name, a_shape, b_shape in SHAPES:
        a32, b32 = _inputs(a_shape, b_shape, torch.float32)
        t_torch = _torch_time(a32, b32, max(reps, 50))
        for dname, dtype in DTYPES.items():
            a, b = _inputs(a_shape, b_shape, dtype)
            t_pk = _time(lambda a=a, b=b: pk.matmul(a, b), reps)
            launches, programs = _per_call(lambda a=a, b=b: pk.matmul(a, b))
            rows.append({"shape": shape_name, "dtype": dname, "pk_ms": t_pk * 1e3, "torch_fp32_ms": t_torch * 1e3,
                         "ratio": t_pk / t_torch, "launches": launches, "programs": programs})
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"backend: {backend.BACKEND}; torch threads: {torch.get_num_threads()}")
    print(f"{'shape':<28} {'dtype':<5} {'pk ms':>9} {'torch fp32 ms':>14} {'ratio':>8} {'launches':>9} {'programs':>9}")
    for r in rows:
        print(f"{r['shape']:<28} {r['dtype']:<5} {r['pk_ms']:9.1f} {r['torch_fp32_ms']:14.3f} {r['ratio']:7.1f}x "
              f"{r['launches']:9d} {r['programs']:9d}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    parser.add_argument("--reps", type=int, default=3, help="timed calls per pk row (best of)")
    args = parser.parse_args(argv)
    try:  # checked before the measurement, not after it
        prepare_json_path(args.json)
    except OutputPathError as e:
        parser.error(str(e))
    rows = table(args.reps)
    print_table(rows)
    if args.json:
        write_json({"backend": backend.BACKEND, "rows": rows}, args.json)


# ------------------------------------------------------------------ pytest-benchmark entry points

@pytest.mark.parametrize("dname", list(DTYPES))
@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
def test_pk_matmul(benchmark, shape, dname):
    _, a_shape, b_shape = shape
    a, b = _inputs(a_shape, b_shape, DTYPES[dname])
    benchmark(pk.matmul, a, b)


@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
def test_torch_matmul_fp32(benchmark, shape):
    _, a_shape, b_shape = shape
    a, b = _inputs(a_shape, b_shape, torch.float32)
    benchmark(torch.matmul, a, b)


if __name__ == "__main__":
    main()

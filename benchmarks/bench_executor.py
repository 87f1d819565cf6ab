"""The CPU executor against the Triton interpreter and torch: time per call and ratios, and the memory check.

    python -m benchmarks.bench_executor                    # table, 1 thread and all cores, + memory check
    python -m benchmarks.bench_executor --quick            # no interpreter column at the largest shape
    python -m benchmarks.bench_executor --json out.json

Each row times one public op call on the interpreter (``use_cpu_executor("interpreter")``), on the
compiled twins (the CPU default) and ``torch.mm`` in fp32 on the same shape, in the same run, with
the same thread count on every side (1, then all cores); ratios are against torch. Times are the
best of ``--reps`` calls after one warm-up call (of 1 call where it takes > 2 s): on one thread the
process's CPU time (steady on a shared machine), on all cores wall time.

The memory check runs one ``pk.linear`` of 2048x576 @ (1536x576)^T in a fresh process: the peak
RSS increase over the call (``/proc/self/clear_refs`` resets the peak) against the output's size.
No (M x K x N) temporary may exist, so the increase beyond the output must stay within the output's size.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import torch

import precision_kernels as pk
from benchmarks._output import OutputPathError, prepare_json_path, write_json
from precision_kernels import backend
from precision_kernels.cpu_executor import use_cpu_executor

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# (M, K, N): the shapes: an RL-model matmul, a SmolLM2 MLP decode step, its LM head.
SHAPES = [(2048, 256, 256), (8, 576, 1536), (8, 576, 49152)]
MEMORY_SHAPE = (2048, 576, 1536)


def _best(fn, reps: int, clock) -> float:
    fn()
    first = clock()
    fn()
    best = clock() - first
    if best > 2.0:
        return best
    for _ in range(reps - 1):
        start = clock()
        fn()
        best = min(best, clock() - start)
    return best


def _inputs(m: int, k: int, n: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    return torch.randn(m, k, generator=g).to(dtype), torch.randn(k, n, generator=g).to(dtype)


def measure(m: int, k: int, n: int, dtype_name: str, threads: int, reps: int, interpreter: bool) -> dict:
    """One table row: pk.matmul on the interpreter and on the twins, and torch.mm fp32, on ``threads`` threads."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    # one thread: the process's CPU time (steady on a shared machine); all cores: wall time
    clock = time.process_time if threads == 1 else time.perf_counter
    try:
        a, b = _inputs(m, k, n, DTYPES[dtype_name])
        a32, b32 = a.float(), b.float()
        t_torch = _best(lambda: torch.mm(a32, b32), reps, clock)
        t_twin = _best(lambda: pk.matmul(a, b), reps, clock)
        t_interp = None
        if interpreter:
            with use_cpu_executor("interpreter"):
                t_interp = _best(lambda: pk.matmul(a, b), reps, clock)
    finally:
        torch.set_num_threads(saved)
    return {"op": "pk.matmul", "shape": f"{m}x{k}x{n}", "dtype": dtype_name, "threads": threads,
            "clock": "cpu" if threads == 1 else "wall",
            "interpreter_s": t_interp, "executor_s": t_twin, "torch_s": t_torch,
            "interpreter_x_torch": None if t_interp is None else t_interp / t_torch,
            "executor_x_torch": t_twin / t_torch,
            "interpreter_x_executor": None if t_interp is None else t_interp / t_twin}


_MEMORY_CHILD = """
import resource, sys, torch
import precision_kernels as pk
m, k, n = {shape}
dtype = getattr(torch, "{dtype}")
torch.set_num_threads({threads})
g = torch.Generator().manual_seed(0)
x, w = torch.randn(m, k, generator=g).to(dtype), torch.randn(n, k, generator=g).to(dtype)
pk.linear(x[:2], w[:70])          # load numba and the twins first (not part of the call's memory)
torch.nn.functional.linear(x[:2], w[:70])

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))

def peak_increase(fn):
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")               # reset the peak RSS (VmHWM) to the current RSS
    before = status("VmRSS:")
    out = fn()
    return status("VmHWM:") - before, out.numel() * out.element_size()

pk_inc, out_bytes = peak_increase(lambda: pk.linear(x, w))
torch_inc, _ = peak_increase(lambda: torch.nn.functional.linear(x, w))
print(pk_inc, torch_inc, out_bytes)
"""


def memory_check(dtype_name: str = "fp32", threads: int = 1) -> dict:
    """Peak RSS increase of one 2048x576x1536 pk.linear (fresh process) against its output's size."""
    code = _MEMORY_CHILD.format(shape=MEMORY_SHAPE, dtype=str(DTYPES[dtype_name]).split(".")[1], threads=threads)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")})
    pk_inc, torch_inc, out_bytes = (int(v) for v in done.stdout.split()[-3:])
    return {"op": "pk.linear", "shape": "x".join(map(str, MEMORY_SHAPE)), "dtype": dtype_name, "threads": threads,
            "peak_rss_increase_bytes": pk_inc, "torch_peak_rss_increase_bytes": torch_inc, "output_bytes": out_bytes,
            "beyond_output_bytes": pk_inc - out_bytes, "within_target": pk_inc - out_bytes <= out_bytes}


def _fmt(seconds) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:9.2f}"


def _ratio(r) -> str:
    return "-" if r is None else f"{r:7.1f}x"


def print_header() -> None:
    print(f"{'op':10} {'shape':>13} {'dtype':5} {'thr':>3} {'interp ms':>10} {'exec ms':>9} {'torch ms':>9} "
          f"{'interp/torch':>12} {'exec/torch':>10} {'interp/exec':>11}", flush=True)


def print_rows(rows: list[dict]) -> None:
    for r in rows:
        print(f"{r['op']:10} {r['shape']:>13} {r['dtype']:5} {r['threads']:>3} {_fmt(r['interpreter_s']):>10} "
              f"{_fmt(r['executor_s']):>9} {_fmt(r['torch_s']):>9} {_ratio(r['interpreter_x_torch']):>12} "
              f"{_ratio(r['executor_x_torch']):>10} {_ratio(r['interpreter_x_executor']):>11}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_executor", description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="timed calls per measurement (the best counts)")
    parser.add_argument("--quick", action="store_true", help="no interpreter column at 8x576x49152")
    parser.add_argument("--dtypes", default="fp32,fp16,bf16", help="comma-separated: fp32, fp16, bf16")
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args(argv)
    if not backend.INTERPRETED:
        parser.error("the CPU executor runs on the interpreter backend only (no CUDA device)")
    if args.reps < 1:
        parser.error(f"--reps must be >= 1, got {args.reps}")
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bad = [d for d in dtypes if d not in DTYPES]
    if bad or not dtypes:
        parser.error(f"--dtypes must name some of {list(DTYPES)}, got {args.dtypes!r}")
    try:
        prepare_json_path(args.json)
    except OutputPathError as e:
        parser.error(str(e))
    all_cores = os.cpu_count() or 1
    rows = []
    print_header()
    for threads in sorted({1, all_cores}):
        for m, k, n in SHAPES:
            for dtype in dtypes:
                interp = not (args.quick and n > 4096)
                rows.append(measure(m, k, n, dtype, threads, args.reps, interp))
                print_rows(rows[-1:])
    memory = [memory_check(dtype, 1) for dtype in ("fp32", "bf16")]
    print()
    for r in memory:
        print(f"memory {r['op']} {r['shape']} {r['dtype']}: peak RSS +{r['peak_rss_increase_bytes'] / 2**20:.1f} MiB "
              f"(torch F.linear +{r['torch_peak_rss_increase_bytes'] / 2**20:.1f} MiB), output "
              f"{r['output_bytes'] / 2**20:.1f} MiB, beyond the output {r['beyond_output_bytes'] / 2**20:.1f} MiB: "
              f"{'within' if r['within_target'] else 'OVER'} the target (<= the output's size)")
    if args.json:
        write_json({"rows": rows, "memory": memory, "cpu_count": all_cores}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

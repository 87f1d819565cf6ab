"""pk.attention against torch's SDPA on CPU: prefill and decode, time and peak memory.

    python -m benchmarks.bench_attention                 # T = 512, 1024, 2048
    python -m benchmarks.bench_attention --quick         # T = 512 only, one timed call
    python -m benchmarks.bench_attention --json out.json

Each row is one shape in fp32: prefill (Tq = Tk = T, causal) and decode (Tq = 1 against a
cache of Tk = T keys), batch B, H query heads over Hkv key/value heads (GQA), head dim D.
pk runs on the Triton interpreter here, torch on its CPU flash kernel, so the time ratio
says what the interpreter costs, not what the kernel would on a GPU (``gpu_report``).

Peak memory is measured on a separate, untimed call: the peak of the bytes torch's CPU
allocator holds (the profiler's memory events, summed in time order) plus the peak of
Python-level allocations (``tracemalloc``: the interpreter's numpy tiles). Neither may grow
as Tq * Tk: the column ``tq*tk fp32`` gives the size one score matrix per head would take.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc

import torch
import torch.nn.functional as F

import precision_kernels as pk
from benchmarks._output import OutputPathError, prepare_json_path, write_json

MIB = 2.0**20


def _inputs(b: int, h: int, hkv: int, tq: int, tk: int, d: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, tq, d, generator=g)
    k = torch.randn(b, hkv, tk, d, generator=g)
    v = torch.randn(b, hkv, tk, d, generator=g)
    return q, k, v


def _pk(q, k, v):
    return pk.attention(q, k, v, causal=True)


def _torch(q, k, v):
    # torch's is_causal is top-left: for a decode row (Tq = 1) that would see key 0 only, so pass none.
    causal = q.shape[2] == k.shape[2]
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)


def _best_time(fn, args, reps: int) -> float:
    fn(*args)  # warm-up: compiles nothing on the interpreter, but fills caches
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best


def _torch_alloc_peak(prof) -> int:
    """Peak bytes held by torch's CPU allocator during the profile, from its memory events in time order."""
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    held = peak = 0
    for _, nbytes in sorted(events):
        held += nbytes
        peak = max(peak, held)
    return peak


def _peak_memory(fn, args) -> tuple[int, int]:
    """(torch allocator peak, Python/numpy peak) in bytes of one call, outputs included."""
    from torch.profiler import ProfilerActivity, profile

    tracemalloc.start()
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            out = fn(*args)
        _, py_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del out
    return _torch_alloc_peak(prof), py_peak


def measure(lengths, *, b: int, h: int, hkv: int, d: int, reps: int) -> list[dict]:
    rows = []
    for t in lengths:
        for phase, tq in (("prefill", t), ("decode", 1)):
            args = _inputs(b, h, hkv, tq, t, d)
            row = dict(phase=phase, T=t, B=b, H=h, Hkv=hkv, D=d, Tq=tq, Tk=t,
                       score_matrix_mib=b * h * tq * t * 4 / MIB)
            for name, fn in (("pk", _pk), ("torch", _torch)):
                row[f"{name}_s"] = _best_time(fn, args, reps)
                torch_peak, py_peak = _peak_memory(fn, args)
                row[f"{name}_torch_peak_mib"] = torch_peak / MIB
                row[f"{name}_py_peak_mib"] = py_peak / MIB
            out_pk, out_torch = _pk(*args), _torch(*args)
            row["max_abs_diff"] = float((out_pk - out_torch).abs().max())
            rows.append(row)
            print(format_row(row), flush=True)
    return rows


HEADER = (f"{'phase':<8}{'T':>6}{'pk s':>10}{'torch s':>10}{'ratio':>8}{'pk torch MiB':>14}{'pk py MiB':>11}"
          f"{'torch MiB':>11}{'tq*tk fp32':>12}{'max|diff|':>11}")


def format_row(r: dict) -> str:
    ratio = r["pk_s"] / r["torch_s"] if r["torch_s"] else float("inf")
    return (f"{r['phase']:<8}{r['T']:>6}{r['pk_s']:>10.3f}{r['torch_s']:>10.4f}{ratio:>8.0f}"
            f"{r['pk_torch_peak_mib']:>14.2f}{r['pk_py_peak_mib']:>11.2f}{r['torch_torch_peak_mib']:>11.2f}"
            f"{r['score_matrix_mib']:>12.2f}{r['max_abs_diff']:>11.1e}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="T = 512 only, one timed call per row")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--kv-heads", type=int, default=1)
    parser.add_argument("--head-dim", type=int, default=16)
    args = parser.parse_args(argv)
    for flag, value in (("--batch", args.batch), ("--heads", args.heads), ("--kv-heads", args.kv_heads),
                        ("--head-dim", args.head_dim)):
        if value < 1:
            parser.error(f"{flag} must be >= 1, got {value}")
    if args.heads % args.kv_heads:
        parser.error(f"--heads {args.heads} must be a multiple of --kv-heads {args.kv_heads}")
    try:
        path = prepare_json_path(args.json)
    except OutputPathError as e:
        parser.error(str(e))
    lengths = (512,) if args.quick else (512, 1024, 2048)
    print(f"fp32, B={args.batch}, H={args.heads}, Hkv={args.kv_heads}, D={args.head_dim}; "
          f"pk on {pk.backend.device()} ({'interpreter' if pk.backend.device().type == 'cpu' else 'compiled'})")
    print(HEADER)
    rows = measure(lengths, b=args.batch, h=args.heads, hkv=args.kv_heads, d=args.head_dim,
                   reps=1 if args.quick else 2)
    if path is not None:
        write_json({"rows": rows}, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fused linear -> log-prob (pk.linear_logprobs) against the unfused torch path: time and peak memory.

    python -m benchmarks.bench_logprob [--rows 4096 --d 256 --vocab 32768] [--quick] [--json PATH]

Each variant runs in a fresh subprocess and reports its peak RSS above the inputs' baseline
(tracemalloc does not see torch tensors), so memory is compared fairly. The unfused path is
``F.linear`` + ``log_softmax`` + ``gather``; its logits tensor alone is rows x V elements. The
fused path never materialises it. Under the interpreter the fused kernel is slow (every tile is
an elementwise product in numpy), so ``--quick`` uses a smaller shape; the GPU figures at the
full shape are in ``benchmarks/gpu_report.py``. Peak RSS is a high-water mark: a variant whose
extra memory stays below what importing torch and triton already touched reads as 0.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from benchmarks._output import OutputPathError, prepare_json_path, write_json

_CHILD = r"""
import resource, sys, time, torch
import torch.nn.functional as F
import precision_kernels as pk
rows, d, vocab, dtype, variant = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
dt = getattr(torch, dtype)
h = torch.randn(rows, d, generator=g).to(dt)
w = (torch.randn(vocab, d, generator=g) / d ** 0.5).to(dt)
t = torch.randint(0, vocab, (rows,), generator=g)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
if variant == "fused":
    out = pk.linear_logprobs(h, w, t)
else:
    out = torch.log_softmax(F.linear(h, w).float(), -1).gather(-1, t[:, None]).squeeze(-1)
secs = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(secs, (peak - base) / 1024)
"""


def measure(rows: int, d: int, vocab: int, dtype: str, variant: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(rows), str(d), str(vocab), dtype, variant],
                         capture_output=True, text=True, check=True).stdout.split()
    return {"dtype": dtype, "variant": variant, "rows": rows, "d": d, "V": vocab, "seconds": float(out[0]),
            "peak_extra_MiB": float(out[1]), "logits_MiB": rows * vocab * 2 / 2**20}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--quick", action="store_true", help="rows 256, V 8192")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    try:  # checked before the measurement, not after it
        prepare_json_path(args.json)
    except OutputPathError as e:
        parser.error(str(e))
    rows, vocab = (256, 8192) if args.quick else (args.rows, args.vocab)
    records = [measure(rows, args.d, vocab, dtype, variant)
               for dtype in ("float16", "bfloat16") for variant in ("unfused", "fused")]
    print(f"rows {rows}, d {args.d}, V {vocab}; peak RSS above the inputs, fresh process per variant")
    print(f"{'dtype':<9} {'variant':<8} {'seconds':>9} {'peak extra MiB':>15} {'logits MiB':>11} {'extra/logits':>12}")
    for r in records:
        print(f"{r['dtype']:<9} {r['variant']:<8} {r['seconds']:>9.3f} {r['peak_extra_MiB']:>15.1f} "
              f"{r['logits_MiB']:>11.1f} {r['peak_extra_MiB'] / r['logits_MiB']:>12.1%}")
    if args.json:
        write_json(records, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

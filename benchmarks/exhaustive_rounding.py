"""Every fp32 bit pattern through the library's rounding, against torch's cast.

    python -m benchmarks.exhaustive_rounding                       # fp16, all 2^32 patterns
    python -m benchmarks.exhaustive_rounding --dtype bf16
    python -m benchmarks.exhaustive_rounding --dtype e4m3fn        # also e5m2
    python -m benchmarks.exhaustive_rounding --first-chunk 120 --chunks 8   # part of the range

Not part of ``make test`` (minutes, not seconds); run it by hand after touching
kernels/rounding.py, with ``nice`` on a shared machine. It runs ``pk.round_to(x, dtype)``,
i.e. the integer helpers every kernel rounds with (``fp32_to_fp16_bits`` / ``fp32_to_bf16_bits`` /
``fp32_to_fp8_bits``), on the active backend.

Expected bits: ``x.to(dtype)`` for every non-NaN pattern; for NaN, the quiet NaN
(0x7E00 fp16, 0x7FC0 bf16) with the input's sign, and 0x7F | sign for both fp8 formats. The fp8
comparison needs torch >= 2.12, whose e4m3fn cast saturates as pk does (older torch gives NaN).
Patterns are walked in chunks of 2^chunk_log2 consecutive bit patterns; exits 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import precision_kernels as pk
from precision_kernels import backend

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "e4m3fn": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
QUIET_NAN = {"fp16": 0x7E00, "bf16": 0x7FC0, "e4m3fn": 0x7F, "e5m2": 0x7F}


def _bits_view(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8).to(torch.int16) if t.element_size() == 1 else t.view(torch.int16)


def expected_bits(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """torch's cast for non-NaN patterns, the signed NaN pk defines for NaN patterns (int16 holding the bits)."""
    want = _bits_view(x.to(DTYPES[fmt]))
    width = 8 * torch.empty((), dtype=DTYPES[fmt]).element_size()
    sign = 1 << (width - 1)
    negative_nan = (QUIET_NAN[fmt] | sign) - (1 << 16 if width == 16 else 0)
    quiet = torch.where(x.view(torch.int32) < 0, negative_nan, QUIET_NAN[fmt]).to(torch.int16)
    return torch.where(torch.isnan(x), quiet, want)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    parser.add_argument("--chunk-log2", type=int, default=24, help="patterns per chunk, as a power of two")
    parser.add_argument("--first-chunk", type=int, default=0)
    parser.add_argument("--chunks", type=int, default=None, help="how many chunks (default: to the end)")
    args = parser.parse_args(argv)

    chunk = 1 << args.chunk_log2
    total_chunks = (1 << 32) // chunk
    last = total_chunks if args.chunks is None else min(total_chunks, args.first_chunk + args.chunks)
    fmt, device = args.dtype, backend.device()
    print(f"pk.round_to, fp32 -> {fmt}, backend {backend.BACKEND}, chunks {args.first_chunk}..{last - 1} "
          f"of {total_chunks} (2^{args.chunk_log2} patterns each)", flush=True)

    checked = mismatches = 0
    examples: list[tuple[int, int, int]] = []  # (input bits, got, want)
    start = time.perf_counter()
    cpu_start = time.process_time()
    for index in range(args.first_chunk, last):
        first = index * chunk
        # the patterns first .. first + chunk - 1, as the signed 32-bit values that hold them
        patterns = torch.arange(first, first + chunk, dtype=torch.int64)
        patterns = torch.where(patterns >= 1 << 31, patterns - (1 << 32), patterns)
        x = patterns.to(torch.int32).view(torch.float32).to(device)
        got = _bits_view(pk.round_to(x, DTYPES[fmt]))
        want = expected_bits(x, fmt)
        bad = (got != want).nonzero().flatten()
        mismatches += bad.numel()
        for i in bad[: max(0, 10 - len(examples))].tolist():
            examples.append((first + i, int(got[i]) & 0xFFFF, int(want[i]) & 0xFFFF))
        checked += chunk
        done = index + 1 - args.first_chunk
        elapsed = time.perf_counter() - start
        eta = elapsed / done * (last - index - 1)
        print(f"\rchunk {index + 1}/{last}  checked {checked:,}  mismatches {mismatches}  "
              f"{elapsed:.0f}s elapsed, ~{eta:.0f}s left ", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)

    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    print(f"patterns checked: {checked:,}  mismatches: {mismatches}  wall {wall:.1f}s  CPU {cpu:.1f}s")
    for bits, got_bits, want_bits in examples:
        print(f"  input 0x{bits:08X}: got 0x{got_bits:04X}, want 0x{want_bits:04X}")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())

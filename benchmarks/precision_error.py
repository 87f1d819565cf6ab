"""Kernel precision against the FP64 oracle, side by side with PyTorch's own op in the same dtype.

    python -m benchmarks.precision_error [--quick] [--json PATH] [--png PATH]

Every kernel x {fp32, fp16, bf16} x {normal, heavy-tailed, large-magnitude} inputs.
Both implementations see the *same rounded inputs*, and the FP64 oracle is computed
from them, so the table measures each op's own error:

* fp16/bf16 outputs: fraction correctly rounded, max and mean ulp from the correctly
  rounded FP64 result;
* fp32 outputs (log-probs): max absolute and max relative error.

The rows are this benchmark's own table (``ERROR_CASES``): which inputs, which torch op to set
beside ours. The FP64 oracles are the library's (``pk.reference``).
"""

from __future__ import annotations

import argparse
import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import torch

import precision_kernels as pk
from benchmarks._output import (
    OutputExistsError,
    OutputPathError,
    prepare_json_path,
    prepare_output_path,
    write_figure,
    write_json,
)
from precision_kernels import numerics, reference

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

DEFAULT_PNG = "runs/precision_error.png"


class ErrorCase(NamedTuple):
    """One row: ``build(sample, scale, g) -> args``, where ``sample(shape, scale, g)`` draws fp32 values of the
    row's distribution; the pk op, torch's op and the FP64 oracle each run on them."""

    kernel: str
    build: Callable
    pk_op: Callable
    torch_op: Callable
    oracle: Callable


class ErrorSizes(NamedTuple):
    """Shapes of the rows: rows per call, softmax width, vocabulary, hidden size."""

    rows: int
    width: int
    vocab: int
    d: int


def _matmul(sizes):
    def build(sample, scale, g):
        return sample((sizes.rows, sizes.d), scale, g), sample((sizes.d, sizes.rows), 1.0, g)

    return [ErrorCase("matmul", build, pk.matmul, torch.matmul, reference.matmul)]


def _softmax(sizes):
    def build(sample, scale, g):
        return (sample((sizes.rows, sizes.width), scale, g),)

    return [ErrorCase("softmax", build, pk.softmax, lambda x: torch.softmax(x, -1), reference.softmax),
            ErrorCase("log_softmax", build, pk.log_softmax, lambda x: torch.log_softmax(x, -1), reference.log_softmax)]


def _rms_norm(sizes):
    def build(sample, scale, g):
        return sample((sizes.rows, sizes.d), scale, g), 1 + 0.1 * torch.randn(sizes.d, generator=g)

    def torch_rms_norm(x, w):
        return torch.nn.functional.rms_norm(x, (x.shape[-1],), w, eps=1e-6)

    return [ErrorCase("rms_norm", build, pk.rms_norm, torch_rms_norm, reference.rms_norm)]


def _layer_norm(sizes):
    def build(sample, scale, g):
        return (sample((sizes.rows, sizes.d), scale, g), 1 + 0.1 * torch.randn(sizes.d, generator=g),
                0.1 * torch.randn(sizes.d, generator=g))

    def torch_layer_norm(x, w, b):
        return torch.nn.functional.layer_norm(x, (x.shape[-1],), w, b, eps=1e-5)

    return [ErrorCase("layer_norm", build, pk.layer_norm, torch_layer_norm, reference.layer_norm)]


def _token_logprobs(sizes):
    def build(sample, scale, g):
        return sample((sizes.rows, sizes.vocab), scale, g), torch.randint(0, sizes.vocab, (sizes.rows,), generator=g)

    def torch_token_logprobs(logits, tokens):
        return torch.log_softmax(logits.float(), -1).gather(-1, tokens[:, None]).squeeze(-1)

    return [ErrorCase("token_logprobs", build, pk.token_logprobs, torch_token_logprobs, reference.token_logprobs)]


def _linear_logprobs(sizes):
    def build(sample, scale, g):
        h = sample((sizes.rows, sizes.d), scale, g)
        w = sample((sizes.vocab, sizes.d), 1.0 / math.sqrt(sizes.d), g)
        return h, w, torch.randint(0, sizes.vocab, (sizes.rows,), generator=g)

    def torch_linear_logprobs(h, w, tokens):
        return torch.log_softmax(torch.nn.functional.linear(h, w).float(), -1).gather(-1, tokens[:, None]).squeeze(-1)

    return [ErrorCase("linear_logprobs", build, pk.linear_logprobs, torch_linear_logprobs,
                      reference.linear_logprobs)]


def _scaled_mm(sizes):
    """scaled_mm as an e4m3fn x e4m3fn linear layer with row-wise scales: activations (rows, d) times a weight
    (4d, d), both quantised per row by ``quantize_fp8`` from the benchmark's rounded inputs, output in the input's
    dtype. pk, ``torch._scaled_mm`` and the oracle quantise the same values the same way, so they see the same fp8
    operands and scales; the oracle is the FP64 product of the dequantised operands."""
    e4 = torch.float8_e4m3fn

    def build(sample, scale, g):
        return sample((sizes.rows, sizes.d), scale, g), sample((4 * sizes.d, sizes.d), 1.0, g)

    def operands(x, w):
        (xq, sx), (wq, sw) = pk.quantize_fp8(x, e4, axis=-1), pk.quantize_fp8(w, e4, axis=-1)
        return xq, wq.t(), sx, sw.t()               # b column-major, as torch's CUDA op wants it

    def pk_op(x, w):
        return pk.scaled_mm(*operands(x, w), out_dtype=x.dtype)

    def torch_op(x, w):
        return torch._scaled_mm(*operands(x, w), out_dtype=x.dtype)

    def oracle(x, w):
        return reference.scaled_mm(*operands(x, w))

    return [ErrorCase("scaled_mm e4m3", build, pk_op, torch_op, oracle)]


# The table, in the rows' order: each function gives its op's rows at the given sizes.
ERROR_CASES = (_matmul, _softmax, _rms_norm, _layer_norm, _token_logprobs, _linear_logprobs, _scaled_mm)


def error_cases(sizes: ErrorSizes) -> list[ErrorCase]:
    return [case for rows in ERROR_CASES for case in rows(sizes)]


def _sample(shape, dist: str, scale: float, g: torch.Generator) -> torch.Tensor:
    """fp32 samples; heavy tails from a Student-t with 2 degrees of freedom (clipped to stay finite in fp16)."""
    if dist == "normal":
        x = torch.randn(shape, generator=g)
    elif dist == "heavy":
        z = torch.randn(shape, generator=g)
        chi2 = torch.randn(shape, generator=g) ** 2 + torch.randn(shape, generator=g) ** 2
        x = (z / torch.sqrt(chi2 / 2)).clamp(-50, 50)
    else:
        raise ValueError(dist)
    return x * scale


def _cases(quick: bool):
    """(kernel, distribution label, input builder, pk op, torch op, oracle): every row of ``ERROR_CASES``, per
    distribution."""
    rows = 64 if quick else 256
    sizes = ErrorSizes(rows=rows, width=1024 if quick else 4096, vocab=2048 if quick else 8192, d=256)
    table = error_cases(sizes)
    cases = []
    for dist, scale, label in (("normal", 1.0, "N(0,1)"), ("heavy", 1.0, "t2"), ("normal", 10.0, "N(0,10^2)")):
        def sample(shape, s, g, dist=dist):
            return _sample(shape, dist, s, g)

        cases += [(c.kernel, label, functools.partial(c.build, sample, scale), c.pk_op, c.torch_op, c.oracle)
                  for c in table]
    return cases


def _summary(out: torch.Tensor, ref: torch.Tensor) -> dict:
    s = numerics.error_summary(out, ref)
    if out.dtype == torch.float32:
        return {"max_abs_err": s["max_abs_err"], "max_rel_err": s["max_rel_err"]}
    return {k: s[k] for k in ("frac_correctly_rounded", "max_ulp", "mean_ulp")}


def run(quick: bool = False, seed: int = 0) -> list[dict]:
    records = []
    for kernel, dist, build, pk_op, torch_op, oracle in _cases(quick):
        for pname, dtype in DTYPES.items():
            g = torch.Generator().manual_seed(seed)
            args = build(g)
            # Round the float inputs once; every implementation and the oracle see these values.
            args = tuple(a.to(dtype) if a.is_floating_point() else a for a in args)
            ref = oracle(*args)
            for impl, op in (("pk", pk_op), ("torch", torch_op)):
                out = op(*args)
                records.append({"kernel": kernel, "dist": dist, "precision": pname, "impl": impl,
                                "out_dtype": str(out.dtype).removeprefix("torch."), **_summary(out, ref)})
    return records


def format_table(records: list[dict]) -> str:
    lines = [f"{'kernel':<16} {'inputs':<10} {'prec':<5} {'impl':<6} "
             f"{'correctly rounded':>17} {'max ulp':>8} {'mean ulp':>9} {'max abs err':>12} {'max rel err':>12}"]
    for r in records:
        if "frac_correctly_rounded" in r:
            cols = f"{r['frac_correctly_rounded']:>16.2%} {r['max_ulp']:>8.0f} {r['mean_ulp']:>9.4f} {'':>12} {'':>12}"
        else:
            cols = f"{'':>17} {'':>8} {'':>9} {r['max_abs_err']:>12.3g} {r['max_rel_err']:>12.3g}"
        lines.append(f"{r['kernel']:<16} {r['dist']:<10} {r['precision']:<5} {r['impl']:<6} {cols}")
    return "\n".join(lines)


def plot(records: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    rounded = [r for r in records if "frac_correctly_rounded" in r and r["dist"] == "N(0,1)"]
    labels = sorted({(r["kernel"], r["precision"]) for r in rounded})
    x = range(len(labels))
    for offset, impl in ((-0.2, "pk"), (0.2, "torch")):
        vals = [next(r["mean_ulp"] for r in rounded if (r["kernel"], r["precision"]) == lab and r["impl"] == impl)
                for lab in labels]
        axes[0].bar([i + offset for i in x], vals, width=0.4, label=impl)
    axes[0].set_xticks(list(x), [f"{k}\n{p}" for k, p in labels], fontsize=7)
    axes[0].set_ylabel("mean ulp from correctly rounded FP64")
    axes[0].set_title("16-bit outputs, N(0,1) inputs")
    axes[0].legend()
    fp32 = [r for r in records if "max_abs_err" in r and r["kernel"] in ("token_logprobs", "linear_logprobs")]
    labels = sorted({(r["kernel"], r["precision"], r["dist"]) for r in fp32})
    x = range(len(labels))
    for offset, impl in ((-0.2, "pk"), (0.2, "torch")):
        vals = [max(1e-12, next(r["max_abs_err"] for r in fp32
                                if (r["kernel"], r["precision"], r["dist"]) == lab and r["impl"] == impl))
                for lab in labels]
        axes[1].bar([i + offset for i in x], vals, width=0.4, label=impl)
    axes[1].set_yscale("log")
    axes[1].set_xticks(list(x), [f"{k[:5]}\n{p}\n{d}" for k, p, d in labels], fontsize=6)
    axes[1].set_ylabel("max |error| of fp32 log-prob")
    axes[1].set_title("log-prob outputs (fp32)")
    axes[1].legend()
    fig.tight_layout()
    write_figure(fig, path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--png", metavar="PATH", default=DEFAULT_PNG,
                        help=f'the plot (default {DEFAULT_PNG}; "" for none); an existing file is refused '
                             f'unless --force')
    parser.add_argument("--force", action="store_true", help="replace an existing --png file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:  # the output paths are checked before the measurement, not after it
        prepare_json_path(args.json)
        prepare_output_path(args.png, "--png", replace=args.force)
    except OutputExistsError as e:
        parser.error(f"{e} (--force replaces it)")
    except OutputPathError as e:
        parser.error(str(e))
    records = run(args.quick, args.seed)
    print(format_table(records))
    if args.json:
        write_json(records, args.json)
    if args.png:
        plot(records, args.png)
        print(f"plot: {args.png}")


if __name__ == "__main__":
    main()

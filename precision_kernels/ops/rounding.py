"""pk.round_to: owned round-to-nearest-even downcast (invariant I4); custom op ``pk::round_to(x, dtype)``."""

from __future__ import annotations

import torch
import triton

from .. import backend
from ..kernels.rounding import round_to_kernel
from ._common import check_device, kind, launch
from ._custom import op_name, require

# Elements per program: one tile op is one numpy call under the interpreter, so its
# programs are made large; on GPU a 1024-wide block keeps every SM busy.
_BLOCK = 1 << 16 if backend.INTERPRETED else 1024


# ---- custom op (pattern: ops/_custom.py) ----------------------------------------------------


@torch.library.custom_op(op_name("round_to"), mutates_args=())
def _round_to_op(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """fp32 x -> dtype (fp16 or bf16), round to nearest even; a new contiguous tensor of x's shape."""
    require(x.dtype == torch.float32 and dtype in (torch.float16, torch.bfloat16), "round_to",
            f"rounds float32 to float16 or bfloat16, got {x.dtype} -> {dtype}")
    # The kernel walks a flat buffer, so strided input is copied once here.
    flat = x.contiguous()
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    n = flat.numel()
    if n:
        launch(round_to_kernel, (triton.cdiv(n, _BLOCK),), flat, out.view(torch.int16), n,
               OUT_KIND=kind(dtype), BLOCK=_BLOCK)
    return out


@_round_to_op.register_fake
def _(x, dtype):
    return x.new_empty(x.shape, dtype=dtype)


def _backward(ctx, grad):
    # Straight-through: rounding is treated as the identity, gradient kept in fp32 (no kernel).
    return grad.to(torch.float32), None


_round_to_op.register_autograd(_backward)


def round_to(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Round an fp32 tensor to ``dtype`` (fp16, bf16 or fp32) with round-to-nearest-even.

    Bitwise equal to ``x.to(dtype)`` for every non-NaN input; NaN becomes a quiet
    NaN with its sign kept. The backward passes the gradient straight through, as fp32.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.float32:
        raise TypeError(f"round_to expects a float32 input x, got {x.dtype}")
    check_device("x", x)
    if dtype == torch.float32:
        return x
    if dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"dtype must be torch.float16, torch.bfloat16 or torch.float32, got {dtype}")
    return torch.ops.pk.round_to(x, dtype)


# ---- registration (ops/registry.py) ----------------------------------------------------------


def _compile_kernels(table: dict) -> None:
    from .. import compile_registry

    compile_registry.register(table, "round_to", round_to_kernel,
                              signature={"x_ptr": "*fp32", "out_ptr": "*i16", "n_elements": "i64"},
                              configs=[{"OUT_KIND": 1, "BLOCK": 1024}, {"OUT_KIND": 2, "BLOCK": 1024}])


def reference_round_to(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The exact value to be rounded: the FP64 copy of x (error_summary does the single rounding)."""
    return x.detach().to(torch.float64)


def _samples(dtype, rows, n, k, seed):
    from ._samples import DEV
    from .registry import Sample

    g = torch.Generator().manual_seed(seed)
    # wide exponent range: subnormal results, ties, overflow to inf (fp32 input whatever dtype is)
    x = torch.randn(rows, n, generator=g) * torch.exp2(torch.randint(-30, 20, (rows, n), generator=g).float())
    return [Sample("round_to", lambda x: (round_to(x, torch.float16), round_to(x, torch.bfloat16)), (x.to(DEV),))]


def _opcheck():
    from ._samples import BF16, F16, rand
    from .registry import OpcheckCase

    ops = torch.ops.pk
    return [OpcheckCase("round_to/bf16", ops.round_to, (rand(3, 5, grad=True), BF16)),
            OpcheckCase("round_to/fp16", ops.round_to, (rand(2, 3, 5, grad=True), F16))]


def _bad_inputs():
    from ._samples import BF16, F16, F32, meta, rand
    from .registry import MatchesTorch, Raises

    X, ops = (lambda: rand(3, 4)), torch.ops.pk
    return [
        Raises("round_to/None", lambda: round_to(None, BF16), TypeError, "x must be a torch.Tensor"),
        Raises("round_to/dtype", lambda: round_to(X().half(), BF16), TypeError, "float32 input x"),
        Raises("round_to/target", lambda: round_to(X(), torch.int8), TypeError, "dtype must be"),
        Raises("round_to/device", lambda: round_to(meta(3, 4), BF16), ValueError, "x is on meta"),
        Raises("pk::round_to/dtype", lambda: ops.round_to(rand(3), F32), ValueError, "pk::round_to"),
        Raises("pk::round_to/input", lambda: ops.round_to(rand(3, dtype=F16), BF16), ValueError, "pk::round_to"),
        MatchesTorch("round_to", lambda: round_to(rand(0, 3), BF16), lambda: torch.empty(0, 3, dtype=BF16)),
    ]


def _register() -> None:
    from .registry import OpFamily, register_family

    register_family(OpFamily(
        name="rounding",
        public=("round_to",),
        custom_ops=("pk::round_to",),
        kernels=(round_to_kernel,),
        compile_kernels=_compile_kernels,
        reference={"round_to": reference_round_to},
        samples=_samples,
        opcheck=_opcheck,
        bad_inputs=_bad_inputs,
    ))


_register()

"""The products in matched mode: ``mm``, ``bmm``, ``mv``, ``dot`` and ``addmm``, with their ``out=`` and in-place forms.

* ``mm``, ``bmm``, ``mv``, ``dot`` -> ``pk.matmul``; ``addmm`` with ``beta == alpha == 1`` and a
  bias of shape (N,) or (1, N) -> ``pk.linear`` (bias added in fp32 before the one rounding); with a
  full (M, N) input -> that input plus ``mm``'s result (one torch add, so ``add(c, mm(a, b))`` bit for
  bit). ``matmul``/``linear``/``einsum`` decompose into these before dispatch.
* Their ``out=`` forms (``mm.out``, ``bmm.out``, ``mv.out``, ``dot.out``, ``addmm.out``) and ``addmm_``
  write the functional form's result into the given tensor. Libraries that tile a product into a
  buffer use them: TRL's fused LM head runs ``torch.mm(h, w.t(), out=tile)`` and ``acc.addmm_(a, b)``.

Arguments torch would reject, or that pk lacks, raise ``Decline``: torch runs the op and its errors stay its own.
"""

from __future__ import annotations

import torch

from ..ops import linear as pk_linear
from ..ops import matmul
from ._common import Decline, check_tensors


def _check_product(a: torch.Tensor, b: torch.Tensor, a_dims: int, b_dims: int) -> None:
    """Arguments torch would reject (or pk lacks) go back to torch, which raises its own error."""
    check_tensors(a, b)
    if a.dtype != b.dtype:
        raise Decline(f"dtypes differ: {a.dtype} and {b.dtype}")
    if a.dim() != a_dims or b.dim() != b_dims:
        raise Decline(f"shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[-1] != b.shape[0 if b_dims == 1 else -2] or (a_dims == 3 and a.shape[0] != b.shape[0]):
        raise Decline(f"shapes {tuple(a.shape)} and {tuple(b.shape)} do not multiply")


def _mm(a, b):
    _check_product(a, b, 2, 2)
    return matmul(a, b)


def _bmm(a, b):
    _check_product(a, b, 3, 3)
    return matmul(a, b)


def _mv(a, v):
    _check_product(a, v, 2, 1)
    return matmul(a, v.reshape(-1, 1)).reshape(a.shape[0])


def _dot(a, b):
    _check_product(a, b, 1, 1)
    return matmul(a.reshape(1, -1), b.reshape(-1, 1)).reshape(())


def _addmm(c, a, b, *, beta=1, alpha=1):
    """``c + a @ b``: a bias ``c`` of shape (N,) or (1, N) fused into ``pk.linear``; a full (M, N) ``c`` added
    to ``mm``'s result as torch adds (so it is ``add(c, mm(a, b))`` bit for bit)."""
    if beta != 1 or alpha != 1:
        raise Decline(f"addmm with beta={beta}, alpha={alpha} (pk serves beta == alpha == 1)")
    _check_product(a, b, 2, 2)
    check_tensors(c)
    if not (c.dtype == a.dtype == b.dtype):
        raise Decline(f"addmm dtypes differ: {c.dtype}, {a.dtype}, {b.dtype}")
    n = b.shape[-1]
    if tuple(c.shape) in ((n,), (1, n)):
        return pk_linear(a, b.mT, c.reshape(n))
    if tuple(c.shape) == (a.shape[0], n):
        return c + matmul(a, b)
    raise Decline(f"addmm input of shape {tuple(c.shape)} is neither a bias ({n},) nor the result's "
                  f"({a.shape[0]}, {n})")


def _into(out: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
    """Write ``result`` into an ``out=`` tensor: the functional form's bits in the caller's tensor (its strides kept).

    The result is computed before ``out`` is written, so an ``out`` that aliases an input changes nothing.
    An empty ``out`` is resized as torch resizes it; any other shape or dtype goes back to torch.
    """
    if out.dtype != result.dtype or out.device != result.device:
        raise Decline(f"out= tensor {out.dtype} on {out.device} for a {result.dtype} result on {result.device}")
    if out.shape != result.shape:
        if out.numel():
            raise Decline(f"out= tensor of shape {tuple(out.shape)} for a result of shape {tuple(result.shape)}")
        out.resize_(result.shape)
    return out.copy_(result)


def _mm_out(a, b, *, out):
    return _into(out, _mm(a, b))


def _bmm_out(a, b, *, out):
    return _into(out, _bmm(a, b))


def _mv_out(a, v, *, out):
    return _into(out, _mv(a, v))


def _dot_out(a, b, *, out):
    return _into(out, _dot(a, b))


def _addmm_out(c, a, b, *, beta=1, alpha=1, out):
    return _into(out, _addmm(c, a, b, beta=beta, alpha=alpha))


def _addmm_in_place(c, a, b, *, beta=1, alpha=1):
    result = _addmm(c, a, b, beta=beta, alpha=alpha)
    if result.shape != c.shape:
        raise Decline(f"addmm_ into a tensor of shape {tuple(c.shape)} (the result has {tuple(result.shape)})")
    return c.copy_(result)


PRODUCT_HANDLERS = {
    "aten.mm.default": _mm,
    "aten.bmm.default": _bmm,
    "aten.mv.default": _mv,
    "aten.dot.default": _dot,
    "aten.addmm.default": _addmm,
    "aten.mm.out": _mm_out,
    "aten.bmm.out": _bmm_out,
    "aten.mv.out": _mv_out,
    "aten.dot.out": _dot_out,
    "aten.addmm.out": _addmm_out,
    "aten.addmm_.default": _addmm_in_place,
}

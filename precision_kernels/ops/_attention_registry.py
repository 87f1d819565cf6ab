"""pk.attention's registry record: the compile-table entries, the FP64 reference, samples, opcheck cases and
bad-input rows. Kept apart from ops/attention.py so the op module holds only the checks, launches, custom ops
and autograd; the functions here reach the op through the module at call time (the op module imports this
one while it is still loading)."""

from __future__ import annotations

import importlib
import math

import torch

from .. import compile_registry, profiles
from ..kernels.attention import attention_fwd_kernel
from ..kernels.attention_backward import attention_bwd_dkdv_kernel, attention_bwd_dq_kernel
from ..reference import fp32_scalar
from . import _samples as S
from .registry import MatchesTorch, OpcheckCase, Raises, Sample

# the op module itself (the package attribute ``ops.attention`` is the public function)
A = importlib.import_module(".attention", __package__)


def _compile_configs(name: str, kind_: int, kernel: str) -> list[dict]:
    variants = (dict(MASK=A._MASK_NONE, CAUSAL=True, HAS_KS=False), dict(MASK=A._MASK_BOOL, CAUSAL=False, HAS_KS=True))
    out = []
    for head_dim in (8, 64, 128):
        cfg = profiles.attention_config_for("cuda", name, kernel, items=1, rows=1, keys=1, head_dim=head_dim)
        block_m, block_n = (cfg.block_m_bwd, cfg.block_n_bwd) if kernel == "dkdv" else (cfg.block_m, cfg.block_n)
        for variant in variants:
            out.append({"KIND": kind_, **({"SPLIT": False} if kernel == "fwd" else {"DO_KIND": kind_}), "MASK_KIND": 0,
                        "NATIVE_DOT": True, "BLOCK_ITEMS": 1, "BLOCK_M": block_m, "BLOCK_N": block_n,
                        "BLOCK_D": cfg.block_d, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages, **variant})
    return out


def compile_kernels(table: dict) -> None:
    """Forward, dq and dk/dv per format, each with (no mask, causal) and (bool mask, key_start, not causal), at
    the CUDA table's tiles for head dims 8 (TinyGPT's, padded to 16; first, so make test compiles it), 64, 128."""
    qkvm = {f"stride_{t}{a}": "i32" for t in "qkv" for a in "bhtd"} | {f"stride_m{a}": "i32" for a in "bhtk"}
    stats = {"max_ptr": "*fp32", "sum_ptr": "*fp32"}
    do = {f"stride_do{a}": "i32" for a in "bhtd"}
    for name, kind_, ptr in compile_registry.FORMATS:
        common = {"q_ptr": ptr, "k_ptr": ptr, "v_ptr": ptr, "mask_ptr": "*u8", "ks_ptr": "*i64", "H": "i32",
                  "GROUP": "i32", "Tq": "i32", "Tk": "i32", "D": "i32", "ks_min": "i32", "scale": "fp32"}
        compile_registry.register(
            table, f"attention_fwd_{name}", attention_fwd_kernel,
            signature={**common, "o_ptr": ptr, "lse_ptr": "*fp32", **stats, "n_items": "i32", "split_keys": "i32",
                       **qkvm},
            configs=_compile_configs(name, kind_, "fwd"), expects_mma=kind_ != 0)
        compile_registry.register(
            table, f"attention_bwd_dq_{name}", attention_bwd_dq_kernel,
            signature={**common, "do_ptr": ptr, **stats, "delta_ptr": "*fp32", "dq_ptr": ptr,
                       "n_items": "i32", **qkvm, **do},
            configs=_compile_configs(name, kind_, "dq"), expects_mma=kind_ != 0)
        compile_registry.register(
            table, f"attention_bwd_dkdv_{name}", attention_bwd_dkdv_kernel,
            signature={**common, "do_ptr": ptr, **stats, "delta_ptr": "*fp32", "dk_ptr": ptr,
                       "dv_ptr": ptr, "org_ptr": "*i64", "n_kv_items": "i32", "HKV": "i32", "qb_hi": "i32",
                       "shift_min": "i32", **qkvm, **do},
            configs=_compile_configs(name, kind_, "dkdv"), expects_mma=kind_ != 0)


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
                        scale: float | None = None, attn_mask: torch.Tensor | None = None,
                        key_start: torch.Tensor | None = None) -> torch.Tensor:
    """FP64 attention with pk.attention's semantics (bottom-right causal, GQA, masks, key_start, empty rows give
    0) on the same rounded inputs; the scale is first rounded to fp32, as the kernel uses it. Differentiable."""
    b, h, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    scale = fp32_scalar(1.0 / math.sqrt(d) if scale is None else scale)
    q64 = q.to(torch.float64)
    k64 = k.to(torch.float64).repeat_interleave(h // hkv, dim=1)
    v64 = v.to(torch.float64).repeat_interleave(h // hkv, dim=1)
    s = q64 @ k64.transpose(-1, -2) * scale
    keys = torch.arange(tk, device=q.device)
    live = torch.ones((b, h, tq, tk), dtype=torch.bool, device=q.device)
    if causal:
        live = live & (keys[None, :] <= (tk - tq) + torch.arange(tq, device=q.device)[:, None])
    if key_start is not None:
        live = live & (keys[None, None, None, :] >= key_start[:, None, None, None])
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            live = live & attn_mask
        else:
            s = s + attn_mask.to(torch.float64)
    s = s.masked_fill(~live, float("-inf"))
    empty = (s == float("-inf")).all(-1, keepdim=True)
    p = torch.softmax(s.masked_fill(empty, 0.0), -1).masked_fill(empty, 0.0)
    return p @ v64


def samples(dtype, rows, n, k, seed):
    g = torch.Generator().manual_seed(seed)
    t, d = max(rows, 1), max(min(n, 64), 1)
    q, kk, v = S.leaf((2, 4, t, d), dtype, g), S.leaf((2, 2, t, d), dtype, g), S.leaf((2, 2, t, d), dtype, g)
    return [Sample("attention", A.attention, (q, kk, v))]


def row_samples(dtype, rows, n, seed):
    # the output and dq: each query row's own (dk and dv sum over the query rows)
    g = torch.Generator().manual_seed(seed)
    d = max(min(n, 64), 1)
    q, k, v = S.leaf((1, 2, rows, d), dtype, g), S.leaf((1, 1, rows, d), dtype, g), S.leaf((1, 1, rows, d), dtype, g)
    out = A.attention(q, k.detach(), v.detach())
    return [out, torch.autograd.grad(out, q, S.leaf(out.shape, dtype, g).detach())[0]]


def opcheck():
    r, ops = S.rand, torch.ops.pk
    q, k, v = r(2, 4, 5, 8, grad=True), r(2, 2, 9, 8, seed=1, grad=True), r(2, 2, 9, 8, seed=2, grad=True)
    qb = r(1, 2, 3, 16, dtype=S.BF16)
    kb, vb = r(1, 1, 7, 16, dtype=S.BF16, seed=1), r(1, 1, 7, 16, dtype=S.BF16, seed=2)
    starts, keep = S.ids(0, 3), torch.rand(2, 1, 5, 9, generator=torch.Generator().manual_seed(3)).to(S.DEV) > 0.3
    qn, kn, vn = S.no_grad(q, k, v)
    _, _, stats = S.no_grad(*ops.attention(qn, kn, vn, keep, starts, True, 0.35))
    table = profiles.table_backend()
    return [
        OpcheckCase("attention", ops.attention, (q, k, v, None, None, True, 0.35)),
        OpcheckCase("attention/mask+key_start", ops.attention, (q, k, v, keep, starts, False, 0.35)),
        OpcheckCase("attention/bf16 additive mask", ops.attention,
                    (qb, kb, vb, r(1, 1, 3, 7, dtype=S.BF16, seed=4), None, True, 0.25)),
        OpcheckCase("attention_backward", ops.attention_backward,
                    (r(2, 4, 5, 8, seed=5), qn, kn, vn, stats, keep, starts, True, 0.35, table)),
    ]


def bad_inputs():
    r, F = S.rand, torch.nn.functional

    def qkv(h=2, hkv=1, tq=3, tk=5, d=8, dtype=S.F32):
        return r(2, h, tq, d, dtype=dtype), r(2, hkv, tk, d, dtype=dtype, seed=1), r(2, hkv, tk, d, dtype=dtype, seed=2)

    q, k, v = qkv()
    return [
        Raises("attention/None q", lambda: A.attention(None, k, v), TypeError, "q must be a torch.Tensor"),
        Raises("attention/int k", lambda: A.attention(q, k.int(), v), TypeError, "k must be float32"),
        Raises("attention/dtype mix", lambda: A.attention(q, k.half(), v), TypeError, "dtype mismatch"),
        Raises("attention/device", lambda: A.attention(q, k, S.meta(2, 1, 5, 8)), ValueError, "v is on meta"),
        Raises("attention/3-D q", lambda: A.attention(q[0], k, v), ValueError, "q must be 4-D"),
        Raises("attention/k v shapes", lambda: A.attention(q, k, v[:, :, :4]), ValueError, "same shape"),
        Raises("attention/batch", lambda: A.attention(q[:1], k, v), ValueError, "batch sizes differ"),
        Raises("attention/head dim", lambda: A.attention(q[..., :4], k, v), ValueError, "head dims differ"),
        Raises("attention/H % Hkv", lambda: A.attention(*qkv(h=3, hkv=2)), ValueError, "multiple of"),
        Raises("attention/D=0", lambda: A.attention(*qkv(d=0)), ValueError, r"D must be in \[1, 256\]"),
        Raises("attention/D=257", lambda: A.attention(*qkv(d=257)), ValueError, r"D must be in \[1, 256\]"),
        Raises("attention/causal", lambda: A.attention(q, k, v, causal=1), TypeError, "causal must be a bool"),
        Raises("attention/scale nan", lambda: A.attention(q, k, v, scale=S.NAN), ValueError, "scale must be"),
        Raises("attention/scale str", lambda: A.attention(q, k, v, scale="x"), TypeError, "scale"),
        Raises("attention/mask type", lambda: A.attention(q, k, v, attn_mask=[1]), TypeError, "attn_mask must be"),
        Raises("attention/mask dtype", lambda: A.attention(q, k, v, attn_mask=torch.ones(3, 5, dtype=torch.int32)),
               TypeError, "attn_mask must be bool"),
        Raises("attention/mask shape", lambda: A.attention(q, k, v, attn_mask=torch.ones(3, 4, dtype=torch.bool)),
               ValueError, "does not broadcast"),
        Raises("attention/mask 5-D", lambda: A.attention(q, k, v, attn_mask=torch.ones(1, 2, 2, 3, 5).bool()),
               ValueError, "does not broadcast"),
        Raises("attention/mask grad", lambda: A.attention(q, k, v, attn_mask=r(3, 5, grad=True)), ValueError,
               "attn_mask must not require grad"),
        Raises("attention/key_start dtype", lambda: A.attention(q, k, v, key_start=S.ids(0, 1).int()), TypeError,
               "key_start must be int64"),
        Raises("attention/key_start shape", lambda: A.attention(q, k, v, key_start=S.ids(0)), ValueError,
               "key_start must have shape"),
        Raises("attention/key_start float", lambda: A.attention(q, k, v, key_start=r(2)), TypeError,
               "key_start must be int64"),
        Raises("attention/key_start < 0", lambda: A.attention(q, k, v, key_start=S.ids(0, -1)), ValueError,
               r"key_start holds -1, outside \[0, Tk\]"),
        Raises("attention/key_start > Tk", lambda: A.attention(q, k, v, key_start=S.ids(6, 0)), ValueError,
               r"key_start holds 6, outside \[0, Tk\]"),
        Raises("pk::attention/layout", lambda: torch.ops.pk.attention(q, k[:1], v[:1], None, None, True, 0.3),
               ValueError, "pk::attention"),
        MatchesTorch("attention Tq=0", lambda: A.attention(*qkv(tq=0)),
                     lambda: F.scaled_dot_product_attention(*qkv(tq=0, hkv=2))),
        MatchesTorch("attention B*H=0", lambda: A.attention(r(0, 2, 3, 8), r(0, 1, 5, 8), r(0, 1, 5, 8)),
                     lambda: F.scaled_dot_product_attention(r(0, 2, 3, 8), r(0, 2, 5, 8), r(0, 2, 5, 8))),
    ]

"""pk.attention: fused, batch-invariant scaled dot-product attention with a KV-cache-friendly causal rule.

``attention(q, k, v, *, causal=True, scale=None, attn_mask=None, key_start=None)`` (DESIGN.md section 8):

* q is (B, H, Tq, D), k and v are (B, Hkv, Tk, D) with H a multiple of Hkv (grouped-query attention:
  query head h reads key/value head h // (H / Hkv)); 1 <= D <= 256. The output is (B, H, Tq, D) in
  the inputs' dtype (fp32, fp16 or bf16, one dtype for q, k and v).
* ``causal`` aligns **bottom-right** (query t sits at key position Tk - Tq + t), so a decode step (Tq = 1) sees
  the whole cache and a chunk of queries against a longer cache gets the rows of the full pass; torch's SDPA
  ``is_causal`` aligns top-left (the two agree when Tq == Tk).
* ``attn_mask`` (bool, True = attend, or additive fp32/fp16/bf16 added in fp32 to the scaled scores,
  broadcastable to (B, H, Tq, Tk)) gets no gradient. ``scale`` (default 1 / sqrt(D)) is used as its float32
  value. A row with no key to attend (everything masked, or Tk == 0) gives 0, as torch's SDPA does.
* ``key_start`` (int64 (B,), in [0, Tk]), each batch row's first real key: keys before it are masked and key
  blocks are counted from it, so a left-padded row gives the bits of the same row unpadded. The backward counts
  each (batch, head)'s query blocks from its first row that attends a key (``_query_origins``), so an item padded
  with masked keys (leading, or anywhere by the mask) and dead rows gets the item's gradients, causal or not.

Numerics: kernels/attention.py and DESIGN.md section 8. The forward stores each row's score max and exponential
sum (and log-sum-exp, for SDPA's callers), from which the backward recomputes P, in the matched profile on the
forward's tile table; no (Tq x Tk) buffer, no atomics. An engine profile's split-KV
(``profiles.attention_splits_for``: decode steps) rounds each key chunk's partial output to the compute dtype and
merges the chunks by their log-sum-exps (flash-decoding). ``_form`` picks each kernel's interpreter or compiled form.

Custom ops (ops/_custom.py): ``pk::attention(q, k, v, attn_mask, key_start, causal, scale) -> (out, lse, stats)``
and ``pk::attention_backward``.
"""

from __future__ import annotations

import math

import torch
import triton

from .. import compile_registry, profiles
from ..kernels.attention import attention_fwd_compiled_kernel, attention_fwd_kernel, check_block_offsets
from ..kernels.attention_backward import (
    attention_bwd_dkdv_compiled_kernel,
    attention_bwd_dkdv_kernel,
    attention_bwd_dq_compiled_kernel,
    attention_bwd_dq_kernel,
)
from ..reference import fp32_scalar
from ._common import (
    check_device,
    check_float,
    check_fp32_real,
    check_same_dtype,
    kernel_form,
    kernel_view,
    kind,
    launch,
)
from ._custom import fp32_value, op_name, require
from .registry import OpFamily, register_family

MAX_HEAD_DIM = 256
_MASK_NONE, _MASK_BOOL, _MASK_ADD = 0, 1, 2


# ---- argument checks (metadata only) ----------------------------------------------------------


def _check_qkv(q, k, v) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_float(name, t)
    check_same_dtype(q=q, k=k, v=v)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"attention: {name} must be 4-D ({'B, H, Tq, D' if name == 'q' else 'B, Hkv, Tk, D'}), "
                             f"got shape {tuple(t.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"attention: k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape")
    (b, h, _, d), (bk, hkv, _, dk) = q.shape, k.shape
    if bk != b:
        raise ValueError(f"attention: batch sizes differ: q {tuple(q.shape)}, k {tuple(k.shape)}")
    if dk != d:
        raise ValueError(f"attention: head dims differ: q {tuple(q.shape)} (D={d}), k {tuple(k.shape)} (D={dk})")
    if not 1 <= d <= MAX_HEAD_DIM:
        raise ValueError(f"attention: head dim D must be in [1, {MAX_HEAD_DIM}], got {d}")
    if hkv == 0 or h % hkv != 0:
        raise ValueError(f"attention: q's heads H={h} must be a multiple of k/v's heads Hkv={hkv} "
                         f"(grouped-query attention)")


def _check_mask(attn_mask, q, k) -> None:
    if attn_mask is None:
        return
    if not isinstance(attn_mask, torch.Tensor):
        raise TypeError(f"attention: attn_mask must be a torch.Tensor or None, got {type(attn_mask).__name__}")
    if attn_mask.dtype != torch.bool and attn_mask.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"attention: attn_mask must be bool (True = attend) or an additive float32/float16/bfloat16 "
                        f"mask, got {attn_mask.dtype}")
    check_device("attn_mask", attn_mask)
    full = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    shape = tuple(attn_mask.shape)
    if len(shape) > 4 or any(m not in (1, f) for m, f in zip(shape[::-1], full[::-1])):
        raise ValueError(f"attention: attn_mask of shape {shape} does not broadcast to (B, H, Tq, Tk) = {full}")
    if attn_mask.requires_grad:
        raise ValueError("attention: attn_mask must not require grad (pk.attention computes no mask gradient)")


def _check_key_start(key_start, q) -> None:
    if key_start is None:
        return
    if not isinstance(key_start, torch.Tensor):
        raise TypeError(f"attention: key_start must be an int64 torch.Tensor or None, got {type(key_start).__name__}")
    if key_start.dtype != torch.int64:
        raise TypeError(f"attention: key_start must be int64, got {key_start.dtype}")
    check_device("key_start", key_start)
    if tuple(key_start.shape) != (q.shape[0],):
        raise ValueError(f"attention: key_start must have shape (B,) = ({q.shape[0]},), got {tuple(key_start.shape)}")


def _check_scale(scale, head_dim: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    return check_fp32_real("scale", scale)


# ---- launches -----------------------------------------------------------------------------------


def _mask_args(attn_mask, q, k):
    """(tensor the kernel reads, its 4 strides over (B, H, Tq, Tk), MASK code, MASK_KIND)."""
    if attn_mask is None:
        return kernel_view(q), (0, 0, 0, 0), _MASK_NONE, 0
    full = attn_mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    if attn_mask.dtype == torch.bool:
        return full.view(torch.uint8), full.stride(), _MASK_BOOL, 0
    return kernel_view(full), full.stride(), _MASK_ADD, kind(attn_mask.dtype)


def _key_start_bounds(key_start, batch: int, tk: int) -> tuple[int, int]:
    """(min, max) of key_start, after checking every value lies in [0, Tk] (read here, before any kernel)."""
    if key_start is None or batch == 0:
        return 0, 0
    lo, hi = int(key_start.min()), int(key_start.max())
    if lo < 0 or hi > tk:
        bad = lo if lo < 0 else hi
        raise ValueError(f"attention: key_start holds {bad}, outside [0, Tk] = [0, {tk}]")
    return lo, hi


def _layout_checks(op: str, q, k, v, attn_mask, key_start) -> None:
    require(q.dim() == 4 and k.dim() == 4 and k.shape == v.shape and q.shape[0] == k.shape[0]
            and q.shape[3] == k.shape[3] and 1 <= q.shape[3] <= MAX_HEAD_DIM and k.shape[1] > 0
            and q.shape[1] % k.shape[1] == 0 and q.dtype == k.dtype == v.dtype, op,
            f"q {tuple(q.shape)} {q.dtype}, k {tuple(k.shape)} {k.dtype}, v {tuple(v.shape)} {v.dtype} are not "
            f"(B, H, Tq, D), (B, Hkv, Tk, D) x2 of one dtype with H % Hkv == 0 and 1 <= D <= {MAX_HEAD_DIM}")
    if attn_mask is not None:
        full = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        shape = tuple(attn_mask.shape)
        require(len(shape) <= 4 and all(m in (1, f) for m, f in zip(shape[::-1], full[::-1])), op,
                f"attn_mask {shape} does not broadcast to {full}")
    if key_start is not None:
        require(key_start.dtype == torch.int64 and tuple(key_start.shape) == (q.shape[0],), op,
                f"key_start must be int64 of shape ({q.shape[0]},), got {key_start.dtype} {tuple(key_start.shape)}")


def _form(interpreted, compiled, cfg):
    """(the form ``kernel_form`` picks, (batch, head) items per program, its item-tile constexprs)."""
    kernel = kernel_form(interpreted, compiled)
    return (kernel, cfg.block_items, {"BLOCK_ITEMS": cfg.block_items}) if kernel is interpreted else (kernel, 1, {})


def _common_args(q, k, v, attn_mask, key_start):
    m_view, m_strides, mask_code, mask_kind = _mask_args(attn_mask, q, k)
    ks = key_start if key_start is not None else torch.zeros(1, dtype=torch.int64, device=q.device)
    strides = (*q.stride(), *k.stride(), *v.stride(), *m_strides)
    return m_view, ks, strides, dict(MASK=mask_code, MASK_KIND=mask_kind, HAS_KS=key_start is not None)


def _forward(q, k, v, attn_mask, key_start, causal: bool, scale: float):
    b, h, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    out = torch.empty((b, h, tq, d), dtype=q.dtype, device=q.device)
    lse = torch.empty((b, h, tq), dtype=torch.float32, device=q.device)
    stats = torch.empty((2, b, h, tq), dtype=torch.float32, device=q.device)
    ks_min, _ = _key_start_bounds(key_start, b, tk)
    items = b * h
    if items == 0 or tq == 0:
        return out, lse, stats
    cfg = profiles.attention_config(q.dtype, "fwd", items=items, rows=tq, keys=tk, head_dim=d)
    kernel, block_items, item_tile = _form(attention_fwd_kernel, attention_fwd_compiled_kernel, cfg)
    chunks, split_keys, block_n = profiles.attention_forward_split(
        items, tq, tk - ks_min, cfg.block_n, whole_tiles=kernel is attention_fwd_compiled_kernel)
    m_view, ks, strides, flags = _common_args(q, k, v, attn_mask, key_start)
    if kernel is attention_fwd_compiled_kernel:
        check_block_offsets(strides, cfg.block_m, block_n, cfg.block_d)
    grid = (triton.cdiv(items, block_items) * triton.cdiv(tq, cfg.block_m),)
    launch(kernel, grid,
           kernel_view(q), kernel_view(k), kernel_view(v), m_view, ks, kernel_view(out), lse, stats[0], stats[1],
           items, h, h // hkv, tq, tk, d, ks_min, scale, split_keys, *strides,
           config=cfg, KIND=kind(q.dtype), CAUSAL=causal, **flags, **item_tile,
           BLOCK_M=cfg.block_m, BLOCK_N=block_n, BLOCK_D=cfg.block_d, SPLIT=chunks > 1)
    return out, lse, stats


def _query_origins(attn_mask, key_start, b: int, h: int, tq: int, tk: int, causal: bool, device) -> torch.Tensor:
    """(B * H,) int64: each item's first query row that attends a key (Tq where none does), from the same
    predicate as the kernels' (keys in [key_start, Tk), the bottom-right causal rule, the mask). dk and dv sum
    their query blocks from it: a padded row before it attends nothing, and a masked key or a padded row anywhere
    moves no real row into another block, so the gradients of an item equal those of the item padded."""
    keys = torch.arange(tk, device=device)
    starts = key_start.view(b, 1, 1, 1) if key_start is not None else torch.zeros(1, 1, 1, 1, dtype=torch.int64,
                                                                                   device=device)
    live = keys >= starts                                                          # (B or 1, 1, 1, Tk)
    if attn_mask is not None:
        live = live & (attn_mask if attn_mask.dtype == torch.bool else attn_mask != float("-inf"))
    while live.dim() < 4:
        live = live.unsqueeze(0)
    first_key = torch.where(live.any(-1), live.to(torch.int8).argmax(-1), tk)    # (Bm, Hm, Tq or 1)
    if causal:
        row_live = first_key <= (tk - tq) + torch.arange(tq, device=device)
    else:
        row_live = first_key < tk
    row_live = row_live.expand(b, h, tq)
    return torch.where(row_live.any(-1), row_live.to(torch.int8).argmax(-1), tq).reshape(b * h).contiguous()


def _backward(dout, q, k, v, stats, attn_mask, key_start, causal: bool, scale: float):
    b, h, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    ks_min, ks_max = _key_start_bounds(key_start, b, tk)
    if b == 0 or h == 0:
        return dq, dk, dv
    m_view, ks, strides, flags = _common_args(q, k, v, attn_mask, key_start)
    do_strides = dout.stride()
    common = dict(KIND=kind(q.dtype), DO_KIND=kind(dout.dtype), CAUSAL=causal, **flags)
    delta = torch.empty((b, h, tq), dtype=torch.float32, device=q.device)
    if tq:
        cfg = profiles.attention_config(q.dtype, "dq", items=b * h, rows=tq, keys=tk, head_dim=d)
        kernel, block_items, item_tile = _form(attention_bwd_dq_kernel, attention_bwd_dq_compiled_kernel, cfg)
        grid = (triton.cdiv(b * h, block_items) * triton.cdiv(tq, cfg.block_m),)
        launch(kernel, grid,
               kernel_view(q), kernel_view(k), kernel_view(v), m_view, ks, kernel_view(dout), stats[0], stats[1], delta,
               kernel_view(dq), b * h, h, h // hkv, tq, tk, d, ks_min, scale, *strides, *do_strides,
               config=cfg, **common, **item_tile, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=cfg.block_d)
    else:
        dq.zero_()
    cfg = profiles.attention_config(q.dtype, "dkdv", items=b * hkv, rows=tq, keys=tk - ks_min, head_dim=d)
    kernel, block_items, item_tile = _form(attention_bwd_dkdv_kernel, attention_bwd_dkdv_compiled_kernel, cfg)
    grid = (triton.cdiv(b * hkv, block_items) * triton.cdiv(tk - ks_min, cfg.block_n_bwd),)
    if math.prod(grid) == 0 or dk.numel() == 0 or tq == 0:
        dk.zero_()
        dv.zero_()
        return dq, dk, dv
    origins = _query_origins(attn_mask, key_start, b, h, tq, tk, causal, q.device)
    # one read for both host bounds: the first origin, and how far before a key its first seeing row can lie
    shift = (key_start.view(b, 1) if key_start is not None else 0) - (tk - tq) - origins.view(b, h)
    org_min, shift_min = torch.stack([origins.min(), shift.min()]).tolist()
    qb_hi = triton.cdiv(tq - org_min, cfg.block_m_bwd)
    if ks_max > 0:
        # a row's keys before its first real key are not visited; their gradient is 0
        dk.zero_()
        dv.zero_()
    launch(kernel, grid,
           kernel_view(q), kernel_view(k), kernel_view(v), m_view, ks, origins, kernel_view(dout), stats[0], stats[1],
           delta, kernel_view(dk), kernel_view(dv), b * hkv, h, hkv, h // hkv, tq, tk, d, ks_min, scale, qb_hi,
           shift_min, *strides, *do_strides, config=cfg, **common, **item_tile,
           BLOCK_M=cfg.block_m_bwd, BLOCK_N=cfg.block_n_bwd, BLOCK_D=cfg.block_d)
    return dq, dk, dv


# ---- custom ops (pattern: ops/_custom.py) ---------------------------------------------------------


@torch.library.custom_op(op_name("attention"), mutates_args=())
def _attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None,
                  key_start: torch.Tensor | None, causal: bool,
                  scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scale + mask) v -> (out (B, H, Tq, D), lse (B, H, Tq) fp32, stats (2, B, H, Tq) fp32: each
    row's score max and exponential sum, the backward's statistics), in the active profile's tiles."""
    _layout_checks("attention", q, k, v, attn_mask, key_start)
    scale = check_fp32_real("scale", scale)
    return _forward(q, k, v, attn_mask, key_start, causal, fp32_value(scale))


@_attention_op.register_fake
def _(q, k, v, attn_mask, key_start, causal, scale):
    b, h, tq, d = q.shape
    return (q.new_empty((b, h, tq, d)), q.new_empty((b, h, tq), dtype=torch.float32),
            q.new_empty((2, b, h, tq), dtype=torch.float32))


@torch.library.custom_op(op_name("attention_backward"), mutates_args=())
def _attention_backward_op(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           stats: torch.Tensor, attn_mask: torch.Tensor | None,
                           key_start: torch.Tensor | None, causal: bool, scale: float,
                           table: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of ``pk::attention`` from the forward's stats (P is recomputed), in the matched profile on
    tile table ``table``."""
    _layout_checks("attention_backward", q, k, v, attn_mask, key_start)
    require(dout.shape == q.shape and tuple(stats.shape) == (2, *q.shape[:3]) and stats.dtype == torch.float32
            and dout.dtype in (torch.float32, torch.float16, torch.bfloat16), "attention_backward",
            f"dout {tuple(dout.shape)} {dout.dtype} and stats {tuple(stats.shape)} {stats.dtype} do not match "
            f"q {tuple(q.shape)}")
    scale = check_fp32_real("scale", scale)
    with profiles.use_profile("matched"), profiles.config_backend(table):
        return _backward(dout, q, k, v, stats.contiguous(), attn_mask, key_start, causal, fp32_value(scale))


@_attention_backward_op.register_fake
def _(dout, q, k, v, stats, attn_mask, key_start, causal, scale, table):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format))


def _setup_context(ctx, inputs, output):
    q, k, v, attn_mask, key_start, causal, scale = inputs
    _, lse, stats = output
    ctx.save_for_backward(q, k, v, stats, attn_mask, key_start)
    ctx.causal = causal
    ctx.scale = scale
    ctx.table = profiles.table_backend()
    ctx.mark_non_differentiable(lse, stats)


def _attention_backward(ctx, dout, _dlse, _dstats):
    q, k, v, stats, attn_mask, key_start = ctx.saved_tensors
    if ctx.needs_input_grad[3]:
        raise NotImplementedError("pk.attention computes no gradient for attn_mask")
    if dout is None:
        dout = torch.zeros_like(q)
    elif dout.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        dout = dout.to(torch.float32)
    dq, dk, dv = torch.ops.pk.attention_backward(dout, q, k, v, stats, attn_mask, key_start, ctx.causal, ctx.scale,
                                                 ctx.table)
    need_q, need_k, need_v = ctx.needs_input_grad[:3]
    return (dq if need_q else None), (dk if need_k else None), (dv if need_v else None), None, None, None, None


_attention_op.register_autograd(_attention_backward, setup_context=_setup_context)


# ---- public function ------------------------------------------------------------------------------


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True, scale: float | None = None,
              attn_mask: torch.Tensor | None = None, key_start: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v over (B, H, Tq, D) queries and (B, Hkv, Tk, D) keys/values.

    ``causal`` aligns bottom-right (query t at key position Tk - Tq + t; torch's SDPA ``is_causal`` aligns
    top-left). ``attn_mask``: bool (True = attend) or additive float, broadcastable to (B, H, Tq, Tk).
    ``key_start``: int64 (B,), each batch row's first real key (left padding); keys before it are masked
    and key blocks are counted from it, so a left-padded row equals the row unpadded bit for bit.
    ``scale`` defaults to 1 / sqrt(D). Rows with no key to attend give 0. Differentiable in q, k, v.
    See the module docstring for the numerics.
    """
    _check_qkv(q, k, v)
    if not isinstance(causal, bool):
        raise TypeError(f"attention: causal must be a bool, got {type(causal).__name__}")
    _check_mask(attn_mask, q, k)
    _check_key_start(key_start, q)
    s = _check_scale(scale, q.shape[3])
    return torch.ops.pk.attention(q, k, v, attn_mask, key_start, causal, s)[0]


# ---- registration (ops/registry.py) ----------------------------------------------------------------


def _compile_configs(name: str, kind_: int, kernel: str) -> list[dict]:
    variants = (dict(MASK=_MASK_NONE, CAUSAL=True, HAS_KS=False), dict(MASK=_MASK_BOOL, CAUSAL=False, HAS_KS=True))
    out = []
    for head_dim in (8, 64, 128):
        cfg = profiles.attention_config_for("cuda", name, kernel, items=1, rows=1, keys=1, head_dim=head_dim)
        block_m, block_n = (cfg.block_m_bwd, cfg.block_n_bwd) if kernel == "dkdv" else (cfg.block_m, cfg.block_n)
        # the forward also in the engine's split-KV form (same tiles: its chunks are whole key blocks)
        forms = ({"SPLIT": False}, {"SPLIT": True}) if kernel == "fwd" else ({"DO_KIND": kind_},)
        for form in forms:
            for variant in variants:
                out.append({"KIND": kind_, **form, "MASK_KIND": 0, "BLOCK_M": block_m, "BLOCK_N": block_n,
                            "BLOCK_D": cfg.block_d, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages,
                            **variant})
    return out


def _compile_kernels(table: dict) -> None:
    """Forward (matched and split-KV), dq and dk/dv per format, each with (no mask, causal) and (bool mask, key_start,
    not causal), at the CUDA table's tiles for head dims 8 (TinyGPT's, padded to 16; first, so make test compiles
    it), 64, 128; generic and as the JIT specialises a call on contiguous tensors."""
    qkvm = {f"stride_{t}{a}": "i32" for t in "qkv" for a in "bhtd"} | {f"stride_m{a}": "i32" for a in "bhtk"}
    stats = {"max_ptr": "*fp32", "sum_ptr": "*fp32"}
    do = {f"stride_do{a}": "i32" for a in "bhtd"}
    for name, kind_, ptr in compile_registry.FORMATS:
        common = {"q_ptr": ptr, "k_ptr": ptr, "v_ptr": ptr, "mask_ptr": "*u8", "ks_ptr": "*i64", "H": "i32",
                  "GROUP": "i32", "Tq": "i32", "Tk": "i32", "D": "i32", "ks_min": "i32", "scale": "fp32"}
        fwd = {**common, "o_ptr": ptr, "lse_ptr": "*fp32", **stats, "n_items": "i32", "split_keys": "i32", **qkvm}
        dq = {**common, "do_ptr": ptr, **stats, "delta_ptr": "*fp32", "dq_ptr": ptr, "n_items": "i32", **qkvm, **do}
        dkdv = {**common, "do_ptr": ptr, **stats, "delta_ptr": "*fp32", "dk_ptr": ptr, "dv_ptr": ptr,
                "org_ptr": "*i64", "n_kv_items": "i32", "HKV": "i32", "qb_hi": "i32", "shift_min": "i32", **qkvm, **do}
        for kernel, prefix, fn, signature in (("fwd", "fwd", attention_fwd_compiled_kernel, fwd),
                                              ("dq", "bwd_dq", attention_bwd_dq_compiled_kernel, dq),
                                              ("dkdv", "bwd_dkdv", attention_bwd_dkdv_compiled_kernel, dkdv)):
            compile_registry.register(table, f"attention_{prefix}_{name}", fn, signature=signature,
                                      configs=_compile_configs(name, kind_, kernel), expects_mma=kind_ != 0,
                                      calls=compile_registry.attention_calls(signature))


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


register_family(OpFamily(
    name="attention",
    public=("attention",),
    custom_ops=(op_name("attention"), op_name("attention_backward")),
    kernels=(attention_fwd_kernel, attention_fwd_compiled_kernel, attention_bwd_dq_kernel,
             attention_bwd_dq_compiled_kernel, attention_bwd_dkdv_kernel, attention_bwd_dkdv_compiled_kernel),
    forms=((attention_fwd_kernel, attention_fwd_compiled_kernel),
           (attention_bwd_dq_kernel, attention_bwd_dq_compiled_kernel),
           (attention_bwd_dkdv_kernel, attention_bwd_dkdv_compiled_kernel)),
    compile_kernels=_compile_kernels,
    reference={"attention": reference_attention},
    # torch's CPU SDPA, forward and backward: served together or not at all (matched/attention.py)
    aten=tuple(f"aten._scaled_dot_product_{op}{bwd}.default" for op in (
        "flash_attention_for_cpu", "flash_attention", "efficient_attention", "cudnn_attention")
        for bwd in ("", "_backward")),
))

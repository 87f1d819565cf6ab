"""pk.token_logprobs: fp32 log softmax(logits / T)[token], and optionally the entropy.

The kernel (kernels/token_logprobs.py, ``token_logprobs_fwd_kernel``) is written only with
the online log-sum-exp helpers that the fused LM-head kernel also uses, over vocab
blocks of ``row_config(dtype).block_cols`` in index order, so that under the
interpreter ``linear_logprobs(h, W, t)`` equals ``token_logprobs(linear(h, W), t)``
bitwise (invariant I5). The temperature is applied as ``float32(logit) / float32(T)``
inside the kernel.

A row whose logits are all -inf gives log-prob -inf, entropy 0 and a zero gradient; a row
with a NaN or +inf logit gives NaN (as torch's log_softmax does). Token ids are range-checked
inside the custom op's implementation (the check reads the data), before any kernel reads at them.

Custom ops (ops/_custom.py): ``pk::token_logprobs(logits2, tokens, temperature, with_entropy)
-> (logprob, entropy, row_max, row_sum)`` on rows and ``pk::token_logprobs_backward``.
"""

from __future__ import annotations

import torch
import triton

from .. import compile_registry, profiles
from ..kernels.token_logprobs import token_logprobs_bwd_kernel, token_logprobs_fwd_kernel
from ..reference import f64, fp32_scalar
from ._common import (
    check_float,
    check_temperature,
    check_token_ids,
    check_token_range,
    kernel_view,
    kind,
    launch,
    logprob_grad_inputs,
    logprob_outputs,
    validate_temperature,
)
from ._custom import fp32_value, op_name, require
from .registry import OpFamily, register_family
from .softmax import as_rows

# ---- custom ops (pattern: ops/_custom.py) ---------------------------------------------------


@torch.library.custom_op(op_name("token_logprobs"), mutates_args=())
def _token_logprobs_op(logits2: torch.Tensor, tokens: torch.Tensor, temperature: float,
                       with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of logits2 (rows, V), int64 ids (rows,) -> (logprob, entropy, row_max, row_sum), all fp32.

    entropy is empty without ``with_entropy``; row_max and row_sum feed the backward. The ids'
    range is checked here (it reads the data), before any kernel reads memory at them.
    """
    require(logits2.dim() == 2 and tuple(tokens.shape) == (logits2.shape[0],) and tokens.dtype == torch.int64,
            "token_logprobs", f"logits2 must be (rows, V) and tokens int64 (rows,), got {tuple(logits2.shape)} and "
            f"{tuple(tokens.shape)} {tokens.dtype}")
    logits2, tokens = as_rows(logits2), tokens.contiguous()
    rows, n = logits2.shape
    temperature = check_temperature(temperature)
    check_token_range("tokens", tokens, n)
    logprob, entropy, row_max, row_sum = logprob_outputs(rows, with_entropy, logits2.device)
    if rows:
        cfg = profiles.row_config(logits2.dtype, rows=rows)  # independent rows
        launch(token_logprobs_fwd_kernel, (triton.cdiv(rows, cfg.block_rows),),
               kernel_view(logits2), tokens, logprob, entropy if with_entropy else logprob, row_max, row_sum,
               rows, n, logits2.stride(0), temperature,
               config=cfg, KIND=kind(logits2.dtype), WITH_ENTROPY=with_entropy,
               BLOCK_ROWS=cfg.block_rows, BLOCK_COLS=cfg.block_cols)
    return logprob, entropy, row_max, row_sum


@_token_logprobs_op.register_fake
def _(logits2, tokens, temperature, with_entropy):
    return logprob_outputs(logits2.shape[0], with_entropy, logits2.device)


@torch.library.custom_op(op_name("token_logprobs_backward"), mutates_args=())
def _token_logprobs_backward_op(logits2: torch.Tensor, tokens: torch.Tensor, g_logprob: torch.Tensor,
                                g_entropy: torch.Tensor | None, entropy: torch.Tensor, row_max: torch.Tensor,
                                row_sum: torch.Tensor, temperature: float) -> torch.Tensor:
    """dlogits (the logits' dtype) from fp32 g_logprob (rows,) and, when not None, g_entropy (rows,)."""
    logits2, tokens = as_rows(logits2), tokens.contiguous()
    rows, n = logits2.shape
    g_logprob, g_entropy, has_g_entropy = logprob_grad_inputs(g_logprob, g_entropy)
    dlogits = torch.empty((rows, n), dtype=logits2.dtype, device=logits2.device)
    if rows and n:
        cfg = profiles.row_config(logits2.dtype, rows=rows)  # independent rows
        launch(token_logprobs_bwd_kernel, (triton.cdiv(rows, cfg.block_rows),),
               kernel_view(logits2), tokens, g_logprob, g_entropy, entropy if has_g_entropy else g_logprob,
               row_max, row_sum, kernel_view(dlogits), rows, n, logits2.stride(0), fp32_value(temperature),
               config=cfg, KIND=kind(logits2.dtype), HAS_G_ENTROPY=has_g_entropy,
               BLOCK_ROWS=cfg.block_rows, BLOCK_COLS=cfg.block_cols)
    return dlogits


@_token_logprobs_backward_op.register_fake
def _(logits2, tokens, g_logprob, g_entropy, entropy, row_max, row_sum, temperature):
    return logits2.new_empty(logits2.shape)


def _setup_context(ctx, inputs, output):
    logits2, tokens, temperature, with_entropy = inputs
    _, entropy, row_max, row_sum = output
    ctx.save_for_backward(logits2, tokens, row_max, row_sum, entropy)
    ctx.temperature, ctx.with_entropy = temperature, with_entropy
    # An output nobody differentiates arrives as None (not zeros), so its term is left out exactly.
    ctx.set_materialize_grads(False)


def _backward(ctx, g_logprob, g_entropy, _d_row_max, _d_row_sum):
    logits2, tokens, row_max, row_sum, entropy = ctx.saved_tensors
    if not ctx.with_entropy:
        g_entropy = None
    if g_logprob is None and g_entropy is None:
        return None, None, None, None
    if g_logprob is None:
        g_logprob = torch.zeros(logits2.shape[0], dtype=torch.float32, device=logits2.device)
    dlogits = torch.ops.pk.token_logprobs_backward(logits2, tokens, g_logprob, g_entropy, entropy, row_max, row_sum,
                                                   ctx.temperature)
    return dlogits, None, None, None


_token_logprobs_op.register_autograd(_backward, setup_context=_setup_context)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0,
                   return_entropy: bool = False):
    """log softmax(logits / T)[token] in fp32, shape ``logits.shape[:-1]``.

    logits: (..., V) fp32, fp16 or bf16; tokens: integer ids of shape (...), each in
    [0, V) (checked before any kernel runs: ``ValueError`` otherwise); temperature: a
    positive number, used as float32. With ``return_entropy=True`` also returns the
    fp32 entropy of the same distribution softmax(logits / T). Differentiable with
    respect to the logits (through both outputs); the gradient has the logits' dtype.
    """
    check_float("logits", logits)
    if logits.dim() == 0:
        raise ValueError("token_logprobs: logits must have a vocabulary dimension, got a 0-d tensor")
    vocab = logits.shape[-1]
    if vocab == 0:
        raise ValueError("token_logprobs: the vocabulary dimension of logits is empty")
    t = validate_temperature(temperature)       # comparisons only; the op rounds T to float32
    if not isinstance(return_entropy, bool):
        raise TypeError(f"return_entropy must be a bool, got {type(return_entropy).__name__}")
    ids = check_token_ids("tokens", tokens, logits.shape[:-1])
    logprob, entropy, _, _ = torch.ops.pk.token_logprobs(as_rows(logits), ids, t, return_entropy)
    lead = logits.shape[:-1]
    if return_entropy:
        return logprob.reshape(lead), entropy.reshape(lead)
    return logprob.reshape(lead)


# ---- registration (ops/registry.py) ----------------------------------------------------------


def _compile_kernels(table: dict) -> None:
    blocks = compile_registry.row_blocks()
    for suffix, ptr, kinds in compile_registry.ROW_FORMAT_GROUPS:
        compile_registry.register(
            table, f"token_logprobs_fwd{suffix}", token_logprobs_fwd_kernel,
            signature={"logits_ptr": ptr, "tokens_ptr": "*i64", "logprob_ptr": "*fp32", "entropy_ptr": "*fp32",
                       "max_ptr": "*fp32", "sum_ptr": "*fp32", "n_rows": "i32", "n_cols": "i32", "stride_l": "i32",
                       "temperature": "fp32"},
            configs=[{"KIND": k, "WITH_ENTROPY": e, **blocks} for k in kinds for e in (True, False)])
        compile_registry.register(
            table, f"token_logprobs_bwd{suffix}", token_logprobs_bwd_kernel,
            signature={"logits_ptr": ptr, "tokens_ptr": "*i64", "g_logprob_ptr": "*fp32", "g_entropy_ptr": "*fp32",
                       "entropy_ptr": "*fp32", "max_ptr": "*fp32", "sum_ptr": "*fp32", "dlogits_ptr": ptr,
                       "n_rows": "i32", "n_cols": "i32", "stride_l": "i32", "temperature": "fp32"},
            configs=[{"KIND": k, "HAS_G_ENTROPY": e, **blocks} for k in kinds for e in (True, False)])


def reference_token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0,
                             return_entropy: bool = False):
    """log softmax(logits / T)[token] in FP64; T is first rounded to fp32 as the kernels use it."""
    logp = torch.log_softmax(f64(logits) / fp32_scalar(temperature), dim=-1)
    chosen = logp.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)
    if not return_entropy:
        return chosen
    entropy = -(logp.exp() * torch.where(torch.isinf(logp), torch.zeros_like(logp), logp)).sum(-1)
    return chosen, entropy


register_family(OpFamily(
    name="token_logprobs",
    public=("token_logprobs",),
    custom_ops=("pk::token_logprobs", "pk::token_logprobs_backward"),
    kernels=(token_logprobs_fwd_kernel, token_logprobs_bwd_kernel),
    compile_kernels=_compile_kernels,
    reference={"token_logprobs": reference_token_logprobs},
))

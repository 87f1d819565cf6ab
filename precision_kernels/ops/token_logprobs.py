"""pk.token_logprobs: fp32 log softmax(logits / T)[token], and optionally the entropy.

The kernel (kernels/token_logprobs.py, ``token_logprobs_fwd_kernel``) is written only with
the online log-sum-exp helpers that the fused LM-head kernel also uses, over vocab
blocks of ``row_config(dtype).block_cols`` in index order, so that under the
interpreter ``linear_logprobs(h, W, t)`` equals ``token_logprobs(linear(h, W), t)``
bitwise (invariant I5). The temperature is applied as ``float32(logit) / float32(T)``
inside the kernel.

A row whose logits are all -inf gives log-prob -inf, entropy 0 and a zero gradient; a row
with a NaN or +inf logit gives NaN (as torch's log_softmax does). Token ids are range-checked
inside the autograd Function (the check reads the data), before any kernel reads at them.
"""

from __future__ import annotations

import torch
import triton
from torch.autograd.function import once_differentiable

from .. import profiles
from ..kernels.token_logprobs import token_logprobs_bwd_kernel, token_logprobs_fwd_kernel
from ._common import (
    check_float,
    check_temperature,
    check_token_ids,
    check_token_range,
    kernel_view,
    kind,
    launch,
    logprob_outputs,
)
from .softmax import as_rows


class _TokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits2: torch.Tensor, tokens: torch.Tensor, temperature: float, with_entropy: bool):
        rows, n = logits2.shape
        check_token_range("tokens", tokens, n)
        logprob, entropy, row_max, row_sum = logprob_outputs(rows, with_entropy, logits2.device)
        if rows:
            cfg = profiles.row_config(logits2.dtype)
            launch(token_logprobs_fwd_kernel, (triton.cdiv(rows, cfg.block_rows),),
                   kernel_view(logits2), tokens, logprob, entropy if with_entropy else logprob, row_max, row_sum,
                   rows, n, logits2.stride(0), temperature,
                   config=cfg, KIND=kind(logits2.dtype), WITH_ENTROPY=with_entropy,
                   BLOCK_ROWS=cfg.block_rows, BLOCK_COLS=cfg.block_cols)
        ctx.save_for_backward(logits2, tokens, row_max, row_sum, entropy)
        ctx.temperature, ctx.with_entropy = temperature, with_entropy
        ctx.set_materialize_grads(False)
        if with_entropy:
            return logprob, entropy
        return logprob

    @staticmethod
    @once_differentiable
    def backward(ctx, g_logprob, g_entropy=None):
        logits2, tokens, row_max, row_sum, entropy = ctx.saved_tensors
        rows, n = logits2.shape
        if g_logprob is None and g_entropy is None:
            return None, None, None, None
        dev = logits2.device
        g_logprob = (torch.zeros(rows, dtype=torch.float32, device=dev) if g_logprob is None
                     else g_logprob.to(torch.float32).contiguous())
        has_g_entropy = ctx.with_entropy and g_entropy is not None
        g_entropy = g_entropy.to(torch.float32).contiguous() if has_g_entropy else g_logprob
        dlogits = torch.empty((rows, n), dtype=logits2.dtype, device=dev)
        if rows and n:
            cfg = profiles.row_config(logits2.dtype)
            launch(token_logprobs_bwd_kernel, (triton.cdiv(rows, cfg.block_rows),),
                   kernel_view(logits2), tokens, g_logprob, g_entropy, entropy if has_g_entropy else g_logprob,
                   row_max, row_sum, kernel_view(dlogits), rows, n, logits2.stride(0), ctx.temperature,
                   config=cfg, KIND=kind(logits2.dtype), HAS_G_ENTROPY=has_g_entropy,
                   BLOCK_ROWS=cfg.block_rows, BLOCK_COLS=cfg.block_cols)
        return dlogits, None, None, None


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
    t32 = check_temperature(temperature)
    if not isinstance(return_entropy, bool):
        raise TypeError(f"return_entropy must be a bool, got {type(return_entropy).__name__}")
    ids = check_token_ids("tokens", tokens, logits.shape[:-1])
    out = _TokenLogprobs.apply(as_rows(logits), ids, t32, return_entropy)
    lead = logits.shape[:-1]
    if return_entropy:
        logprob, entropy = out
        return logprob.reshape(lead), entropy.reshape(lead)
    return out.reshape(lead)

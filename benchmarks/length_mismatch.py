"""Sequence-level mismatch against response length: the paper's offline figure, on real weights.

    python -m benchmarks.length_mismatch --model smollm2[:LAYERS] | tinygpt | hf:PATH
        [--lengths 32,64,128,256] [--responses 16] [--configs NAME,...] [--profile matched|engine]
        [--json PATH] [--png PREFIX] [--seed N]

Each configuration samples ``--responses`` responses of up to the longest length with its sampler; the
matched learner rescores every one of them at the configuration's learner precision. The kernel samplers
and the learner are the RL lab's own (``rl.sampler.generate``: the fused LM head's Gumbel-max draw with
keyed seeds; ``rl.learner.sequence_logprobs``), on TinyGPT or on an HF model as ``rl.hf_policy.HFPolicy``
(SDPA attention, every pass under ``pk.matched_mode()``); the plain-torch samplers are ``generate()`` with
no mode (HF, ``rl.hf.sample``) or ``rl.torch_model.generate`` (TinyGPT). Configurations (``CONFIGS``:
sampler precision, sampler mode, learner precision):

* ``engine-bf16``, ``engine-fp16``: an inference engine's kernels (``pk.use_profile("engine")``) against
  the matched learner of the same precision, the paper's setting;
* ``torch-fp32``, ``torch-bf16``: plain torch ``generate()`` with no mode (torch's fp16 matmul on a CPU is
  40-70x slower than bf16, so it is left out);
* ``bf16-rollout-fp32-learner``: the whole sampler model in bf16 (weights rounded from the fp32 masters),
  with ``--profile``, scored by an fp32 learner: the FP32-trainer / BF16-engine setup;
* ``matched-bf16``: the learner's own kernels and precision, which must give exactly 0 at every length.

HF models sample chat prompts that ask for long answers (or, with ``--long-task L``, the prompts of
``rl.train --task long --response-length L``) and stop at the tokenizer's EOS; TinyGPT (seeded,
random init, ``--vocab`` / ``--d-model`` / ``--tiny-layers`` / ``--heads``) samples random prompts to the full length.
With δ_t = log π − log μ of each sampled token (learner minus sampler), the figures (``rl.diagnostics``)
are, per configuration and length L, over the sequences that reach L and their first L tokens (the
cumulative log-ratio at L, as the paper's figure reads): mean and max |δ|, k3, ``clip_frac`` (tokens with
exp(δ) outside [0.8, 1.2], what PPO's ε = 0.2 clips), the sequence log-ratio Σδ (mean, population std) and
``ess_seq`` (ESS/N of exp(Σδ)); ``actual_length_bin`` holds the same figures of the whole sequences whose
actual length lies in (previous L, L]. Per configuration: the least-squares slope of the cumulative mean
log-ratio against position, in nats per 1,000 tokens, beside the per-token mean of δ times 1,000 (the same
quantity, −KL(μ‖π) per token, estimated from all tokens) and the per-token variance σ² of δ, from which
ESS/N ≈ exp(−L·σ²) predicts the weight collapse at a length L.

JSON (``--json``): a list of records, ``kind`` "length" (``config``, ``model``, ``sampler``, ``learner``,
``precision`` (the learner's, the run's --precision), ``profile`` (the sampler's: engine, matched or
torch), ``length``, the figures above) and ``kind`` "fit" (per configuration, ``slope_nats_per_1k`` ...,
``seconds`` and ``cpu_seconds`` of the configuration). The JSON and the plots are written after each
configuration, so a run cut short keeps the configurations it finished.
Plots (``--png PREFIX``): PREFIX_seq_logratio.png (the cumulative log-ratio against length, one line per
configuration) and PREFIX_token_probs.png (sampler p against learner p of every sampled token).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import torch

from benchmarks._output import OutputPathError, prepare_json_path, prepare_output_path, write_figure, write_json
from rl.diagnostics import cumulative_logratio, fit_slope, length_bin_figures, prefix_figures, token_figures

# name: (sampler precision, sampler mode, learner precision); mode "profile" is --profile.
CONFIGS = {
    "engine-bf16": ("bf16", "engine", "bf16"),
    "engine-fp16": ("fp16", "engine", "fp16"),
    "torch-fp32": ("fp32", "torch", "fp32"),
    "torch-bf16": ("bf16", "torch", "bf16"),
    "bf16-rollout-fp32-learner": ("bf16", "profile", "fp32"),
    "matched-bf16": ("bf16", "matched", "bf16"),
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PAPER_SLOPES = {"bf16": -1.01, "fp16": -0.07}  # nats per 1,000 tokens, the paper's offline figure
LONG_PROMPTS = (
    "Write a long, detailed essay about the history of the Roman Empire.",
    "Explain in detail how a car engine works, step by step.",
    "Tell me a long story about a dragon who learns to bake bread.",
    "Describe, in as much detail as you can, how to plan a vegetable garden.",
    "Write a detailed guide to learning a new programming language.",
    "Explain the water cycle thoroughly, with examples from different climates.",
    "Write a long letter to a friend describing a trip through the mountains.",
    "Describe the life cycle of a star from its birth to its death, in detail.",
    "Give a thorough explanation of how the internet works.",
    "Write a long, detailed recipe for a three-course dinner and explain each step.",
    "Explain the causes and consequences of the industrial revolution at length.",
    "Write a detailed description of a busy city market in the morning.",
    "Explain how vaccines work, in detail, for a curious teenager.",
    "Tell a long adventure story about sailors lost at sea.",
    "Describe in detail how to train for a first marathon.",
    "Write a thorough comparison of cats and dogs as pets.",
)


# ---- the models: each returns (mu, learner log-probs, mask), (B, N) ----------------------------------------

class TinyGPTSide:
    """A seeded random TinyGPT; its samplers are ``rl.sampler.generate`` (kernels) and ``rl.torch_model``."""

    def __init__(self, args, max_len: int) -> None:
        from rl.model import ModelConfig, TinyGPT

        self.prompt_len = 8
        self.cfg = ModelConfig(vocab_size=args.vocab, d_model=args.d_model, n_layers=args.tiny_layers,
                               n_heads=args.heads, max_seq_len=self.prompt_len + max_len)
        self.state = TinyGPT(self.cfg, seed=args.seed, init="torch").state_dict()
        g = torch.Generator().manual_seed(args.seed + 1)
        self.prompts = torch.randint(0, args.vocab, (args.responses, self.prompt_len), generator=g)
        self.label = f"tinygpt V={args.vocab} d={args.d_model} L={args.tiny_layers}"

    def _model(self, precision: str):
        from rl.model import ModelConfig, TinyGPT

        model = TinyGPT(ModelConfig(**{**self.cfg.__dict__, "precision": precision}))
        model.load_state_dict(self.state)
        return model

    def run(self, sampler: str, mode: str, learner: str, max_len: int, seed: int):
        from rl import torch_model
        from rl.learner import sequence_logprobs
        from rl.sampler import generate

        if mode == "torch":
            params = {k: v.to(DTYPES[sampler]) for k, v in self.state.items()}
            ro = torch_model.generate(params, self.cfg, self.prompts, max_len,
                                      generator=torch.Generator().manual_seed(seed))
        else:
            ro = generate(self._model(sampler), self.prompts, max_len, seed=seed, profile=mode)
        with torch.no_grad():
            scored = sequence_logprobs(self._model(learner), ro.tokens, self.prompt_len)
        return ro.logprobs, scored, ro.mask


class HFSide:
    """SmolLM2 (or its first LAYERS layers) or a local HF model as the RL lab's policy (``rl.hf_policy.HFPolicy``,
    SDPA attention): its kernel samplers are ``rl.sampler.generate``, its learner ``rl.learner.sequence_logprobs``
    under ``pk.matched_mode()``; the plain-torch sampler is ``generate()`` with no mode (``rl.hf.sample``)."""

    def __init__(self, args, max_len: int) -> None:
        from rl import hf

        self.base, tok = hf.load_model(hf.parse_model(args.model), args.seed, torch.device("cpu"),
                                       attn_implementation="sdpa")
        if tok is None:
            raise ValueError(f"--model {args.model}: the length benchmark needs a tokenizer beside the model")
        if args.long_task is not None:  # the prompts an rl.train --task long run of this seed draws from
            from rl.task_views import TextTask

            prompts = TextTask("long", tok, length=args.long_task).prompt_set(args.responses, args.seed,
                                                                            torch.device("cpu"))
            self.ids, self.mask = prompts.ids, prompts.mask
        else:
            texts = [LONG_PROMPTS[i % len(LONG_PROMPTS)] for i in range(args.responses)]
            self.ids, self.mask = hf.encode_prompts(tok, texts, chat=tok.chat_template is not None)
        self.eos = tok.eos_token_id
        self.pad = self.eos if tok.pad_token_id is None else tok.pad_token_id
        self.copies: dict[str, torch.nn.Module] = {}
        self.label = args.model

    def _policy(self, precision: str):
        from rl.hf_policy import HFPolicy

        return HFPolicy(self.base, precision)  # rounds the fp32 masters to precision on each pass

    def _torch_model(self, precision: str):
        # .to(bf16/fp16) rounds each fp32 master to nearest even, as pk.round_to does.
        if precision not in self.copies:
            self.copies[precision] = self.base if precision == "fp32" else copy.deepcopy(self.base).to(
                DTYPES[precision]).eval()
        return self.copies[precision]

    def run(self, sampler: str, mode: str, learner: str, max_len: int, seed: int):
        from rl import hf
        from rl.learner import sequence_logprobs
        from rl.sampler import generate

        P = self.ids.shape[1]
        if mode == "torch":
            s = hf.sample(self._torch_model(sampler), self.ids, self.mask, max_len, seed=seed,
                          stop_token_id=self.eos)
            tokens, mu, mask = s["tokens"], s["logp"], s["response_mask"]
        else:
            ro = generate(self._policy(sampler), self.ids, max_len, seed=seed, profile=mode, eos_id=self.eos,
                          pad_id=self.pad, prompt_mask=self.mask)
            tokens, mu, mask = ro
        policy = self._policy(learner)
        with torch.no_grad(), policy.numerics("matched"):
            scored = sequence_logprobs(policy, tokens, P, prompt_mask=self.mask)
        return mu, torch.where(mask, scored, torch.zeros_like(scored)), mask


# ---- measuring ---------------------------------------------------------------------------------------------

def measure(args, lengths: list[int], configs: list[str], progress=None, done=None) -> tuple[list[dict], dict]:
    """Every configuration's records; also the raw (mu, learner, mask) per configuration for the plots.

    ``done(records, raw)``, when given, is called with those so far after each configuration."""
    max_len = max(lengths)
    side = TinyGPTSide(args, max_len) if args.model == "tinygpt" else HFSide(args, max_len)
    records, raw = [], {}
    for name in configs:
        sampler, mode, learner = CONFIGS[name]
        mode = args.profile if mode == "profile" else mode
        if progress is not None:
            progress.set_postfix_str(name)
        t0, cpu0 = time.perf_counter(), time.process_time()
        mu, scored, mask = side.run(sampler, mode, learner, max_len, args.seed)
        mu, scored, mask = mu.float().cpu(), scored.float().cpu(), mask.bool().cpu()
        raw[name] = (mu, scored, mask)
        base = {"config": name, "model": side.label, "sampler": sampler, "learner": learner, "precision": learner,
                "profile": mode}
        low = 0
        for length in lengths:
            rec = {"kind": "length", **base, "length": length, **prefix_figures(scored, mu, mask, length)}
            rec["actual_length_bin"] = {"low": low, "high": length,
                                        **length_bin_figures(scored, mu, mask, low, length)}
            records.append(rec)
            low = length
        curve, reach = cumulative_logratio(scored, mu, mask)
        whole = token_figures(scored, mu, mask)
        records.append({"kind": "fit", **base, **fit_slope(curve, reach),
                        "token_mean_dlogp_per_1k": 1000.0 * whole["dlogp_mean"], "dlogp_var": whole["dlogp_var"],
                        "n_seqs": whole["n_seqs"], "n_tokens": whole["n_tokens"],
                        "mean_response_len": whole["n_tokens"] / max(whole["n_seqs"], 1),
                        "curve": curve, "reach": reach, "seconds": time.perf_counter() - t0,
                        "cpu_seconds": time.process_time() - cpu0})
        if progress is not None:
            progress.update()
        if done is not None:
            done(records, raw)
    return records, raw


def matched_zero(records: list[dict]) -> bool:
    """Whether every matched-bf16 length record is exactly 0 (no |δ|, no clipping, log-ratio 0, ESS 1)."""
    rows = [r for r in records if r["kind"] == "length" and r["profile"] == "matched" and r["sampler"] == r["learner"]
            and r["n_tokens"] > 0]
    return all(r["max_abs_dlogp"] == 0.0 and r["clip_frac"] == 0.0 and r["seq_logratio_mean"] == 0.0
               and r["seq_logratio_std"] == 0.0 and r["ess_seq"] == 1.0 for r in rows)


def format_table(records: list[dict]) -> str:
    lines = [f"{'config':<26} {'L':>4} {'seqs':>4} {'mean|dlogp|':>11} {'k3':>9} {'clip':>7} "
             f"{'seq logratio':>12} {'std':>8} {'ESS/N':>6}"]
    for r in records:
        if r["kind"] != "length":
            continue
        lines.append(f"{r['config']:<26} {r['length']:>4} {r['n_seqs']:>4} {r['mean_abs_dlogp']:>11.3g} "
                     f"{r['k3']:>9.2e} {r['clip_frac']:>7.2%} {r['seq_logratio_mean']:>12.4g} "
                     f"{r['seq_logratio_std']:>8.3g} {r['ess_seq']:>6.3f}")
    lines.append("")
    lines.append(f"{'config':<26} {'slope nats/1k':>13} {'r2':>5} {'1k*mean dlogp':>13} {'sigma2':>9} "
                 f"{'L for L*sigma2=1':>16} {'mean len':>8}")
    for r in records:
        if r["kind"] != "fit":
            continue
        var = r["dlogp_var"]
        horizon = f"{1 / var:>16.0f}" if var and var > 0 else f"{'inf':>16}"
        lines.append(f"{r['config']:<26} {r['slope_nats_per_1k']:>13.4g} {r['r2']:>5.2f} "
                     f"{r['token_mean_dlogp_per_1k']:>13.4g} {var:>9.2e} {horizon} {r['mean_response_len']:>8.1f}")
    return "\n".join(lines)


def slope_ratio_line(records: list[dict]) -> str:
    fits = {r["config"]: r["slope_nats_per_1k"] for r in records if r["kind"] == "fit"}
    if "engine-bf16" not in fits or "engine-fp16" not in fits:
        return ""
    bf, fp = fits["engine-bf16"], fits["engine-fp16"]
    ratio = bf / fp if fp else float("inf")
    paper = PAPER_SLOPES["bf16"] / PAPER_SLOPES["fp16"]
    return (f"engine slopes: bf16 {bf:.4g}, fp16 {fp:.4g} nats/1k tokens (ratio {ratio:.3g}); the paper: "
            f"bf16 {PAPER_SLOPES['bf16']}, fp16 {PAPER_SLOPES['fp16']} (ratio {paper:.3g})")


def plot(records: list[dict], raw: dict, prefix: str, title: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fits = [r for r in records if r["kind"] == "fit"]
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in fits:
        xs = [t + 1 for t, n in enumerate(r["reach"]) if n >= 2]
        ax.plot(xs, [r["curve"][x - 1] for x in xs], label=f"{r['config']} ({r['slope_nats_per_1k']:.3g} nats/1k)")
    ax.set_xlabel("response position t (sequences that reach t)")
    ax.set_ylabel("mean cumulative log(pi / mu)  [nats]")
    ax.set_title(f"{title}: sequence log-ratio against length")
    ax.axhline(0, color="grey", lw=0.5)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths = [f"{prefix}_seq_logratio.png"]
    write_figure(fig, paths[0], dpi=110)
    plt.close(fig)
    cols = min(3, len(raw))
    rows = -(-len(raw) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.6 * rows), squeeze=False)
    for ax, (name, (mu, scored, mask)) in zip(axes.flat, raw.items()):
        p_mu, p_pi = mu[mask].double().exp(), scored[mask].double().exp()
        low = float(torch.cat([p_mu, p_pi]).clamp_min(1e-30).min()) if p_mu.numel() else 1e-6
        ax.scatter(p_mu, p_pi, s=2, alpha=0.4)
        ax.plot([low, 1], [low, 1], color="grey", lw=0.5)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("sampler p (log)")
        ax.set_ylabel("learner p (log)")
    for ax in list(axes.flat)[len(raw):]:
        ax.axis("off")
    fig.tight_layout()
    paths.append(f"{prefix}_token_probs.png")
    write_figure(fig, paths[1], dpi=110)
    plt.close(fig)
    return paths


def write_outputs(args, records: list[dict], raw: dict) -> list[str]:
    """The JSON and the plots of the configurations measured so far (written after each one, so a run cut
    short keeps the configurations it finished)."""
    paths = [str(write_json(records, args.json))] if args.json else []
    if args.png:
        paths += plot(records, raw, args.png, records[0]["model"])
    return paths


def _lengths(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lengths must be comma-separated ints, got {text!r}") from None
    if not values or any(v < 1 for v in values) or values != sorted(set(values)):
        raise argparse.ArgumentTypeError(f"--lengths must be increasing ints >= 1, got {text!r}")
    return values


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2:2", help="smollm2[:LAYERS], tinygpt or hf:PATH")
    parser.add_argument("--lengths", type=_lengths, default=[32, 64, 128, 256])
    parser.add_argument("--responses", type=int, default=16, help="responses per configuration")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, from {', '.join(CONFIGS)}")
    parser.add_argument("--profile", default="matched", choices=["matched", "engine"],
                        help="the bf16-rollout-fp32-learner sampler's profile (the run's --profile)")
    parser.add_argument("--vocab", type=int, default=256, help="tinygpt: vocabulary size")
    parser.add_argument("--d-model", type=int, default=64, help="tinygpt: width")
    parser.add_argument("--tiny-layers", type=int, default=2, help="tinygpt: layers")
    parser.add_argument("--heads", type=int, default=2, help="tinygpt: attention heads (dividing --d-model)")
    parser.add_argument("--long-task", type=int, default=None, metavar="L",
                        help="HF models: the prompts of rl.train --task long --response-length L (the first "
                             "--responses of --seed's prompt set) instead of the essay prompts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--png", metavar="PREFIX", help="write PREFIX_seq_logratio.png and PREFIX_token_probs.png")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    configs = args.configs.split(",")
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown or len(set(configs)) != len(configs):
        parser.error(f"--configs must name distinct configurations from {', '.join(CONFIGS)}, got {args.configs!r}")
    m = args.model
    cut = m[8:] if m.startswith("smollm2:") else ""
    if not (m == "tinygpt" or m == "smollm2" or (cut.isascii() and cut.isdigit() and 1 <= int(cut) <= 30)
            or (m.startswith("hf:") and len(m) > 3)):
        parser.error(f"--model must be smollm2, smollm2:LAYERS (1-30), tinygpt or hf:PATH, got {m!r}")
    if m.startswith("hf:"):
        from rl.hf_config import refuse_remote_code

        try:  # the directory's own code never runs (every load passes trust_remote_code=False too)
            refuse_remote_code(m[3:], m)
        except ValueError as e:
            parser.error(str(e))
    for flag, value in (("--responses", args.responses), ("--vocab", args.vocab), ("--d-model", args.d_model),
                        ("--tiny-layers", args.tiny_layers), ("--heads", args.heads)):
        if value < 1:
            parser.error(f"{flag} must be >= 1, got {value}")
    if args.long_task is not None and (m == "tinygpt" or not 32 <= args.long_task <= 256):
        parser.error(f"--long-task takes a response length in [32, 256] with an HF model, got {args.long_task} "
                     f"with --model {m}")
    if args.d_model % args.heads:
        parser.error(f"--d-model must be divisible by --heads {args.heads}, got {args.d_model}")
    try:
        prepare_json_path(args.json)
        if args.png:
            for suffix in ("_seq_logratio.png", "_token_probs.png"):
                prepare_output_path(args.png + suffix, "--png")
    except OutputPathError as e:
        parser.error(str(e))
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    with tqdm(total=len(configs), desc=f"{m} configs", unit="config", file=sys.stderr,
              disable=args.no_progress) as bar:
        records, raw = measure(args, args.lengths, configs, bar, done=lambda r, raw: write_outputs(args, r, raw))
    print(f"{records[0]['model']}: {args.responses} responses per configuration, up to {max(args.lengths)} tokens, "
          f"temperature 1, learner matched; bf16-rollout-fp32-learner sampler profile {args.profile}")
    print(format_table(records))
    line = slope_ratio_line(records)
    if line:
        print(line)
    zero = matched_zero(records)
    print(f"matched rows exactly zero at every length: {zero}   ({time.perf_counter() - t0:.1f}s)")
    written = ([args.json] if args.json else []) + (
        [args.png + s for s in ("_seq_logratio.png", "_token_probs.png")] if args.png else [])
    if written:  # by the last configuration's write_outputs
        print("written: " + ", ".join(written))
    return 0 if zero else 1


if __name__ == "__main__":
    raise SystemExit(main())

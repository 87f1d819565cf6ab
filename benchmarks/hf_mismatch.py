"""Hugging Face generate() vs one teacher-forced forward, with and without pk.matched_mode().

    python -m benchmarks.hf_mismatch [--model llama|qwen3|gpt2|llama-odd|all] [--json PATH]

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
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch

import precision_kernels as pk
from rl.metrics import bitwise_differ, mismatch_metrics

MODELS = ("llama", "qwen3", "gpt2", "llama-odd")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
VOCAB = 96


def build_model(name: str, dtype: torch.dtype, seed: int = 0):
    """A tiny random-init causal LM with eager attention, in ``dtype``, on the backend's device.

    llama: 2 layers, hidden 64, 4 heads, 2 KV heads; qwen3: the same with q/k norms;
    gpt2: LayerNorm and Conv1D (addmm); llama-odd: hidden 72, intermediate 200
    (widths that are not multiples of 16).
    """
    import transformers as tf

    common = dict(vocab_size=VOCAB, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if name == "llama":
        cls, cfg = tf.LlamaForCausalLM, tf.LlamaConfig(hidden_size=64, intermediate_size=128, **common)
    elif name == "llama-odd":
        cls, cfg = tf.LlamaForCausalLM, tf.LlamaConfig(hidden_size=72, intermediate_size=200, **common)
    elif name == "qwen3":
        cls, cfg = tf.Qwen3ForCausalLM, tf.Qwen3Config(hidden_size=64, intermediate_size=128, head_dim=16,
                                                       **common)
    elif name == "gpt2":
        cls, cfg = tf.GPT2LMHeadModel, tf.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4,
                                                     n_positions=64, bos_token_id=1, eos_token_id=2)
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


def format_table(rows: list[dict]) -> str:
    lines = [f"{'model':<10} {'precision':<9} {'mode':<8} {'mean|dlogp|':>11} {'max|dlogp|':>10} "
             f"{'tok differ':>10} {'k1':>10} {'k3 (KL)':>10} {'seq k3':>10} {'relRMS lp':>10} {'p99|dp|':>9} "
             f"{'alone!=batch':>12} {'seconds':>7}"]
    for r in rows:
        lines.append(f"{r['model']:<10} {r['precision']:<9} {r['mode']:<8} {r['mean_abs_dlogp']:>11.3g} "
                     f"{r['max_abs_dlogp']:>10.3g} {r['frac_tokens_differ']:>10.2%} {r['k1']:>10.2e} "
                     f"{r['k3']:>10.2e} {r['seq_k3']:>10.2e} {r['rel_rms_logp']:>10.3g} {r['dp_p99']:>9.2e} "
                     f"{r['alone_vs_batch_logits_differ']:>12.2%} {r['seconds']:>7.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=(*MODELS, "all"), default="llama")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=15)
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    names = MODELS if args.model == "all" else (args.model,)
    rows = [measure(n, prec, matched, batch=args.batch, prompt_len=args.prompt_len,
                    max_new_tokens=args.max_new_tokens, seed=args.seed)
            for n in names for prec in PRECISIONS for matched in (False, True)]
    print(f"{args.batch} prompts of {args.prompt_len} tokens, {args.max_new_tokens} sampled tokens each, "
          f"temperature 1; "
          f"generate() log-probs (KV cache) vs one forward over prompt + response")
    print(format_table(rows))
    matched_rows = [r for r in rows if r["mode"] == "matched"]
    uncovered = sorted({op for r in matched_rows for op in r["uncovered_ops"]})
    zero = not uncovered and all(r["frac_tokens_differ"] == 0 and r["alone_vs_batch_logits_differ"] == 0
                                 for r in matched_rows)
    print(f"matched rows exactly zero, nothing uncovered: {zero}; uncovered ops under matched_mode(audit=True): "
          f"{', '.join(uncovered) or 'none'}   ({time.perf_counter() - t0:.1f}s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0 if zero else 1


if __name__ == "__main__":
    raise SystemExit(main())

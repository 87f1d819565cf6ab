"""A supervised warm-up of a SmolLM2 cut on the long task's chat form, saved as an HF model directory.

    python -m benchmarks.warm_long_chat --model smollm2:LAYERS --length L --out DIR [--force]
        [--period 4] [--target 0.3] [--high 0.8] [--lr 3e-4] [--batch 16] [--max-steps 400] [--eval-every 5] [--seed 0]

A cut of SmolLM2 (and even all 30 layers) earns about 0 on ``--task long`` in words (it does not repeat
the pattern), so every advantage is 0 and an RL run has nothing to learn from. ``rl.train`` warms up only
TinyGPT; this gives an HF model the same start: teacher-forced cross-entropy on the task's right answers
(the pattern repeated, then EOS), in plain torch fp32 (on the GPU when there is one), until the mean
partial reward of responses sampled at temperature 1 (plain torch ``generate()``, the run's first
``--eval-prompts`` prompts of seed 0) reaches ``--target``. A window that jumps above ``--high`` is
undone and retried at half the learning rate, so the start lies in the paper's band of 0.2-0.8. The
warm-up's problems come from another seed than the runs'.

The model and tokenizer go to ``DIR`` (``save_pretrained``: ``rl.train --model hf:DIR`` and
``benchmarks.length_mismatch --model hf:DIR`` read it), with ``DIR/warmup.json``: the score after each window.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

import torch

from rl import hf
from rl.output_paths import write_output
from rl.task_views import TextTask

WARMUP_PROBLEM_SEED = 10_000  # the warm-up's own problems, apart from the runs' (seeds 0, 1, 2, ...)


def sampled_score(model, task: TextTask, prompts, seed: int) -> float:
    """Mean partial reward of one response per prompt, sampled at T = 1 by plain torch ``generate()``."""
    s = hf.sample(model, prompts.ids, prompts.mask, task.max_new_tokens, seed=seed, stop_token_id=task.eos_id)
    responses = s["tokens"][:, s["prompt_len"]:]
    return float(task.reward(prompts, responses, s["response_mask"], partial=True).mean())


def teacher_batch(task: TextTask, prompts, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompt + answer + EOS of each row, right-padded: ``(ids, attention mask, labels)`` (labels −100 off
    the answer)."""
    tok, seqs, labels = task.tokenizer, [], []
    for r in rows:
        prompt = prompts.ids[r][prompts.mask[r].bool()].tolist()
        answer = tok(prompts.answers[r], add_special_tokens=False)["input_ids"] + [task.eos_id]
        seqs.append(prompt + answer)
        labels.append([-100] * len(prompt) + answer)
    width = max(len(s) for s in seqs)
    ids = torch.tensor([s + [task.pad_id] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    lab = torch.tensor([x + [-100] * (width - len(x)) for x in labels])
    return ids, mask, lab


def warm(args, log=print) -> dict:
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tok = hf.load_model(hf.parse_model(args.model), args.seed, device, attn_implementation="sdpa")
    task = TextTask("long", tok, length=args.length, period=args.period)
    pool = task.prompt_set(512, WARMUP_PROBLEM_SEED + args.seed, torch.device("cpu"))
    held = task.prompt_set(args.eval_prompts, 0, device)  # the runs' first prompts (rl.train seed 0)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(args.seed)
    history = [{"step": 0, "score": sampled_score(model, task, held, args.seed), "lr": args.lr}]
    log(f"step 0: sampled mean reward {history[-1]['score']:.3f}")
    step, lr, t0 = 0, args.lr, time.perf_counter()
    while history[-1]["score"] < args.target and step < args.max_steps:
        saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
        model.train()
        for _ in range(args.eval_every):
            rows = torch.randint(0, len(pool), (args.batch,), generator=g).tolist()
            ids, mask, lab = teacher_batch(task, pool, rows)
            loss = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=lab.to(device)).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        score = sampled_score(model, task, held, args.seed)
        if score > args.high and lr > args.lr / 64:  # overshot the band: undo the window, retry more gently
            model.load_state_dict(saved[0])
            opt.load_state_dict(saved[1])
            lr /= 2
            for group in opt.param_groups:
                group["lr"] = lr
            log(f"step {step + args.eval_every}: {score:.3f} above {args.high}, undone; lr {lr:.2g}")
            continue
        step += args.eval_every
        history.append({"step": step, "score": score, "loss": float(loss.detach()), "lr": lr})
        log(f"step {step}: loss {history[-1]['loss']:.3f}, sampled mean reward {score:.3f} "
            f"({time.perf_counter() - t0:.0f} s)")
    os.makedirs(args.out, exist_ok=True)
    # A GGUF load keeps its quantizer, and save_pretrained refuses it; the weights are plain fp32 by now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(args.out, safe_serialization=True)
    tok.save_pretrained(args.out)
    record = {"model": args.model, "length": args.length, "period": args.period, "target": args.target, "steps": step,
              "score": history[-1]["score"], "seconds": time.perf_counter() - t0, "history": history}
    write_output(json.dumps(record, indent=1), os.path.join(args.out, "warmup.json"), "--out")
    return record


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2:4", help="smollm2[:LAYERS] or hf:PATH")
    p.add_argument("--length", type=int, default=32, help="--task long's --response-length")
    p.add_argument("--period", type=int, default=4, help="--task long's --period")
    p.add_argument("--target", type=float, default=0.3, help="stop once the sampled mean reward reaches this")
    p.add_argument("--high", type=float, default=0.8, help="undo a window whose score lands above this")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-steps", type=int, default=400)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--eval-prompts", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="a new or empty directory (--force: replace what is in it)")
    p.add_argument("--force", action="store_true", help="write into a --out directory that already holds files")
    args = p.parse_args(argv)
    for name in ("batch", "max_steps", "eval_every", "eval_prompts"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 < args.target <= args.high <= 1:
        p.error(f"--target and --high must satisfy 0 < target <= high <= 1, got {args.target}, {args.high}")
    # save_pretrained replaces the files of a model already there: refuse before minutes of warm-up.
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        p.error(f"--out {args.out}: names a file, not a directory")
    if os.path.isdir(args.out) and os.listdir(args.out) and not args.force:
        p.error(f"--out {args.out}: a directory with files in it; pass --force to replace them")
    record = warm(args)
    print(f"{args.out}: {record['steps']} steps, sampled mean reward {record['score']:.3f} "
          f"in {record['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

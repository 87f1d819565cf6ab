"""Sampler-vs-learner mismatch by precision and profile: the paper's finding, rerunnable on a laptop.

    python -m benchmarks.mismatch [--quick] [--json PATH] [--png PATH] [--force] [--checkpoint PATH]
    python -m benchmarks.mismatch --records runs/demo/mismatch.json --png runs/demo/mismatch.png --force

The measurement itself is ``rl.mismatch``; this tool prints its table, writes JSON and
draws the plot (``--records`` redraws rows measured before, e.g. by ``make demo``). The plot goes
to ``runs/mismatch.png`` unless ``--png`` says otherwise (``--png ""``: none); a file already
there is replaced only with ``--force`` (checked before the measurement).

A fixed policy (``--checkpoint PATH``, measured on the task it was trained on; a missing
or damaged file is an error; without the flag, the demo's trained checkpoint when it
exists, otherwise a seeded random model on the reverse task) samples a fixed prompt set
with the KV-cache sampler in each precision and profile; the learner then rescores the
same tokens in the matched profile. Rows:

* {fp32, fp16, bf16} x {matched, engine}: the sampler's kernels are the learner's
  (matched), or an inference engine's decode (engine): split-K matmuls with partial sums
  rounded to the compute precision, and split-KV attention with rounded chunk outputs
  merged by their log-sum-exps;
* fp16/bf16 x {engine-matmul, engine-attention}: each of the two alone;
* fp16/bf16 with an fp32 LM head, engine: the common partial fix;
* an FP8 (W8A8 e4m3) rollout against a bf16 and an fp16 learner, and the FP8 matched variant
  (the learner runs the same quantised linears).

Rows whose sampler runs the learner's kernels and precision must show exactly zero mismatch.
In the engine rows the mismatch follows the precision's rounding unit, so bf16 (8 significant
bits) > fp16 (11) > fp32 (24).
"""

from __future__ import annotations

import argparse
import json
import os
import time

from benchmarks._output import (
    OutputExistsError,
    OutputPathError,
    prepare_json_path,
    prepare_output_path,
    write_figure,
    write_json,
)
from rl.checkpoint import CheckpointError, read_checkpoint
from rl.mismatch import DEMO_CHECKPOINT, format_headline, format_table, load_policy, matched_rows_zero, run
from rl.model import TinyGPT

DEFAULT_PNG = "runs/mismatch.png"


def plot(records: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 5.5))
    def label(r):
        sampler, learner = r.get("sampler", r["precision"]), r.get("learner", r["precision"])
        if sampler != r["precision"] or learner != r["precision"]:
            return f"{sampler} rollout, {learner} learner" if sampler != learner else f"{sampler} {r['profile']}"
        return f"{r['precision']}{' fp32-head' if r['head'] != r['precision'] else ''} {r['profile']}"

    def color(r):
        if r.get("sampler", r["precision"]) != r.get("learner", r["precision"]):
            return "tab:blue"
        return {"matched": "tab:green", "engine-matmul": "tab:orange", "engine-attention": "tab:purple"}.get(
            r["profile"], "tab:red")

    labels, colors = [label(r) for r in records], [color(r) for r in records]
    floor = 1e-18  # zero has no place on a log axis: exact zeros sit on the floor, labelled "0"
    for ax, key, title in zip(axes, ("mean_abs_dlogp", "kl_k3", "frac_tokens_differ"),
                              ("mean |Δ log p|", "KL(μ‖π) k3", "fraction of tokens not bitwise equal")):
        vals = [max(r[key], floor) for r in records]
        ax.bar(range(len(records)), vals, color=colors)
        ax.set_yscale("log")
        ax.set_ylim(floor / 2, max(vals) * 5)
        ax.set_title(title)
        ax.set_xticks(range(len(records)), labels, fontsize=7, rotation=60, ha="right")
        for i, r in enumerate(records):
            if r[key] == 0:
                ax.text(i, floor * 1.5, "0", ha="center", fontsize=8)
    fig.suptitle("sampler vs learner mismatch (green: matched, red: engine, orange: split-K matmul alone, "
                 "purple: split-KV attention alone, blue: fp8 rollout)")
    fig.tight_layout()
    write_figure(fig, path, dpi=110)
    plt.close(fig)


def check_tinygpt_checkpoint(path: str) -> None:
    """``CheckpointError`` unless ``path`` is an rl.train checkpoint of a TinyGPT policy that loads as one."""
    ckpt = read_checkpoint(path)
    stored = ckpt["extra"].get("args") if isinstance(ckpt.get("extra"), dict) else None
    model = stored.get("model", "tinygpt") if isinstance(stored, dict) else None
    if model != "tinygpt":
        what = "weights without rl.train's flags" if stored is None else f"a --model {model} run's weights"
        raise CheckpointError(f"{path}: holds {what}; this tool measures TinyGPT policies "
                              f"(rl.train --model tinygpt) only")
    try:
        state, cfg, _, _ = load_policy(path)
        TinyGPT(cfg).load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its weights do not fit the TinyGPT its flags describe "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one sampling seed (finishes in well under 45 s)")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--png", metavar="PATH", default=DEFAULT_PNG,
                        help=f'the plot (default {DEFAULT_PNG}; "" for none); an existing file is refused '
                             f'unless --force')
    parser.add_argument("--force", action="store_true", help="replace an existing --png file")
    parser.add_argument("--checkpoint", default=None,
                        help=f"an rl.train checkpoint (default: {DEMO_CHECKPOINT} when it exists, "
                             f"else a seeded random model)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--records", metavar="PATH", help="rows from an earlier --json (or make demo): no measuring")
    args = parser.parse_args(argv)
    try:  # every output path and the checkpoint are checked before the measurement, not after it
        prepare_json_path(args.json)
        try:
            prepare_output_path(args.png, "--png", replace=args.force)
        except OutputExistsError as e:
            parser.error(f"{e} (--force replaces it)")
        checkpoint = args.checkpoint
        if checkpoint is None and os.path.exists(DEMO_CHECKPOINT):
            checkpoint = DEMO_CHECKPOINT
        if checkpoint is not None and not args.records:
            check_tinygpt_checkpoint(checkpoint)
    except (OutputPathError, CheckpointError) as e:
        parser.error(f"--checkpoint: {e}" if isinstance(e, CheckpointError) else str(e))
    t0 = time.perf_counter()
    if args.records:
        with open(args.records) as f:  # a figure that was not finite is null in the file
            records = [{k: float("nan") if v is None else v for k, v in r.items()} for r in json.load(f)]
        print(f"rows from {args.records}")
    else:
        records, source = run(args.quick, checkpoint, args.seed)
        print(f"policy: {source}; {32 if args.quick else 64} prompts of the {records[0]['task']} task, "
              f"temperature 1")
    print(format_table(records))
    print("\n" + format_headline(records))
    matched_zero = matched_rows_zero(records)
    print(f"matched rows exactly zero: {matched_zero}   ({time.perf_counter() - t0:.1f}s)")
    if args.json:
        write_json(records, args.json)
    if args.png:
        plot(records, args.png)
        print(f"plot: {args.png}")
    return 0 if matched_zero else 1


if __name__ == "__main__":
    raise SystemExit(main())

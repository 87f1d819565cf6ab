"""The sanity recipe across precisions and sampler profiles, several seeds: the small-scale
counterpart of the paper's Figure 1.

    python -m benchmarks.train_compare --runs fp16:matched,fp16:engine,bf16:matched,bf16:engine \\
        --algo pg --seeds 0 1 --steps 40 --out runs/compare_long/pg [--overwrite] [-- further rl.train flags]

A configuration is ``PRECISION:PROFILE`` or ``PRECISION:PROFILE:LINEARS`` with LINEARS ``fp8-rollout``
(an FP8 W8A8 sampler against the PRECISION learner: ``rl.train --rollout-precision fp8``) or ``fp8``
(the FP8 matched variant: ``--linear-precision fp8``), or ``bf16-rollout`` / ``fp16-rollout`` (the whole
sampler model in bf16 / fp16 against the PRECISION learner: ``--rollout-precision bf16|fp16``), e.g.

    python -m benchmarks.train_compare --runs bf16:matched,bf16:matched:fp8-rollout,bf16:matched:fp8 --algo pg
    python -m benchmarks.train_compare --runs fp32:matched,fp32:matched:bf16-rollout --algo grpo -- --ratio sampler

Every (run, seed) is one ``rl.train`` run in ``OUT/<precision>[-<linears>]-<profile>-<algo>-s<seed>/`` with its
per-step ``metrics.jsonl`` (reward, mismatch, loss, ...; greedy accuracy on the first
``--eval-prompts`` training prompts every ``--eval-every`` steps). Writes a table (final accuracy,
steps to 95% and to 99% greedy accuracy, mismatch), ``OUT/summary.json`` and
``OUT/train_compare.png``: reward, greedy accuracy, mean |Δlog p|, ``clip_frac_sampler`` and ``ess_seq``
against the RL step, the mean over seeds with a min-max band; ``OUT/first_step.json``: per configuration, the
first step's ``clip_frac_sampler`` and ``ess_seq`` over the seeds (``first_step_rows``), what a prediction made
before the runs is checked against. ``--records`` redraws table and plot from finished runs.
"""

from __future__ import annotations

import argparse
import json
import os

from benchmarks._output import write_figure, write_json
from rl.train import build_parser, train

PRECISIONS = ("fp32", "fp16", "bf16")
PROFILES = ("matched", "engine")
# The optional third field: rl.train's flags for the FP8 linears or a whole-model rollout precision.
LINEARS = {"fp8-rollout": ["--rollout-precision", "fp8"], "fp8": ["--linear-precision", "fp8"],
           "bf16-rollout": ["--rollout-precision", "bf16"], "fp16-rollout": ["--rollout-precision", "fp16"]}
DEFAULT_RUNS = "fp16:matched,fp16:engine,bf16:matched,bf16:engine"


def parse_runs(text: str) -> list[tuple[str, str, str | None]]:
    """``"fp16:engine,bf16:matched:fp8-rollout"`` -> ``[("fp16", "engine", None), ("bf16", "matched", "fp8-rollout")]``.

    A bad entry raises ValueError naming it."""
    runs = []
    for item in text.split(","):
        parts = item.strip().split(":")
        ok = len(parts) in (2, 3) and parts[0] in PRECISIONS and parts[1] in PROFILES
        if not ok or (len(parts) == 3 and parts[2] not in LINEARS):
            raise ValueError(f"--runs entries must be PRECISION:PROFILE[:LINEARS] with PRECISION in {PRECISIONS}, "
                             f"PROFILE in {PROFILES} and LINEARS in {tuple(LINEARS)}, got {item!r}")
        runs.append((parts[0], parts[1], parts[2] if len(parts) == 3 else None))
    if len(set(runs)) != len(runs):
        raise ValueError(f"--runs lists a configuration twice: {text!r}")
    return runs


def run_name(precision: str, profile: str, algo: str, seed: int, linears: str | None = None) -> str:
    return f"{precision}{'-' + linears if linears else ''}-{profile}-{algo}-s{seed}"


def train_flags(precision: str, profile: str, linears: str | None, algo: str, steps: int, seed: int) -> list[str]:
    """The ``rl.train`` flags of one configuration and seed (``--out`` and the shared flags aside)."""
    return ["--precision", precision, "--profile", profile, *LINEARS.get(linears, []), "--algo", algo,
            "--steps", str(steps), "--seed", str(seed)]


def run(runs, seeds, algo: str, steps: int, out: str, extra: list[str]) -> list[dict]:
    """Train every (seed, configuration); a run's ``metrics.jsonl`` is written step by step as it goes."""
    results = []
    for seed in seeds:
        for precision, profile, linears in runs:
            name = run_name(precision, profile, algo, seed, linears)
            args = build_parser().parse_args([*train_flags(precision, profile, linears, algo, steps, seed),
                                              "--out", os.path.join(out, name), *extra])
            train(args, log=lambda msg, name=name: print(f"[{name}] {msg}", flush=True))
            results.append(load_run(out, name, seed, precision, profile, algo, linears))
    return results


def load_run(out: str, name: str, seed: int, precision: str, profile: str, algo: str,
             linears: str | None = None) -> dict:
    with open(os.path.join(out, name, "metrics.jsonl")) as f:
        history = [json.loads(line) for line in f if line.strip()]
    summary_path = os.path.join(out, name, "summary.json")
    summary = json.load(open(summary_path)) if os.path.exists(summary_path) else None
    return {"name": name, "seed": seed, "precision": precision, "profile": profile, "algo": algo,
            "linears": linears, "summary": summary, "history": history}


def first_step_at(history: list[dict], level: float) -> int | None:
    """The first RL step whose evaluated greedy accuracy is >= ``level`` (None if never)."""
    return next((h["step"] for h in history if h.get("evaluated", True) and h["accuracy"] >= level), None)


def row(r: dict) -> dict:
    h = r["history"]
    evaluated = [x for x in h if x.get("evaluated", True)]
    n = max(len(h), 1)
    return {"name": r["name"], "steps": h[-1]["step"] if h else 0,
            "final_accuracy": evaluated[-1]["accuracy"] if evaluated else float("nan"),
            "final_reward": h[-1]["reward"] if h else float("nan"),
            "steps_to_95": first_step_at(h, 0.95), "steps_to_99": first_step_at(h, 0.99),
            "mean_abs_dlogp": sum(x["mean_abs_dlogp"] for x in h) / n,
            "max_abs_dlogp": max((x["max_abs_dlogp"] for x in h), default=0.0),
            "frac_tokens_differ": sum(x["frac_tokens_differ"] for x in h) / n,
            "skipped": h[-1]["skipped_total"] if h else 0}


def format_table(results: list[dict]) -> str:
    lines = [f"{'run':<38} {'steps':>5} {'final acc':>9} {'reward':>7} {'to 95%':>6} {'to 99%':>6} "
             f"{'mean|dlogp|':>11} {'max|dlogp|':>10} {'tok differ':>10} {'skipped':>7}"]
    for r in results:
        x = row(r)
        lines.append(f"{x['name']:<38} {x['steps']:>5} {x['final_accuracy']:>9.1%} {x['final_reward']:>7.3f} "
                     f"{str(x['steps_to_95']):>6} {str(x['steps_to_99']):>6} {x['mean_abs_dlogp']:>11.3g} "
                     f"{x['max_abs_dlogp']:>10.3g} {x['frac_tokens_differ']:>10.2%} {x['skipped']:>7}")
    return "\n".join(lines)


def first_step_rows(results: list[dict]) -> list[dict]:
    """Per configuration, over its seeds: the first step's ``clip_frac_sampler`` and ``ess_seq`` (what a
    prediction made before the runs is checked against), their means over every step, and the first and
    last sampled reward; each as ``(mean, min, max)`` over the seeds."""
    groups: dict[str, list[dict]] = {}
    for r in results:
        if r["history"]:
            groups.setdefault(r["name"].rsplit("-s", 1)[0], []).append(r)
    out = []
    for name, rs in groups.items():
        def over_seeds(value):
            v = [value(r["history"]) for r in rs]
            return sum(v) / len(v), min(v), max(v)

        def mean_of(key):
            return lambda h: sum(x.get(key, float("nan")) for x in h) / len(h)

        out.append({"config": name, "seeds": len(rs),
                    "clip_frac_sampler_step1": over_seeds(lambda h: h[0].get("clip_frac_sampler", float("nan"))),
                    "ess_seq_step1": over_seeds(lambda h: h[0].get("ess_seq", float("nan"))),
                    "clip_frac_sampler_mean": over_seeds(mean_of("clip_frac_sampler")),
                    "ess_seq_mean": over_seeds(mean_of("ess_seq")),
                    "reward_first": over_seeds(lambda h: h[0]["reward"]),
                    "reward_last": over_seeds(lambda h: h[-1]["reward"])})
    return out


def format_first_step(rows: list[dict]) -> str:
    def cell(t, fmt):
        return f"{t[0]:{fmt}} [{t[1]:{fmt}}, {t[2]:{fmt}}]"

    lines = ["config: seeds; step 1 clip_frac_sampler, ess_seq; all steps' mean clip, ess; reward first -> last "
             "(mean [min, max] over seeds)"]
    for x in rows:
        lines.append(f"{x['config']}: {x['seeds']}; {cell(x['clip_frac_sampler_step1'], '.4f')}, "
                     f"{cell(x['ess_seq_step1'], '.4f')}; {x['clip_frac_sampler_mean'][0]:.4f}, "
                     f"{x['ess_seq_mean'][0]:.4f}; {cell(x['reward_first'], '.3f')} -> {cell(x['reward_last'], '.3f')}")
    return "\n".join(lines)


def _band(series: list[dict[int, float]]):
    """Steps present in every seed's series, with the mean, min and max over seeds."""
    steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
    vals = [[s[t] for s in series] for t in steps]
    return steps, [sum(v) / len(v) for v in vals], [min(v) for v in vals], [max(v) for v in vals]


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 5, figsize=(26, 4.5))
    colors = {"fp32": "tab:green", "fp16": "tab:blue", "bf16": "tab:red"}
    linear_colors = {"fp8-rollout": "tab:purple", "fp8": "tab:orange", "bf16-rollout": "tab:brown",
                     "fp16-rollout": "tab:cyan"}
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["precision"], r["profile"], r["algo"], r.get("linears")), []).append(r)
    for (precision, profile, algo, linears), rs in groups.items():
        color = linear_colors.get(linears, colors[precision])
        ls = "-" if profile == "matched" else "--"
        label = (f"{precision}{' ' + linears if linears else ''} {profile} {algo} "
                 f"({len(rs)} seed{'s' if len(rs) > 1 else ''})")
        metrics = [
            ("reward", lambda h: True, lambda h: h["reward"]),
            ("accuracy", lambda h: h.get("evaluated", True), lambda h: h["accuracy"]),
            ("mean_abs_dlogp", lambda h: True, lambda h: max(h["mean_abs_dlogp"], 1e-10)),
            # runs recorded before the diagnostics were logged have none to draw
            ("clip_frac_sampler", lambda h: "clip_frac_sampler" in h, lambda h: h["clip_frac_sampler"]),
            ("ess_seq", lambda h: h.get("ess_seq") is not None, lambda h: h["ess_seq"]),
        ]
        for ax, (_, keep, value) in zip(axes, metrics):
            series = [{h["step"]: value(h) for h in r["history"] if keep(h)} for r in rs]
            steps, mean, lo, hi = _band(series)
            ax.plot(steps, mean, ls=ls, color=color, marker="o" if ax is axes[1] else None, ms=3,
                    label=label if ax is axes[0] else None)
            if len(rs) > 1:
                ax.fill_between(steps, lo, hi, color=color, alpha=0.15 if ls == "-" else 0.08)
    axes[0].set_title("mean sampled reward (partial credit)")
    axes[1].set_title("greedy accuracy (evaluation subset)")
    axes[2].set_title("sampler-learner mean |Δ log p| (1e-10 = exactly 0)")
    axes[2].set_yscale("log")
    axes[3].set_title("clip_frac_sampler: exp(π_old − μ) outside [0.8, 1.2]")
    axes[4].set_title("ess_seq: ESS/N of exp(Σ(π_old − μ))")
    for ax in axes:
        ax.set_xlabel("RL step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    write_figure(fig, path, "--out", dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default=DEFAULT_RUNS,
                        help="comma-separated PRECISION:PROFILE[:LINEARS] configurations (LINEARS: fp8-rollout, fp8)")
    parser.add_argument("--algo", default="pg", help="rl.train --algo for every run")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--eval-prompts", type=int, default=128, help="greedy accuracy on this many training prompts")
    parser.add_argument("--out", default="runs/compare")
    parser.add_argument("--overwrite", action="store_true", help="replace runs already in OUT (rl.train --overwrite)")
    parser.add_argument("--records", action="store_true", help="only redraw the table and plot from runs in OUT")
    parser.add_argument("extra", nargs="*", help="further rl.train flags, after --")
    args = parser.parse_args(argv)
    try:
        runs = parse_runs(args.runs)
    except ValueError as e:
        parser.error(str(e))
    os.makedirs(args.out, exist_ok=True)
    if args.records:
        results = [load_run(args.out, run_name(p, q, args.algo, s, lin), s, p, q, args.algo, lin)
                   for s in args.seeds for p, q, lin in runs
                   if os.path.exists(os.path.join(args.out, run_name(p, q, args.algo, s, lin), "metrics.jsonl"))]
    else:
        extra = ["--no-progress", "--eval-every", str(args.eval_every), "--eval-prompts", str(args.eval_prompts),
                 *(["--overwrite"] if args.overwrite else []), *args.extra]
        results = run(runs, args.seeds, args.algo, args.steps, args.out, extra)
    print(format_table(results))
    first = first_step_rows(results)
    print(format_first_step(first))
    write_json([{**{k: v for k, v in r.items() if k != "history"}, "table": row(r)} for r in results],
               os.path.join(args.out, "summary.json"), "--out")
    write_json(first, os.path.join(args.out, "first_step.json"), "--out")
    png = os.path.join(args.out, "train_compare.png")
    plot(results, png)
    print(f"plot: {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""One short, fresh ``rl.train`` run for reports: its summary plus a few figures of every step.

``gpu_report``'s short CUDA runs call ``short_run``; it only drives the training CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

from rl.train import build_parser, train

PER_STEP_KEYS = ("step", "reward", "mean_abs_dlogp", "max_abs_dlogp", "frac_tokens_differ", "sample_s", "learn_s",
                 "skipped")


def short_run(precision: str, profile: str, out: str, *, steps: int = 20, device: str = "auto",
              extra: tuple[str, ...] = ()) -> dict:
    """One fresh ``rl.train`` run; OUT is overwritten.

    Returns the run's summary (``steps_per_s``, ``mean_abs_dlogp``, ``max_abs_dlogp``,
    ``frac_tokens_differ``, ...) plus ``per_step``: for every step the ``PER_STEP_KEYS``
    figures. Accuracy is evaluated once, after the last step. ``extra`` holds further flags.
    """
    args = build_parser().parse_args(["--precision", precision, "--profile", profile, "--steps", str(steps),
                                      "--device", device, "--eval-every", str(steps), "--no-progress",
                                      "--overwrite", "--out", out, *extra])
    summary = train(args, log=lambda *_: None)
    records = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    per_step = [{k: r.get(k) for k in PER_STEP_KEYS} for r in records]
    return {**summary, "per_step": per_step}

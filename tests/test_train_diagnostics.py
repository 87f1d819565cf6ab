"""Every training step logs the diagnostics of rl.diagnostics and the verl/TRL names of rl.metrics.

A matched run logs exactly 0 clip fraction, ESS exactly 1 and a log-ratio of exactly 0; an engine bf16 run a
log-ratio spread above 0 and an ESS below 1. The reduction over ranks is checked against the one-process
figures with two threads standing in for two ranks.
"""

from __future__ import annotations

import json
import math
import threading

import pytest
import torch

from rl.diagnostics import DIAGNOSTIC_KEYS, sampler_diagnostics, step_diagnostics
from rl.metrics import DASHBOARD_KEYS
from rl.train import build_parser, train

FLAGS = ["--steps", "1", "--batch", "2", "--group", "2", "--d-model", "32", "--layers", "1", "--eval-every", "100",
         "--eval-prompts", "2", "--dataset-size", "8", "--warmup-target", "0.0", "--no-progress"]


def _record(out, *extra) -> dict:
    train(build_parser().parse_args([*FLAGS, "--out", str(out), *extra]), log=lambda *_: None)
    (line,) = (out / "metrics.jsonl").read_text().splitlines()
    return json.loads(line)


@pytest.mark.parametrize("algo", ["pg", "grpo"])
def test_a_matched_run_logs_exact_zeros_and_ess_one(tmp_path, algo):
    r = _record(tmp_path, "--algo", algo, "--precision", "bf16")
    assert set(DIAGNOSTIC_KEYS) | set(DASHBOARD_KEYS) <= set(r)
    assert (r["clip_frac_sampler"], r["ess_seq"], r["seq_logratio_mean"], r["seq_logratio_std"]) == (0.0, 1.0, 0.0, 0.0)
    assert r["sampling/importance_sampling_ratio/min"] == r["sampling/importance_sampling_ratio/max"] == 1.0
    assert r["rollout_corr/kl"] == 0.0 and r["training/rollout_probs_diff_max"] == 0.0


def test_an_engine_bf16_run_logs_a_spread_and_an_ess_below_one(tmp_path):
    r = _record(tmp_path, "--precision", "bf16", "--profile", "engine")
    assert r["seq_logratio_std"] > 0 and 0 < r["ess_seq"] < 1 and r["seq_logratio_mean"] != 0
    assert r["sampling/sampling_logp_difference/max"] == pytest.approx(r["max_abs_dlogp"], rel=1e-12)


class _ThreadDist:
    """Two threads as two ranks: ``sum`` and ``max`` wait for both and combine their values."""

    def __init__(self, rank: int, shared: dict) -> None:
        self.rank, self.shared, self.active = rank, shared, True

    def _reduce(self, values, op):
        s = self.shared
        s["slots"][self.rank] = values
        s["barrier"].wait()
        out = [op(a, b) for a, b in zip(*s["slots"])]
        s["barrier"].wait()
        return out

    def sum(self, *values):
        return self._reduce(values, lambda a, b: a + b)

    def max(self, *values):
        return self._reduce(values, max)


def test_the_reduction_over_ranks_gives_the_whole_batchs_figures():
    g = torch.Generator().manual_seed(0)
    mu = -torch.rand(6, 9, generator=g) * 3
    old = mu + torch.randn(6, 9, generator=g) * 0.2
    mask = torch.arange(9)[None, :] < torch.tensor([9, 4, 7, 0, 9, 2])[:, None]
    old[1, 5] = float("nan")  # past the mask: never read
    shared = {"slots": [None, None], "barrier": threading.Barrier(2)}
    results = [None, None]

    def rank(i: int) -> None:
        rows = slice(0, 3) if i == 0 else slice(3, 6)
        results[i] = step_diagnostics(old[rows], mu[rows], mask[rows], _ThreadDist(i, shared))

    threads = [threading.Thread(target=rank, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    whole = sampler_diagnostics(old, mu, mask)
    assert results[0] == results[1]
    assert 0 < whole["clip_frac_sampler"] and whole["ess_seq"] < 1  # else the check could not tell
    for key in DIAGNOSTIC_KEYS:
        assert results[0][key] == pytest.approx(whole[key], rel=1e-12), key
    assert math.isnan(step_diagnostics(old, mu, torch.zeros_like(mask))["ess_seq"])


def test_train_compare_draws_the_diagnostics_and_older_runs_without_them(tmp_path):
    pytest.importorskip("matplotlib")
    from benchmarks.train_compare import plot

    def history(with_diagnostics: bool):
        rows = []
        for step in (1, 2):
            h = {"step": step, "reward": 0.3, "accuracy": 0.1, "evaluated": True, "mean_abs_dlogp": 1e-3}
            if with_diagnostics:
                h.update(clip_frac_sampler=0.01 * step, ess_seq=1.0 - 0.001 * step)
            rows.append(h)
        return rows

    results = [{"name": "a", "precision": "fp32", "profile": "matched", "algo": "pg-seq-is",
                "linears": "bf16-rollout", "history": history(True)},
               {"name": "b", "precision": "bf16", "profile": "engine", "algo": "pg", "history": history(False)}]
    plot(results, str(tmp_path / "c.png"))
    assert (tmp_path / "c.png").stat().st_size > 0

"""rl.train under torchrun: two processes on CPU (gloo), each running the kernels in the interpreter.

A 2-step run, and a run of 1 step resumed to step 2, both with 2 processes and the same
seed, end with bitwise identical weights; rank 0 alone writes the run's files. Both take the
single-process run's steps: its samples exactly (keyed seeds: same token counts and rewards)
and its weights up to the order of the gradient all-reduce's sum.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from rl.distributed import Dist
from rl.metrics import mismatch_metrics, reduce_mismatch

FLAGS = ["--steps", "2", "--batch", "2", "--group", "2", "--d-model", "32", "--layers", "1", "--dataset-size", "32",
         "--warmup-target", "0.0", "--eval-prompts", "2", "--no-progress", "--strict"]


def _records(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _torchrun(out, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "rl.train", *FLAGS, "--out", str(out), *extra]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_two_process_runs_repeat_bit_for_bit_and_resume(tmp_path):
    _torchrun(tmp_path / "a")
    _torchrun(tmp_path / "b", "--steps", "1")
    _torchrun(tmp_path / "b", "--resume")
    wa = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["model"]
    wb = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["model"]
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    for run in ("a", "b"):
        records = _records(tmp_path / run)
        assert [r["step"] for r in records] == [1, 2]  # one writer: no duplicated lines
        assert all(r["frac_tokens_differ"] == 0.0 for r in records)
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["world_size"] == 2

    # One process: the same samples, and the same update up to the all-reduce's summation order
    # (AdamW steps of lr 2e-3; a rank stepping on its half of the gradient alone is ~1e-3 off).
    # (in this process: a third interpreter start-up costs more than the run)
    from rl.train import build_parser, train

    train(build_parser().parse_args([*FLAGS, "--out", str(tmp_path / "one")]), log=lambda *_: None)
    for two, one in zip(_records(tmp_path / "a"), _records(tmp_path / "one")):
        assert (two["n_tokens"], two["reward"]) == (one["n_tokens"], one["reward"])
    w1 = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.allclose(wa[k], w1[k], rtol=0, atol=1e-6) for k in wa)


class _Recorder(Dist):
    """A 2-rank stand-in: records what this rank contributes to each collective, returns it unreduced."""

    def __init__(self, peer_calls=None):
        super().__init__(rank=0, world_size=2)
        object.__setattr__(self, "calls", [])
        object.__setattr__(self, "peer", list(peer_calls or []))

    def _combine(self, values, op):
        self.calls.append(list(values))
        if not self.peer:
            return list(values)
        other = self.peer.pop(0)
        return [op(a, b) for a, b in zip(values, other)]

    def sum(self, *values):
        return self._combine(values, lambda a, b: a + b)

    def max(self, *values):
        return self._combine(values, max)


def test_reduced_mismatch_of_two_ranks_is_the_whole_batch_figure():
    """Token-weighted means, maxima and counts over two ranks' halves equal the figures of the whole batch."""
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(6, 5, generator=g)
    pi = mu + torch.randn(6, 5, generator=g) * 1e-3 * (torch.rand(6, 5, generator=g) < 0.5)
    mask = torch.rand(6, 5, generator=g) < 0.7
    halves = [mismatch_metrics(mu[s], pi[s], mask[s]) for s in (slice(0, 2), slice(2, 6))]
    peer = _Recorder()
    reduce_mismatch(halves[1], peer)
    combined = reduce_mismatch(halves[0], _Recorder(peer.calls))
    whole = mismatch_metrics(mu, pi, mask)
    for key in ("n_tokens", "n_seqs", "mean_abs_dlogp", "max_abs_dlogp", "frac_tokens_differ", "k1", "k2", "k3",
                "seq_k1", "seq_k2", "seq_k3", "seq_max_abs_dlogp", "dp_max"):
        assert combined[key] == pytest.approx(whole[key], rel=1e-12, abs=1e-15), key

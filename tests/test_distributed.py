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

import torch

FLAGS = ["--steps", "2", "--batch", "2", "--group", "2", "--d-model", "32", "--dataset-size", "32",
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
    subprocess.run([sys.executable, "-m", "rl.train", *FLAGS, "--out", str(tmp_path / "one")], check=True,
                   capture_output=True, timeout=300)
    for two, one in zip(_records(tmp_path / "a"), _records(tmp_path / "one")):
        assert (two["n_tokens"], two["reward"]) == (one["n_tokens"], one["reward"])
    w1 = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.allclose(wa[k], w1[k], rtol=0, atol=1e-6) for k in wa)

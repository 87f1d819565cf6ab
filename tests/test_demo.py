"""rl.demo's pass/fail decision, without running the demo (train and the mismatch run are stubbed)."""

import pytest

import rl.demo as demo


def _row(precision, profile, differ=0.0, max_abs=0.0, head=None):
    return {"precision": precision, "head": head or precision, "profile": profile, "frac_tokens_differ": differ,
            "max_abs_dlogp": max_abs, "rel_rms_logp": 1.0, "rel_rms_prob": 1.0, "kl_k3": 1.0,
            "mean_abs_dlogp": 1.0, "kl_k1": 0.0, "seq_k3": 0.0, "dp_p99": 0.0}


GOOD = [_row("fp16", "matched"), _row("bf16", "matched"), _row("fp16", "engine", 0.5, 1e-3),
        _row("bf16", "engine", 0.6, 1e-2)]


def test_demo_failures_names_each_reason():
    assert demo.demo_failures(0.96, GOOD) == []
    assert demo.demo_failures(0.95, GOOD) == []
    low = demo.demo_failures(0.949, GOOD)
    assert len(low) == 1 and "below 95%" in low[0]
    assert demo.demo_failures(float("nan"), GOOD)  # never evaluated: not a pass
    one_ulp = [_row("fp16", "matched"), _row("bf16", "matched", 1 / 64, 2**-23)] + GOOD[2:]
    bad = demo.demo_failures(0.99, one_ulp)
    assert len(bad) == 1 and "bf16/bf16" in bad[0] and "fp16/fp16" not in bad[0]
    assert demo.demo_failures(0.99, GOOD[2:])  # no matched row at all is a failure, not a vacuous pass


@pytest.mark.parametrize("accuracy,records,code", [(0.97, GOOD, 0), (0.90, GOOD, 1),
                                                   (0.97, [_row("fp32", "matched", 0.0, 1e-7)] + GOOD, 1)])
def test_demo_exit_code(tmp_path, monkeypatch, accuracy, records, code):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    monkeypatch.setattr(demo, "train", lambda args: {"final_accuracy": accuracy})
    monkeypatch.setattr(demo, "run", lambda quick, checkpoint: (records, "stub policy"))
    assert demo.main() == code


def test_an_fp8_rollout_row_may_differ_but_an_fp8_matched_row_may_not():
    rollout = {**_row("bf16", "matched", 1.0, 0.1), "sampler": "fp8", "learner": "bf16"}
    fp8_matched = {**_row("bf16", "matched"), "sampler": "fp8", "learner": "fp8"}
    assert demo.demo_failures(0.99, [*GOOD, rollout, fp8_matched]) == []
    bad = demo.demo_failures(0.99, [*GOOD, rollout, {**fp8_matched, "max_abs_dlogp": 2.0**-10}])
    assert len(bad) == 1 and "bf16/bf16/fp8" in bad[0]

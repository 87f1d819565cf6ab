"""benchmarks.train_compare: its configurations, their run names and the rl.train flags each one runs."""

import pytest

from benchmarks.train_compare import parse_runs, run_name, train_flags
from rl.train import build_parser
from rl.train_flags import matched_run, sampler_linears


def test_configurations_parse_with_and_without_fp8_linears():
    assert parse_runs("fp16:engine,bf16:matched:fp8-rollout,bf16:matched:fp8") == [
        ("fp16", "engine", None), ("bf16", "matched", "fp8-rollout"), ("bf16", "matched", "fp8")]
    assert run_name("bf16", "matched", "tis", 1, "fp8-rollout") == "bf16-fp8-rollout-matched-tis-s1"
    assert run_name("fp16", "engine", "pg", 0) == "fp16-engine-pg-s0"


@pytest.mark.parametrize("text", ["bf16", "bf16:matched:fp4", "fp8:matched", "bf16:fast", "bf16:matched:fp8:x",
                                  "bf16:engine,bf16:engine"])
def test_a_bad_configuration_is_named(text):
    with pytest.raises(ValueError, match="--runs"):
        parse_runs(text)


@pytest.mark.parametrize("linears,sampler,matched", [(None, None, True), ("fp8-rollout", "fp8", False),
                                                     ("fp8", "fp8", True)])
def test_each_configuration_runs_the_flags_it_names(linears, sampler, matched):
    args = build_parser().parse_args([*train_flags("bf16", "matched", linears, "mis", 5, 2), "--out", "x"])
    assert (args.precision, args.profile, args.algo, args.steps, args.seed) == ("bf16", "matched", "mis", 5, 2)
    assert sampler_linears(args) == sampler and matched_run(args) == matched


def _run(name, seed, rewards, clips, ess):
    history = [{"step": i + 1, "reward": r, "clip_frac_sampler": c, "ess_seq": e}
               for i, (r, c, e) in enumerate(zip(rewards, clips, ess))]
    return {"name": f"{name}-s{seed}", "seed": seed, "history": history}


def test_first_step_rows_gather_each_configuration_over_its_seeds():
    from benchmarks.train_compare import first_step_rows

    rows = first_step_rows([_run("bf16-engine-pg-seq-is", 0, [0.1, 0.3], [0.02, 0.0], [0.9, 0.7]),
                            _run("bf16-engine-pg-seq-is", 1, [0.2, 0.5], [0.0, 0.0], [0.8, 1.0]),
                            _run("bf16-matched-pg-seq-is", 0, [0.4], [0.0], [1.0])])
    by = {r["config"]: r for r in rows}
    engine = by["bf16-engine-pg-seq-is"]
    assert engine["seeds"] == 2 and by["bf16-matched-pg-seq-is"]["seeds"] == 1
    assert engine["clip_frac_sampler_step1"] == pytest.approx((0.01, 0.0, 0.02))
    assert engine["ess_seq_step1"] == pytest.approx((0.85, 0.8, 0.9))
    assert engine["ess_seq_mean"] == pytest.approx((0.85, 0.8, 0.9))  # seed means 0.8 and 0.9
    assert engine["reward_first"] == pytest.approx((0.15, 0.1, 0.2))
    assert engine["reward_last"] == pytest.approx((0.4, 0.3, 0.5))
    assert by["bf16-matched-pg-seq-is"]["ess_seq_step1"] == (1.0, 1.0, 1.0)


def test_the_seed_band_is_the_mean_min_and_max_at_the_steps_every_seed_has():
    from benchmarks.train_compare import _band

    steps, mean, lo, hi = _band([{1: 0.0, 2: 1.0, 3: 5.0}, {1: 2.0, 2: 3.0}])
    assert steps == [1, 2] and mean == [1.0, 2.0] and lo == [0.0, 1.0] and hi == [2.0, 3.0]

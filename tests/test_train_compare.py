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

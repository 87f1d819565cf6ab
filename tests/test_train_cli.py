"""rl.train's flags: every bad value is refused before any work, naming the flag; runs are never lost.

Each case calls ``rl.train.main([...])`` in-process: a refusal is argparse's exit 2 with the
flag named on stderr, and the output directory is not even created.
"""

import json

import pytest
import torch

from rl.checkpoint import save_checkpoint
from rl.run_records import drop_records_after
from rl.train import main
from rl.train_flags import RESUME_MAY_DIFFER, build_parser, check_args, resolve_device, resume_conflicts

# (bad flags, the flag the error must name)
BAD_FLAGS = [
    (["--task", "multiply"], "--task"),
    (["--precision", "fp8"], "--precision"),
    (["--head-precision", "fp64"], "--head-precision"),
    (["--profile", "fast"], "--profile"),
    (["--algo", "a2c"], "--algo"),
    (["--agg", "sum"], "--agg"),
    (["--epochs", "0"], "--epochs"),
    (["--epochs", "1.5"], "--epochs"),
    (["--epochs", "2"], "--epochs"),                          # pg: more epochs need a clipped objective
    (["--algo", "tis", "--epochs", "2"], "--epochs"),
    (["--algo", "mis", "--epochs", "3"], "--epochs"),
    (["--minibatches", "0"], "--minibatches"),
    (["--minibatches", "65"], "--minibatches"),               # more than batch x group = 64 sequences
    (["--ratio", "new"], "--ratio"),
    (["--ratio", "sampler"], "--ratio"),                      # pg has no ratio
    (["--tis-cap", "2"], "--tis-cap"),                        # pg
    (["--algo", "ppo", "--ratio", "sampler", "--tis-cap", "2"], "--tis-cap"),
    (["--algo", "ppo", "--tis-cap", "0"], "--tis-cap"),
    (["--algo", "ppo", "--tis-cap", "-1"], "--tis-cap"),
    (["--algo", "grpo", "--tis-cap", "nan"], "--tis-cap"),
    (["--algo", "grpo", "--tis-cap", "inf"], "--tis-cap"),
    (["--steps", "0"], "--steps"),
    (["--steps", "-3"], "--steps"),
    (["--steps", "ten"], "--steps"),
    (["--batch", "0"], "--batch"),
    (["--group", "1"], "--group"),                            # a group-mean baseline needs two samples
    (["--lr", "0"], "--lr"),
    (["--lr", "-1e-3"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--temperature", "0"], "--temperature"),
    (["--temperature", "-1"], "--temperature"),
    (["--temperature", "1e-50"], "--temperature"),           # fp32 value 0
    (["--temperature", "1e39"], "--temperature"),            # fp32 value inf
    (["--temperature", "1e-39"], "--temperature"),           # fp32 subnormal: its reciprocal is inf
    (["--temperature", "inf"], "--temperature"),
    (["--temperature", "nan"], "--temperature"),
    (["--reward", "dense"], "--reward"),
    (["--dataset-size", "0"], "--dataset-size"),
    (["--dataset-size", "1000001"], "--dataset-size"),
    (["--d-model", "0"], "--d-model"),
    (["--d-model", "15"], "--d-model"),                       # not divisible by 2 heads
    (["--layers", "0"], "--layers"),
    (["--heads", "0"], "--heads"),
    (["--init", "xavier"], "--init"),
    (["--warmup-target", "1.5"], "--warmup-target"),
    (["--warmup-target", "-0.1"], "--warmup-target"),
    (["--warmup-target", "nan"], "--warmup-target"),
    (["--eval-every", "0"], "--eval-every"),
    (["--stop-at", "2"], "--stop-at"),
    (["--stop-at", "nan"], "--stop-at"),
    (["--seed", "-1"], "--seed"),
    (["--seed", "abc"], "--seed"),
    (["--strict", "yes"], "yes"),                             # a switch takes no value
    (["--no-progress", "1"], "1"),
    (["--resume", "--overwrite"], "--overwrite"),
    (["--resume"], "--resume"),                               # no checkpoint to resume from
    (["--device", "gpu"], "--device"),
    (["--algo", "gspo", "--agg", "token-mean"], "--agg"),     # gspo is sequence-level
    (["--algo", "gspo", "--tis-cap", "2"], "--tis-cap"),      # a ppo/grpo option
    (["--algo", "tis", "--ratio", "sampler"], "--ratio"),
    (["--kl-coef", "-0.1"], "--kl-coef"),
    (["--kl-coef", "nan"], "--kl-coef"),
    (["--kl-coef", "inf"], "--kl-coef"),
    (["--kl-estimator", "k2"], "--kl-estimator"),             # without --kl-coef
    (["--kl-coef", "0.1", "--kl-estimator", "k4"], "--kl-estimator"),
    (["--eval-prompts", "0"], "--eval-prompts"),
    (["--eval-prompts", "513"], "--eval-prompts"),            # more than --dataset-size 512
    (["--rollout-precision", "fp4"], "--rollout-precision"),   # fp8, bf16 or fp16
    (["--linear-precision", "e4m3"], "--linear-precision"),
    (["--attention", "eager"], "--attention"),                # TinyGPT's attention is pk.attention
    (["--attention", "flash"], "--attention"),
]


@pytest.mark.parametrize("flags,flag", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_flag_is_refused_before_any_work(tmp_path, capsys, flags, flag):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main([*flags, "--out", str(out)])
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err
    assert not out.exists()


def test_device_the_backend_cannot_serve_is_refused(tmp_path, capsys, monkeypatch):
    """--device cpu on a CUDA backend names TRITON_INTERPRET; --device cuda under the interpreter is refused."""
    import precision_kernels as pk

    wrong = "cuda" if pk.backend.device().type == "cpu" else "cpu"
    with pytest.raises(SystemExit):
        main(["--device", wrong, "--out", str(tmp_path / "run")])
    assert "--device" in capsys.readouterr().err and not (tmp_path / "run").exists()
    monkeypatch.setattr(pk.backend, "device", lambda: torch.device("cuda"))
    monkeypatch.setattr(pk.backend, "active_backend", lambda: "cuda")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        resolve_device("cpu")
    assert resolve_device("auto") == torch.device("cuda") == resolve_device("cuda")


def test_batch_must_split_into_whole_groups_per_process(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(SystemExit):
        main(["--batch", "8", "--out", str(tmp_path / "run")])
    assert "--batch" in capsys.readouterr().err
    check_args(build_parser().parse_args(["--batch", "9", "--out", str(tmp_path / "run")]))  # no error


def test_out_naming_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(SystemExit):
        main(["--out", str(f)])
    assert "--out" in capsys.readouterr().err and f.read_text() == "x"


@pytest.mark.parametrize("flags", [[], ["--resume"]], ids=["fresh", "resume-without-checkpoint"])
def test_an_existing_run_is_never_truncated(tmp_path, capsys, flags):
    """The issue's data loss: --resume with no checkpoint started over and emptied metrics.jsonl."""
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1}\n')
    with pytest.raises(SystemExit):
        main([*flags, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert ("--resume" if flags else "--overwrite") in err
    assert metrics.read_text() == '{"step": 1}\n'


def test_overwrite_allows_a_fresh_start(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    check_args(build_parser().parse_args(["--overwrite", "--out", str(tmp_path)]))  # no error


def _stored_run(tmp_path, *flags):
    stored = build_parser().parse_args([*flags, "--out", str(tmp_path)])
    save_checkpoint(tmp_path / "checkpoint.pt", model={}, step=2, extra={"args": vars(stored)})
    return stored


def test_resume_refuses_conflicting_flags_and_names_them(tmp_path, capsys):
    _stored_run(tmp_path, "--lr", "1e-3", "--precision", "bf16")
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    with pytest.raises(SystemExit) as exc:
        main(["--resume", "--lr", "2e-3", "--precision", "bf16", "--algo", "tis", "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--lr" in err and "--algo" in err and "--precision:" not in err
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'


def test_resume_allows_only_the_listed_flags_to_differ(tmp_path):
    stored = vars(_stored_run(tmp_path))
    now = build_parser().parse_args(["--resume", "--steps", "99", "--stop-at", "0.5", "--eval-every", "3",
                                     "--no-progress", "--out", str(tmp_path / "elsewhere")])
    assert resume_conflicts(stored, now) == []
    assert {"steps", "stop_at", "eval_every", "device", "no_progress"} <= RESUME_MAY_DIFFER
    for flags in (["--seed", "1"], ["--strict"], ["--batch", "4"], ["--temperature", "0.7"]):
        now = build_parser().parse_args(["--resume", *flags, "--out", str(tmp_path)])
        (conflict,) = resume_conflicts(stored, now)
        assert conflict.startswith(flags[0] + ":")


def test_resume_drops_records_written_after_the_checkpoint(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3)))
    drop_records_after(metrics, 2)
    assert [json.loads(x)["step"] for x in metrics.read_text().splitlines()] == [1, 2]

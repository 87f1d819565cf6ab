"""rl.train across a resume and on damaged or diverging runs.

One module-scoped set of tiny bf16 engine runs (a nonzero mismatch, so a summary built from the
resumed segment alone would show): 3 steps uninterrupted, and 2 steps resumed to 3. The resumed
run's files must equal the uninterrupted run's, timings aside. Copies of the 2-step run, taken
before its resume, are damaged in turn: a resume then drops a cut-short last record with a
warning and refuses anything else with a clear error, before any work. Two more short runs
diverge (``--lr 5``): ``--strict`` stops them, otherwise the non-finite steps are skipped and
counted.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import rl.train as T
from rl import distributed
from rl.run_records import records_up_to
from rl.train import build_parser, main, train

FLAGS = ["--batch", "2", "--group", "2", "--d-model", "32", "--layers", "1", "--no-progress", "--dataset-size", "16",
         "--eval-every", "2", "--eval-prompts", "8", "--precision", "bf16", "--profile", "engine"]
TIMING = {"rl_seconds", "steps_per_s", "sample_s_per_step", "learn_s_per_step"}


def _args(out: Path, steps: int, *extra: str):
    return build_parser().parse_args([*FLAGS, "--steps", str(steps), "--out", str(out), *extra])


def _records(out: Path) -> list[dict]:
    return [json.loads(line, parse_constant=_refuse) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _refuse(name):
    raise AssertionError(f"{name} is not JSON")


def _untimed(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.endswith("_s")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    events = []
    real_fsync, real_save = os.fsync, T.save_checkpoint

    def fsync(fd):
        events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        return real_fsync(fd)

    def save(path, **kwargs):
        events.append(("checkpoint", kwargs["step"]))
        return real_save(path, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(T.os, "fsync", fsync)
        mp.setattr(T, "save_checkpoint", save)
        train(_args(root / "full", 3), log=lambda *_: None)
    part = root / "part"
    train(_args(part, 2), log=lambda *_: None)
    snapshot = root / "snapshot"
    shutil.copytree(part, snapshot)
    (part / ".checkpoint.pt.k2x9.tmp").write_bytes(b"a save killed half-way")
    logs: list[str] = []
    train(_args(part, 3, "--resume"), log=logs.append)
    return SimpleNamespace(root=root, full=root / "full", part=part, snapshot=snapshot, events=events, logs=logs)


def _copy(runs, name: str) -> Path:
    out = runs.root / name
    shutil.copytree(runs.snapshot, out)
    return out


def test_a_resumed_run_writes_the_uninterrupted_runs_files(runs):
    full, part = _records(runs.full), _records(runs.part)
    assert [r["step"] for r in part] == [1, 2, 3]
    assert [_untimed(r) for r in part] == [_untimed(r) for r in full]
    s_full, s_part = (json.loads((d / "summary.json").read_text(), parse_constant=_refuse)
                      for d in (runs.full, runs.part))
    assert s_full["mean_abs_dlogp"] > 0 and s_full["steps"] == 3  # engine bf16: a mismatch to lose
    for s in (s_full, s_part):
        s["warmup"].pop("seconds")
    assert {k: v for k, v in s_part.items() if k not in TIMING} == {k: v for k, v in s_full.items() if k not in TIMING}
    w_full = torch.load(runs.full / "checkpoint.pt", weights_only=True)["model"]
    w_part = torch.load(runs.part / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(w_full[k], w_part[k]) for k in w_full)


def test_resume_restarts_from_the_checkpoints_figures(runs):
    """Accuracy and skipped-step total continue from the step resumed, not from the warm-up and 0."""
    last = _records(runs.snapshot)[-1]
    warm = json.loads((runs.snapshot / "summary.json").read_text())["warmup"]
    assert last["evaluated"] and last["accuracy"] != warm["accuracy"]  # else the test could not tell
    out = _copy(runs, "restart")
    metrics = (out / "metrics.jsonl").read_text()
    record = json.loads(metrics.splitlines()[-1])
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    ckpt["extra"]["totals"]["skipped_total"] = record["skipped_total"] = 5  # as if 5 steps had been skipped
    torch.save(ckpt, out / "checkpoint.pt")
    run = T._set_up(_args(out, 4, "--resume"), distributed.Dist(device=T.resolve_device("auto")), lambda *_: None)
    assert run.start == 2 and run.accuracy == last["accuracy"] and run.skipped_total == 5
    assert [r["step"] for r in run.history] == [1, 2]


def test_each_record_is_fsynced_before_the_checkpoint_that_follows_it(runs):
    ckpts = [i for i, e in enumerate(runs.events) if e[0] == "checkpoint"]
    assert [runs.events[i][1] for i in ckpts] == [1, 2, 3]
    for i in ckpts:
        assert runs.events[i - 1] == ("fsync", "metrics.jsonl")


def test_a_save_killed_half_way_leaves_no_temp_file_after_the_next_start(runs):
    assert not list(runs.part.glob(".checkpoint.pt.*"))
    assert any(".checkpoint.pt.k2x9.tmp" in line for line in runs.logs)


def test_run_files_share_one_mode(runs):
    modes = {name: stat.S_IMODE((runs.part / name).stat().st_mode)
             for name in ("checkpoint.pt", "metrics.jsonl", "summary.json")}
    assert len(set(modes.values())) == 1, modes


def test_a_cut_short_last_record_is_dropped_with_a_warning(runs):
    out = _copy(runs, "cut")
    metrics = out / "metrics.jsonl"
    kept = metrics.read_text()
    metrics.write_text(kept + '{"step": 3, "reward": 0.4, "accur')
    logs = []
    records = records_up_to(metrics, 2, logs.append)
    assert [r["step"] for r in records] == [1, 2] and metrics.read_text() == kept
    assert any("line 3" in line and "cut short" in line for line in logs)


def test_rewriting_the_records_on_resume_is_atomic(runs, monkeypatch):
    out = _copy(runs, "atomic")
    metrics = out / "metrics.jsonl"
    before = metrics.read_text() + json.dumps({"step": 3}) + "\n"
    metrics.write_text(before)

    def crash(src, dst):
        raise OSError("killed before the rename")

    monkeypatch.setattr(T.os, "replace", crash)
    with pytest.raises(OSError, match="killed"):
        records_up_to(metrics, 2, lambda *_: None)
    assert metrics.read_text() == before


def test_a_damaged_record_in_the_middle_is_a_clear_error_naming_the_line(runs, capsys):
    out = _copy(runs, "junk")
    metrics = out / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(["{not json", *lines[1:]]) + "\n")
    with pytest.raises(SystemExit) as exc:
        main([*FLAGS, "--steps", "3", "--resume", "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "metrics.jsonl line 1" in err and "Traceback" not in err
    assert metrics.read_text().splitlines() == ["{not json", *lines[1:]]  # left for the user to repair


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("damage", ["empty", "cut short", "crafted"])
def test_a_damaged_checkpoint_is_a_clear_cli_error(runs, capsys, damage):
    out = _copy(runs, f"ckpt-{damage.replace(' ', '-')}")
    ckpt = out / "checkpoint.pt"
    marker = out / "pwned"
    if damage == "empty":
        ckpt.write_bytes(b"")
    elif damage == "cut short":
        ckpt.write_bytes(ckpt.read_bytes()[:1000])
    else:
        good = torch.load(ckpt, weights_only=True)
        good["extra"]["payload"] = _Payload(marker)
        torch.save(good, ckpt)
    with pytest.raises(SystemExit) as exc:
        main([*FLAGS, "--steps", "3", "--resume", "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert str(ckpt) in err and "--resume" in err and "Traceback" not in err
    assert not marker.exists()
    assert [r["step"] for r in _records(out)] == [1, 2]


@pytest.mark.parametrize("where", ["a file's child", "read-only"])
def test_an_out_that_cannot_be_written_is_refused_before_any_work(tmp_path, capsys, monkeypatch, where):
    if where == "a file's child":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "sub"
    else:
        out = tmp_path / "ro" / "run"
        (tmp_path / "ro").mkdir()
        # Root writes anywhere a mode allows none, so the check's own question is answered as a read-only
        # filesystem (EROFS) answers it.
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == tmp_path / "ro" else real_access(p, m))
    with pytest.raises(SystemExit) as exc:
        main([*FLAGS, "--steps", "1", "--out", str(out)])
    assert exc.value.code == 2
    assert "--out" in capsys.readouterr().err and not out.exists()


NAN_FLAGS = ["--batch", "2", "--group", "2", "--d-model", "32", "--layers", "1", "--no-progress", "--dataset-size",
             "16", "--eval-every", "100", "--eval-prompts", "4", "--lr", "5", "--steps", "2"]


def test_strict_stops_a_run_whose_policy_turns_nan(tmp_path, capsys):
    """--lr 5 overflows the fp16 policy after one step: the sampler's log-probs are NaN from step 2."""
    assert main([*NAN_FLAGS, "--strict", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "NON-FINITE" in err and "step 2" in err and "--strict" in err
    assert [r["step"] for r in _records(tmp_path)] == [1]


def test_without_strict_a_nan_step_is_skipped_counted_and_logged(tmp_path, capsys):
    assert main([*NAN_FLAGS, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "WARNING NON-FINITE sampler log-probs" in out and "at step 2" in out and "skipped" in out
    first, second = _records(tmp_path)
    assert first["skipped"] == 0 and second["skipped"] >= 1 and second["skipped_total"] >= 1
    assert second["loss"] is None  # NaN is written as null
    summary = json.loads((tmp_path / "summary.json").read_text(), parse_constant=_refuse)
    assert summary["skipped_steps"] == second["skipped_total"]
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert all(torch.isfinite(w).all() for w in ckpt["model"].values())  # no update from the NaN step


def test_a_full_disk_is_a_clear_error_and_resume_continues(runs, capsys, monkeypatch):
    """The checkpoint writer finds the disk full at step 3: the step-2 checkpoint stays, and --resume finishes."""
    import errno

    import rl.checkpoint as C

    out = _copy(runs, "full_disk")
    argv = [*FLAGS, "--steps", "3", "--out", str(out), "--resume"]

    def full(obj, f):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as mp:
        mp.setattr(C.torch, "save", full)
        with pytest.raises(SystemExit) as exc:
            main(argv)
    err = " ".join(capsys.readouterr().err.split())
    assert exc.value.code == 2 and "Traceback" not in err
    assert (f"--out {out}: the disk is full (writing {out / 'checkpoint.pt'}: No space left on device); the last "
            f"checkpoint, {out / 'checkpoint.pt'} (step 2), is intact: free some space and rerun with --resume to "
            f"continue from step 2") in err
    assert C.read_checkpoint(out / "checkpoint.pt")["step"] == 2 and not list(out.glob(".checkpoint.pt.*"))
    assert main(argv) == 0
    assert [_untimed(r) for r in _records(out)] == [_untimed(r) for r in _records(runs.full)]

"""Checkpoints: roundtrip of model, optimizer, scaler, named generators and step; atomic writes."""

import os
import random

import numpy as np
import pytest
import torch

from rl import checkpoint as C


def make():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    return model, opt, scaler


def train_step(model, opt):
    loss = model(torch.randn(5, 4)).square().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_roundtrip_restores_everything(tmp_path):
    model, opt, scaler = make()
    train_step(model, opt)
    gen = torch.Generator().manual_seed(123)
    torch.rand(3, generator=gen)
    path = C.save_checkpoint(tmp_path / "ck" / "last.pt", model=model, optimizer=opt, scaler=scaler, step=17,
                             generators={"sampler": gen}, extra={"config": {"lr": 1e-2}})
    assert path.exists() and os.listdir(path.parent) == ["last.pt"]

    # what the uninterrupted run does next (its batch drawn from a seeded generator, as rl.train's are)
    expect_draw = torch.rand(2, generator=gen)
    torch.manual_seed(1)
    train_step(model, opt)
    expect_params = [p.detach().clone() for p in model.parameters()]

    # a fresh process: different weights, the generator moved on
    model2, opt2, scaler2 = make()
    for p in model2.parameters():
        p.data.add_(1.0)
    gen2 = torch.Generator().manual_seed(999)
    ck = C.load_checkpoint(path, model=model2, optimizer=opt2, scaler=scaler2, generators={"sampler": gen2})
    assert ck["step"] == 17 and ck["extra"] == {"config": {"lr": 1e-2}}
    assert scaler2.get_scale() == 1024.0
    assert torch.equal(torch.rand(2, generator=gen2), expect_draw)
    torch.manual_seed(1)
    train_step(model2, opt2)
    for a, b in zip(model2.parameters(), expect_params):
        assert torch.equal(a, b)


def test_state_dicts_accepted_and_missing_parts(tmp_path):
    model, opt, _ = make()
    path = C.save_checkpoint(tmp_path / "a.pt", model=model.state_dict(), step=0)
    model2, opt2, scaler2 = make()
    C.load_checkpoint(path, model=model2)
    with pytest.raises(ValueError):
        C.load_checkpoint(path, optimizer=opt2)
    with pytest.raises(ValueError):
        C.load_checkpoint(path, scaler=scaler2)
    with pytest.raises(KeyError):
        C.load_checkpoint(path, generators={"sampler": torch.Generator()})


def test_global_rng_states_are_neither_saved_nor_touched(tmp_path):
    """Only named generators travel (rl.checkpoint's module doc says why); loading leaves the global RNGs alone."""
    model, _, _ = make()
    path = C.save_checkpoint(tmp_path / "a.pt", model=model, step=0, generators={"data": torch.Generator()})
    assert set(torch.load(path, weights_only=False)) == {"format_version", "step", "model", "optimizer", "scaler",
                                                         "generators", "extra"}
    random.seed(5)
    np.random.seed(6)
    torch.manual_seed(7)
    expect = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    C.load_checkpoint(path, model=model, generators={"data": torch.Generator()})
    assert torch.equal(torch.get_rng_state(), expect[0]) and random.getstate() == expect[1]
    assert (np.random.get_state()[1] == expect[2]).all()


def test_an_older_format_is_refused_naming_it(tmp_path):
    torch.save({"format_version": 1, "step": 0, "model": {}}, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="format 1"):
        C.load_checkpoint(tmp_path / "old.pt")


class Boom:
    """Pickles half-way, then fails: a crash during the write."""

    def __reduce__(self):
        raise RuntimeError("disk on fire")


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    model, opt, _ = make()
    path = tmp_path / "last.pt"
    C.save_checkpoint(path, model=model, optimizer=opt, step=1)
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="disk on fire"):
        C.save_checkpoint(path, model=model, optimizer=opt, step=2, extra={"x": torch.zeros(1000), "boom": Boom()})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.pt"]
    assert C.load_checkpoint(path)["step"] == 1


def test_failed_first_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        C.atomic_save({"boom": Boom()}, tmp_path / "new.pt")
    assert os.listdir(tmp_path) == []


def test_replace_is_the_commit_point(tmp_path, monkeypatch):
    """Until os.replace runs, the destination holds the old contents."""
    path = tmp_path / "x.pt"
    C.atomic_save({"v": 1}, path)
    seen = {}

    def spy(src, dst):
        seen["old"] = torch.load(dst, weights_only=False)
        seen["src_dir"] = os.path.dirname(src)
        raise OSError("crash just before rename")

    monkeypatch.setattr(C.os, "replace", spy)
    with pytest.raises(OSError):
        C.atomic_save({"v": 2}, path)
    assert seen["old"] == {"v": 1} and seen["src_dir"] == str(tmp_path)
    assert os.listdir(tmp_path) == ["x.pt"]
    assert torch.load(path, weights_only=False) == {"v": 1}


class _Payload:
    """A pickle that runs a shell command when loaded: what a crafted checkpoint carries."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path):
    """Both readers of user-given checkpoints: rl.checkpoint (--resume) and rl.mismatch (benchmarks, rl.demo)."""
    from rl.mismatch import load_policy

    marker = tmp_path / "pwned"
    model, _, _ = make()
    path = C.save_checkpoint(tmp_path / "evil.pt", model=model, step=1,
                             extra={"args": {"d_model": 4, "layers": 1, "heads": 1}, "payload": _Payload(marker)})
    for load in (C.load_checkpoint, load_policy):
        with pytest.raises(C.CheckpointError, match="refused.*could run code") as exc:
            load(path)
        assert str(path) in str(exc.value) and "posix.system" in str(exc.value)
        assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 cut short"], ids=["empty", "cut-short"])
def test_an_empty_or_cut_short_file_is_a_checkpoint_error_naming_it(tmp_path, content):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(content)
    with pytest.raises(C.CheckpointError, match=str(path)):
        C.load_checkpoint(path)
    with pytest.raises(C.CheckpointError, match="no such checkpoint"):
        C.load_checkpoint(tmp_path / "missing.pt")


def test_a_checkpoint_gets_the_mode_of_any_new_file(tmp_path):
    old = os.umask(0o022)
    try:
        path = C.save_checkpoint(tmp_path / "a.pt", model={}, step=0)
        other = tmp_path / "metrics.jsonl"
        other.write_text("")
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == (other.stat().st_mode & 0o777) == 0o644


def test_stale_temps_of_a_killed_save_are_removed(tmp_path):
    path = tmp_path / "checkpoint.pt"
    C.save_checkpoint(path, model={}, step=3)
    stale = [tmp_path / ".checkpoint.pt.abc123.tmp", tmp_path / ".checkpoint.pt.x.tmp"]
    for s in stale:
        s.write_bytes(b"half")
    keep = tmp_path / ".other.pt.abc.tmp"
    keep.write_bytes(b"another file's")
    assert C.remove_stale_temps(path) == sorted(stale)
    assert sorted(os.listdir(tmp_path)) == [".other.pt.abc.tmp", "checkpoint.pt"]
    assert C.load_checkpoint(path)["step"] == 3


def test_digest_json_is_the_data_not_its_spelling():
    a = C.digest_json({"rms_norm_eps": 1e-6, "layers": [1, 2]})
    assert a == C.digest_json({"layers": [1, 2], "rms_norm_eps": 0.000001})
    assert a != C.digest_json({"rms_norm_eps": 1e-5, "layers": [1, 2]})


def test_digest_files_covers_names_and_bytes(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"12")
    (tmp_path / "b.bin").write_bytes(b"3")
    both = C.digest_files([tmp_path / "b.bin", tmp_path / "a.bin"])
    assert both == C.digest_files([tmp_path / "a.bin", tmp_path / "b.bin"]) and C.digest_files([]) is None
    (tmp_path / "b.bin").write_bytes(b"4")
    assert C.digest_files([tmp_path / "a.bin", tmp_path / "b.bin"]) != both


def test_identity_conflicts_name_each_changed_part():
    stored = {"config": "a" * 64, "weights": None, "tokenizer": "c" * 64}
    assert C.identity_conflicts(stored, dict(stored)) == []
    assert C.identity_conflicts(None, stored) == []
    changed = C.identity_conflicts(stored, {**stored, "config": "b" * 64, "weights": "d" * 64})
    assert changed == ["its config (aaaaaaaaaaaa stored, bbbbbbbbbbbb now)",
                       "its weights (none stored, dddddddddddd now)"]

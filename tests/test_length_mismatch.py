"""benchmarks.length_mismatch in reduced form: a tiny TinyGPT, two lengths, every configuration.

The figures themselves are tested on hand-made tensors (tests/test_diagnostics.py); here, that the tool
writes one record per configuration and length with the names other dashboards read, one fit record per
configuration, and that the matched configuration is exactly zero at every length.
"""

from __future__ import annotations

import json
import math

import pytest

import benchmarks.length_mismatch as LM

LENGTH_FIELDS = {"sampler", "learner", "precision", "profile", "length", "mean_abs_dlogp", "clip_frac",
                 "seq_logratio_mean", "seq_logratio_std", "ess_seq"}
TINY = ["--model", "tinygpt", "--lengths", "2,5", "--responses", "3", "--vocab", "24", "--d-model", "16",
        "--tiny-layers", "1", "--heads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm") / "out.json"
    assert LM.main([*TINY, "--json", str(path)]) == 0  # 0: the matched rows were exactly zero
    return json.loads(path.read_text())


def test_one_record_per_configuration_and_length_with_the_dashboard_names(records):
    lengths = [r for r in records if r["kind"] == "length"]
    assert sorted((r["config"], r["length"]) for r in lengths) == sorted(
        (c, n) for c in LM.CONFIGS for n in (2, 5))
    for r in lengths:
        assert LENGTH_FIELDS <= set(r), r["config"]
        assert r["n_seqs"] == 3 and r["n_tokens"] == 3 * r["length"]  # TinyGPT samples to the full length
        assert 0 < r["ess_seq"] <= 1 and 0 <= r["clip_frac"] <= 1
    fits = [r for r in records if r["kind"] == "fit"]
    assert sorted(r["config"] for r in fits) == sorted(LM.CONFIGS)
    assert all(math.isfinite(r["slope_nats_per_1k"]) for r in fits)


def test_matched_is_exactly_zero_at_every_length_and_the_engine_is_not(records):
    by = {(r["config"], r["length"]): r for r in records if r["kind"] == "length"}
    for n in (2, 5):
        m = by["matched-bf16", n]
        assert (m["mean_abs_dlogp"], m["clip_frac"], m["seq_logratio_mean"], m["seq_logratio_std"], m["ess_seq"]) \
            == (0.0, 0.0, 0.0, 0.0, 1.0)
        assert (m["sampler"], m["learner"], m["profile"]) == ("bf16", "bf16", "matched")
        e = by["engine-bf16", n]
        assert e["mean_abs_dlogp"] > 0 and e["seq_logratio_std"] > 0 and e["ess_seq"] < 1
    fit = next(r for r in records if r["kind"] == "fit" and r["config"] == "matched-bf16")
    assert fit["slope_nats_per_1k"] == 0.0
    assert by["bf16-rollout-fp32-learner", 2]["learner"] == "fp32"


def test_a_nonzero_matched_row_fails_the_check(records):
    broken = [dict(r) for r in records]
    row = next(r for r in broken if r["kind"] == "length" and r["config"] == "matched-bf16")
    row["ess_seq"] = 1.0 - 2**-52
    assert LM.matched_zero(records) and not LM.matched_zero(broken)


@pytest.mark.parametrize("flags,flag", [
    (["--lengths", "8,4"], "--lengths"), (["--lengths", "0"], "--lengths"), (["--lengths", "a"], "--lengths"),
    (["--configs", "engine-bf8"], "--configs"), (["--responses", "0"], "--responses"),
    (["--model", "smollm2:31"], "--model"), (["--model", "gpt9"], "--model"),
    (["--d-model", "15", "--heads", "2"], "--d-model"),
])
def test_bad_flags_are_refused_before_any_work(flags, flag, capsys, monkeypatch):
    monkeypatch.setattr(LM, "measure", lambda *a, **k: pytest.fail("measured before the flags were checked"))
    with pytest.raises(SystemExit) as exc:
        LM.main([*TINY, *flags])
    assert exc.value.code == 2 and flag in capsys.readouterr().err


def test_a_hugging_face_model_with_a_tokenizer(tmp_path):
    """The HF path: chat prompts, the lab's own sampler and learner (matched exactly 0), plain generate()."""
    pytest.importorskip("transformers")
    from rl.tiny_hf import write_tiny_llama

    config = write_tiny_llama(tmp_path / "tiny", layers=1)
    path = tmp_path / "out.json"
    assert LM.main(["--model", f"hf:{config.parent}", "--lengths", "2,3", "--responses", "2", "--no-progress",
                    "--configs", "matched-bf16,engine-bf16,torch-fp32", "--json", str(path)]) == 0
    by = {(r["config"], r["length"]): r for r in json.loads(path.read_text()) if r["kind"] == "length"}
    assert by["matched-bf16", 3]["n_tokens"] > 0 and by["matched-bf16", 3]["ess_seq"] == 1.0
    assert by["engine-bf16", 2]["n_tokens"] > 0 and by["torch-fp32", 2]["n_tokens"] > 0


def test_long_task_prompts_are_the_runs_own(tmp_path):
    """--long-task L samples the prompts an rl.train --task long run of --seed draws from."""
    pytest.importorskip("transformers")
    import argparse

    import torch

    from rl import hf
    from rl.task_views import TextTask
    from rl.tiny_hf import write_tiny_llama

    config = write_tiny_llama(tmp_path / "tiny", layers=1)
    args = argparse.Namespace(model=f"hf:{config.parent}", seed=3, responses=2, long_task=40)
    side = LM.HFSide(args, max_len=4)
    tok = hf.load_model(hf.parse_model(args.model), 0, torch.device("cpu"))[1]
    want = TextTask("long", tok, length=40).prompt_set(2, 3, torch.device("cpu"))
    assert torch.equal(side.ids, want.ids) and torch.equal(side.mask, want.mask)


@pytest.mark.parametrize("flags", [["--long-task", "16"], ["--long-task", "64", "--model", "tinygpt"]])
def test_long_task_takes_a_task_length_and_an_hf_model(flags, capsys):
    with pytest.raises(SystemExit) as exc:
        LM.main([*TINY[:1], "smollm2:2", *TINY[2:], *flags])
    assert exc.value.code == 2 and "--long-task" in capsys.readouterr().err


def test_a_run_cut_short_keeps_the_configurations_it_finished(tmp_path, monkeypatch):
    """The JSON and the plots are written after each configuration, not only at the end of a long run."""
    pytest.importorskip("matplotlib")
    real_run, calls = LM.TinyGPTSide.run, []

    def cut_after_one(self, *a, **k):
        calls.append(a)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the run is stopped while the second configuration is measured
        return real_run(self, *a, **k)

    monkeypatch.setattr(LM.TinyGPTSide, "run", cut_after_one)
    path, prefix = tmp_path / "out.json", tmp_path / "plot"
    with pytest.raises(KeyboardInterrupt):
        LM.main([*TINY, "--configs", "engine-bf16,matched-bf16", "--json", str(path), "--png", str(prefix)])
    kept = json.loads(path.read_text())
    assert sorted((r["kind"], r.get("length")) for r in kept) == [("fit", None), ("length", 2), ("length", 5)]
    assert {r["config"] for r in kept} == {"engine-bf16"}
    assert kept[-1]["cpu_seconds"] > 0 and kept[-1]["seconds"] > 0
    assert (tmp_path / "plot_seq_logratio.png").stat().st_size > 0
    assert (tmp_path / "plot_token_probs.png").stat().st_size > 0

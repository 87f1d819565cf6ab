"""rl.train's bad models, refused before any work with a clear error (``--out`` is not even created).

hf: configs that cannot build a model or would not fit the machine, model directories that name
their own code, equivalent spellings of a model, a resume onto a changed model or with flags the
checkpoint predates, and a disk that fills up during a run.
"""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest

import rl.checkpoint as C
from rl import hf
from rl.run_records import plain_args
from rl.tiny_hf import write_tiny_llama
from rl.train import main
from rl.train_flags import build_parser, model_identity_of, resume_conflicts

pytest.importorskip("transformers")

RUN = ["--steps", "1", "--batch", "2", "--group", "2", "--no-progress"]


def _refused(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err, err
    return " ".join(err.split())


@pytest.fixture(scope="module")
def ids_config(tmp_path_factory):
    """A tiny Llama config without a tokenizer: the synthetic tasks' ids."""
    return json.loads(write_tiny_llama(tmp_path_factory.mktemp("ids"), layers=1, tokenizer=False,
                                       vocab_size=16).read_text())


@pytest.mark.parametrize("content, match", [
    (lambda c: {k: v for k, v in c.items() if k != "model_type"}, 'no "model_type"'),
    (lambda c: {"added_tokens": [], "model": {"type": "WordLevel", "vocab": {"a": 0}}}, "a tokenizer file"),
    (lambda c: {**c, "num_attention_heads": 0}, "num_attention_heads must be a positive int, got 0"),
    (lambda c: [c], "a JSON list, expected an object"),
    (lambda c: {**c, "vocab_size": "16"}, "vocab_size must be a positive int, got '16'"),
    (lambda c: {**c, "hidden_size": -32}, "hidden_size must be a positive int, got -32"),
    (lambda c: {**c, "num_hidden_layers": 10**6}, "training it needs at least"),
    (lambda c: {**c, "hidden_size": 40000, "intermediate_size": 80000}, "training it needs at least"),
    (lambda c: "{", "not valid JSON"),
    (lambda c: "", "the file is empty"),
])
def test_a_bad_hf_config_is_refused_naming_the_flag_and_the_file(tmp_path, capsys, ids_config, content, match):
    config = tmp_path / "config.json"
    made = content(ids_config)
    config.write_text(made if isinstance(made, str) else json.dumps(made))
    out = tmp_path / "out"
    err = _refused(["--model", f"hf:{config}", *RUN, "--out", str(out)], capsys)
    assert f"--model hf:{config}: {config}: " in err and match in err
    assert not out.exists()


def test_a_model_directory_naming_its_own_code_never_runs_it(tmp_path, capsys, monkeypatch):
    """With "y" on stdin (transformers' "run the custom code?" prompt), the directory's code still does not run."""
    model = tmp_path / "evil_model"
    write_tiny_llama(model, layers=1, tokenizer=False, vocab_size=16)
    ran = tmp_path / "ran"
    (model / "evil.py").write_text(f"open({str(ran)!r}, 'w').write('the directory ran its code')\n"
                                   "from transformers import PreTrainedTokenizerFast as EvilTok\n")
    (model / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["evil.EvilTok", None]},
                                                             "tokenizer_class": "EvilTok"}))
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 10))
    monkeypatch.syspath_prepend(str(model))
    out = tmp_path / "out"
    err = _refused(["--model", f"hf:{model}", *RUN, "--out", str(out)], capsys)
    assert f"{model / 'tokenizer_config.json'} names custom code in auto_map (evil.EvilTok)" in err
    assert not ran.exists() and not out.exists()


@pytest.mark.parametrize("spelling", ["smollm2:٣", "smollm2:03", "smollm2:３", "smollm2:+3"])
def test_a_layer_count_has_one_spelling(spelling):
    with pytest.raises(ValueError, match="--model smollm2:LAYERS takes LAYERS in"):
        hf.parse_model(spelling)
    assert hf.parse_model("smollm2:3").layers == 3


def _hf_checkpoint(out, config_file):
    """A stored hf: run (step 1) as rl.train writes it: its flags and its model's digests."""
    args = build_parser().parse_args(["--model", f"hf:{config_file}", *RUN, "--out", str(out)])
    C.save_checkpoint(out / "checkpoint.pt", model={}, step=1,
                      extra={"args": plain_args(args), "model": model_identity_of(args)})
    (out / "metrics.jsonl").write_text('{"step": 1}\n')


@pytest.mark.parametrize("change", [{"rms_norm_eps": 1e-3}, {"num_hidden_layers": 2}])
def test_a_resume_refuses_a_changed_model_by_name(tmp_path, capsys, ids_config, change):
    config = tmp_path / "model" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps(ids_config))
    out = tmp_path / "out"
    out.mkdir()
    _hf_checkpoint(out, config)
    config.write_text(json.dumps({**ids_config, **change}))
    err = _refused(["--model", f"hf:{config}", *RUN, "--out", str(out), "--resume"], capsys)
    assert f"--resume: --model hf:{config} is not the model the checkpoint trained: its config (" in err
    assert (out / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_a_resume_refuses_an_hf_checkpoint_without_model_digests(tmp_path, capsys, ids_config):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(ids_config))
    out = tmp_path / "out"
    out.mkdir()
    args = build_parser().parse_args(["--model", f"hf:{config}", *RUN, "--out", str(out)])
    C.save_checkpoint(out / "checkpoint.pt", model={}, step=1, extra={"args": plain_args(args)})
    err = _refused(["--model", f"hf:{config}", *RUN, "--out", str(out), "--resume"], capsys)
    assert "--resume: the checkpoint stores no digest of its model" in err


def test_flags_a_stored_run_predates_compare_as_their_old_default(tmp_path):
    """A format-2 checkpoint from before --model and --rollout-precision: it ran TinyGPT with bf16 linears."""
    stored = plain_args(build_parser().parse_args(["--precision", "bf16", "--out", str(tmp_path)]))
    for newer in ("model", "rollout_precision", "linear_precision"):
        del stored[newer]
    same = build_parser().parse_args(["--precision", "bf16", "--out", str(tmp_path), "--resume"])
    assert resume_conflicts(stored, same) == []
    fp8 = build_parser().parse_args(["--precision", "bf16", "--out", str(tmp_path), "--resume",
                                     "--rollout-precision", "fp8"])
    assert resume_conflicts(stored, fp8) == [
        "--rollout-precision: stored nothing (the run predates the flag: it ran as None), now 'fp8'"]


def test_load_smollm2_names_a_damaged_file(tmp_path):
    gguf = pytest.importorskip("gguf")
    from rl.gguf_check import GGUFFileError

    path = tmp_path / "model.gguf"
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_block_count(1)
    w.add_tensor("output_norm.weight", np.ones(4, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:60])
    with pytest.raises(GGUFFileError, match=f"^{cut}: not a readable GGUF file: the file ends inside"):
        hf.load_smollm2(path=cut)

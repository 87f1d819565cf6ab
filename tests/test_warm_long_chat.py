"""benchmarks.warm_long_chat on a tiny HF Llama: the teacher-forced batch, and a saved model rl.train can read."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

import benchmarks.warm_long_chat as W  # noqa: E402
from rl import hf  # noqa: E402
from rl.task_views import TextTask  # noqa: E402
from rl.tiny_hf import write_tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("tiny") / "m", layers=1).parent


def test_the_teacher_batch_labels_only_the_answer_and_its_eos(tiny):
    tok = hf.load_model(hf.parse_model(f"hf:{tiny}"), 0, torch.device("cpu"))[1]
    task = TextTask("long", tok, length=32, period=2)
    prompts = task.prompt_set(3, 0, torch.device("cpu"))
    ids, mask, labels = W.teacher_batch(task, prompts, [0, 2])
    for i, r in enumerate([0, 2]):
        prompt = prompts.ids[r][prompts.mask[r].bool()].tolist()
        answer = tok(prompts.answers[r], add_special_tokens=False)["input_ids"] + [task.eos_id]
        n = len(prompt) + len(answer)
        assert ids[i, :n].tolist() == prompt + answer and mask[i, :n].all() and not mask[i, n:].any()
        assert (labels[i, :len(prompt)] == -100).all() and labels[i, len(prompt):n].tolist() == answer
        assert (labels[i, n:] == -100).all()


def test_the_warmed_model_is_saved_where_rl_train_reads_it(tiny, tmp_path):
    out = tmp_path / "warm"
    assert W.main(["--model", f"hf:{tiny}", "--length", "32", "--period", "1", "--target", "1.0", "--high", "1.0",
                   "--max-steps", "2", "--eval-every", "1", "--eval-prompts", "1", "--batch", "1",
                   "--out", str(out)]) == 0
    record = json.loads((out / "warmup.json").read_text())
    assert record["steps"] == 2 and [h["step"] for h in record["history"]] == [0, 1, 2]
    spec = hf.parse_model(f"hf:{out}")
    assert spec.has_tokenizer and not spec.random_init  # trained weights, not a fresh draw from the config
    warmed, _ = hf.load_model(spec, 0, torch.device("cpu"))
    start, _ = hf.load_model(hf.parse_model(f"hf:{tiny}"), 0, torch.device("cpu"))
    assert any(not torch.equal(a, b) for a, b in zip(warmed.state_dict().values(), start.state_dict().values()))


def test_an_out_directory_with_files_is_refused_without_force_and_kept(tiny, tmp_path, capsys):
    out = tmp_path / "warm"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"a user's model")
    with pytest.raises(SystemExit) as e:
        W.main(["--model", f"hf:{tiny}", "--out", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--out" in err and "--force" in err
    assert (out / "model.safetensors").read_bytes() == b"a user's model"


def test_an_out_that_names_a_file_is_refused_and_kept(tiny, tmp_path, capsys):
    out = tmp_path / "warm"
    out.write_bytes(b"a user's file")
    with pytest.raises(SystemExit) as e:
        W.main(["--model", f"hf:{tiny}", "--out", str(out), "--force"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--out" in err and "not a directory" in err
    assert out.read_bytes() == b"a user's file"

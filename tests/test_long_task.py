"""The long-response task (rl.long_task): per-position credit, the EOS, padding, and what a uniform policy earns."""

from __future__ import annotations

import pytest
import torch

from rl.long_task import LongTask, check_band
from rl.tasks import response_mask

# 8 symbols in 4 classes (id mod 4), a pattern of 2, 32 positions then EOS: SEP 8, EOS 9, PAD 10.
TASK = LongTask(length=32, symbols=8, classes=4, period=2)
PROMPT = torch.tensor([[1, 6, 8]])           # classes 1, 2: positions 0, 2, 4, ... want class 1, the others 2
L, EOS, PAD = 32, 9, 10


def right_answer() -> torch.Tensor:
    return torch.tensor([[1, 6] * 16 + [EOS]])


def test_ids_and_the_answer_it_imitates():
    assert (TASK.vocab_size, TASK.eos_id, TASK.pad_id, TASK.prompt_len, TASK.max_new_tokens) == (11, EOS, PAD, 3, 33)
    assert TASK.solve(PROMPT).tolist() == [[1, 6] * 16]
    assert torch.equal(TASK.targets(TASK.solve(PROMPT)), right_answer())


def test_credit_is_per_position_by_class():
    r = right_answer()
    assert TASK.reward(PROMPT, r).item() == 1.0
    other = r.clone()
    other[0, 0], other[0, 1] = 5, 2             # other symbols of the right classes (5 mod 4 = 1, 2 mod 4 = 2)
    assert TASK.reward(PROMPT, other).item() == 1.0
    wrong = r.clone()
    wrong[0, 1], wrong[0, 4] = 3, 0             # classes 3 and 0 where 2 and 1 are wanted
    assert TASK.reward(PROMPT, wrong).item() == pytest.approx(31 / 33)
    assert TASK.reward(PROMPT, wrong, partial=False).item() == 0.0
    assert TASK.reward(PROMPT, r, partial=False).item() == 1.0


def test_an_early_eos_earns_nothing_and_loses_the_rest():
    r = right_answer()
    r[0, 10] = EOS  # the right symbols after it are never counted
    assert TASK.reward(PROMPT, r).item() == pytest.approx(10 / 33)
    mask = response_mask(r, EOS)
    assert mask[0, :11].all() and not mask[0, 11:].any()
    assert TASK.reward(PROMPT, r, mask).item() == pytest.approx(10 / 33)


def test_padding_and_short_responses():
    r = right_answer()
    r[0, 20] = EOS
    r[0, 21:] = PAD
    assert TASK.reward(PROMPT, r).item() == pytest.approx(20 / 33)
    # no EOS at position L (the response ran out): the L symbols count, the stop does not
    assert TASK.reward(PROMPT, right_answer()[:, :L]).item() == pytest.approx(32 / 33)
    # a symbol where the EOS belongs: the L symbols count, the stop does not
    late = right_answer()
    late[0, L] = 1
    assert TASK.reward(PROMPT, late).item() == pytest.approx(32 / 33)
    # a mask that ends early (the sampler stopped the row) hides what comes after
    mask = torch.zeros(1, L + 1, dtype=torch.bool)
    mask[0, :5] = True
    assert TASK.reward(PROMPT, right_answer(), mask).item() == pytest.approx(5 / 33)
    # PAD is not a symbol, though its id modulo the classes (10 mod 4 = 2) is the class wanted at position 1
    pad = right_answer()
    pad[0, 1] = PAD
    assert TASK.reward(PROMPT, pad).item() == pytest.approx(32 / 33)


def test_a_uniform_policy_earns_uniform_reward():
    task = LongTask(length=32, symbols=6, classes=4, period=3)  # classes of 2, 2, 1, 1 symbols
    g = torch.Generator().manual_seed(0)
    n = 40000
    prompts, _ = task.sample(n, g)
    responses = torch.randint(0, task.vocab_size, (n, task.max_new_tokens), generator=g)
    got = task.reward(prompts, responses).double().mean().item()
    assert got == pytest.approx(task.uniform_reward(), abs=3e-3)  # about 6 standard errors
    # the formula written out in float64: 9 tokens, classes of 2, 2, 1, 1 of the 6 symbols
    per_position = (4 + 4 + 1 + 1) / (6 * 9)
    want = (sum((8 / 9) ** t * per_position for t in range(32)) + (8 / 9) ** 32 / 9) / 33
    assert task.uniform_reward() == pytest.approx(want, rel=1e-12)


def test_text_form():
    (messages, answer), = LongTask(length=32, period=3).text_problems(1, seed=0)
    pattern = answer.split()[:3]
    assert answer.split() == [pattern[t % 3] for t in range(32)] and " ".join(pattern) in messages[0]["content"]
    assert TASK.text_reward(answer, answer, stopped=True) == 1.0
    words = answer.split()
    assert TASK.text_reward(answer, " ".join(words[:10]), stopped=True) == pytest.approx(10 / 33)
    assert TASK.text_reward(answer, answer, stopped=False) == pytest.approx(32 / 33)


@pytest.mark.parametrize("kwargs,name", [({"length": 31}, "length"), ({"length": 257}, "length"),
                                         ({"symbols": 1}, "symbols"), ({"classes": 1}, "classes"),
                                         ({"classes": 9, "symbols": 8}, "classes"), ({"period": 0}, "period"),
                                         ({"length": 64.0}, "length")])
def test_bad_parameters_are_refused(kwargs, name):
    with pytest.raises(ValueError, match=name):
        LongTask(**kwargs)


def test_band():
    assert check_band(0.2) and check_band(0.8) and not check_band(0.19) and not check_band(float("nan"))


def test_a_fresh_tinygpt_starts_near_the_uniform_reward_below_the_band():
    from rl.model import ModelConfig, TinyGPT

    task = LongTask(length=32, symbols=64)
    model = TinyGPT(ModelConfig(vocab_size=task.vocab_size, max_seq_len=task.seq_len, precision="fp32"), seed=0)
    prompts, _ = task.make_dataset(128, seed=0)
    score = task.warmup_score(model, prompts, seed=0)
    assert score == pytest.approx(task.uniform_reward(), abs=0.04) and not check_band(score)


# ---- in the training loop ---------------------------------------------------------------------------------

RUN = ["--task", "long", "--response-length", "32", "--symbols", "16", "--steps", "1", "--batch", "2", "--group", "2",
       "--d-model", "16", "--layers", "1", "--heads", "1", "--eval-every", "100", "--eval-prompts", "2",
       "--dataset-size", "8", "--no-progress"]


@pytest.mark.parametrize("flags,flag", [
    (["--task", "reverse", "--response-length", "64"], "--response-length"),
    (["--task", "add", "--symbols", "64"], "--symbols"),
    (["--task", "long", "--response-length", "16"], "--response-length"),
    (["--task", "long", "--response-length", "512"], "--response-length"),
    (["--task", "long", "--symbols", "1"], "--symbols"),
    (["--task", "reverse", "--period", "2"], "--period"),
    (["--task", "long", "--period", "0"], "--period"),
])
def test_long_task_flags_are_checked_before_any_work(tmp_path, capsys, flags, flag):
    from rl.train import main

    with pytest.raises(SystemExit) as exc:
        main([*flags, "--out", str(tmp_path / "run")])
    assert exc.value.code == 2 and flag in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_tinygpt_run_on_the_long_task_warms_up_on_the_sampled_reward(tmp_path):
    import json

    from rl.train import build_parser, train

    logs: list[str] = []
    summary = train(build_parser().parse_args([*RUN, "--warmup-target", "0.0", "--out", str(tmp_path)]),
                    log=logs.append)
    assert summary["warmup"]["figure"] == "sampled mean reward" and summary["warmup"]["steps"] == 0
    assert summary["config"]["vocab_size"] == 19 and summary["config"]["max_seq_len"] == 5 + 33
    (record,) = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert 0 <= record["reward"] <= 1 and record["n_tokens"] > 0 and record["ess_seq"] == 1.0  # fp16 matched
    assert any("sampled mean reward" in line for line in logs)


def test_the_chat_form_through_a_tokenizer():
    pytest.importorskip("transformers")
    from rl.task_views import TextTask
    from rl.tiny_hf import char_tokenizer

    tok = char_tokenizer()
    view = TextTask("long", tok, length=32)
    prompts = view.prompt_set(2, seed=0, device=torch.device("cpu"))
    assert view.max_new_tokens == 65 and len(prompts.answers[0].split()) == 32
    right = tok(prompts.answers[0])["input_ids"] + [view.eos_id]
    short = tok(" ".join(prompts.answers[1].split()[:8]))["input_ids"] + [view.eos_id]
    width = max(len(right), len(short))
    responses = torch.tensor([row + [view.pad_id] * (width - len(row)) for row in (right, short)])
    mask = torch.arange(width)[None, :] < torch.tensor([len(right), len(short)])[:, None]
    assert view.reward(prompts, responses, mask, partial=True).tolist() == pytest.approx([1.0, 8 / 33])


def test_the_period_flag_reaches_the_task():
    from rl.tasks import get_any_task
    from rl.train_flags import build_parser, task_options

    args = build_parser().parse_args(["--task", "long", "--response-length", "32", "--period", "1"])
    task = get_any_task("long", **task_options(args))
    assert task.period == 1 and task.prompt_len == 2
    answer = task.text_problems(1, seed=0)[0][1].split()
    assert len(answer) == 32 and len(set(answer)) == 1  # one word, repeated

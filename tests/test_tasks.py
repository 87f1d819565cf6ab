"""Tasks: tokenizer, exact rewards on hand-made cases, dataset determinism, teacher forcing."""

import pytest
import torch

from rl.tasks import EOS_ID, PAD_ID, AddTask, ReverseTask, SortTask, get_task, response_mask

E, P_ = EOS_ID, PAD_ID


def ids(s: str) -> list[int]:
    """Hand tokenizer for the tests: digits, '=' 10, '$' EOS 11, '_' PAD 12, '+' 13."""
    table = {"=": 10, "$": 11, "_": 12, "+": 13}
    return [int(c) if c.isdigit() else table[c] for c in s]


def t(*rows: str) -> torch.Tensor:
    return torch.tensor([ids(r) for r in rows])


def test_layout_and_sizes():
    for task, P, A, V in [(ReverseTask(), 7, 6, 13), (SortTask(), 7, 6, 13), (AddTask(), 8, 4, 14)]:
        assert (task.prompt_len, task.answer_len, task.vocab_size) == (P, A, V)
        assert task.eos_id == 11 and task.pad_id == 12 and task.max_new_tokens == A + 1
        assert task.prompt_len <= 8 and task.max_new_tokens <= 8 and task.vocab_size <= 16
        assert task.seq_len <= 16


def test_tokenizer_roundtrip():
    task = AddTask()
    assert task.tokenizer.encode("12+9=$_") == ids("12+9=$_")
    assert task.tokenizer.decode(ids("12+9=$_")) == "12+9=$_"
    assert task.decode(torch.tensor(ids("0123$45")), stop_at_eos=True) == "0123"
    with pytest.raises(ValueError):
        ReverseTask().tokenizer.encode("1+2")  # no '+' in the reverse vocabulary


def test_solutions():
    assert t("123456=").tolist() == ReverseTask().format_prompt("123456=")[None].tolist()
    assert ReverseTask().solve(t("402917=")).tolist() == [ids("719204")]
    assert SortTask().solve(t("402917=")).tolist() == [ids("012479")]
    assert AddTask().solve(t("123+908=", "999+999=", "000+000=")).tolist() == [
        ids("1031"), ids("1998"), ids("0000")]


def test_reward_exact_cases():
    task = ReverseTask()
    prompts = t("123456=", "123456=", "123456=", "123456=", "123456=", "123456=")
    responses = t(
        "654321$",   # perfect
        "654320$",   # one digit wrong
        "654321_",   # no EOS where it belongs
        "654$___",   # stopped early: 3 digits right, EOS at position 3 is wrong
        "000000$",   # only EOS right
        "6543211",   # all digits right, an extra digit instead of EOS
    )
    partial = task.reward(prompts, responses)
    assert partial.tolist() == pytest.approx([7 / 7, 6 / 7, 6 / 7, 3 / 7, 1 / 7, 6 / 7])
    assert task.reward(prompts, responses, partial=False).tolist() == [1, 0, 0, 0, 0, 0]
    assert task.accuracy(prompts, responses) == pytest.approx(1 / 6)


def test_reward_respects_mask_and_short_responses():
    task = SortTask()
    prompts = t("311200=")
    right = t("001123$")
    # Positions outside the mask never count, even if the token there is correct.
    mask = torch.tensor([[True, True, True, False, False, False, False]])
    assert task.reward(prompts, right, mask).tolist() == pytest.approx([3 / 7])
    # A response narrower than answer + EOS loses the missing positions.
    assert task.reward(prompts, t("0011"), partial=True).tolist() == pytest.approx([4 / 7])
    # Tokens after the first EOS are ignored (the default mask stops there).
    assert task.reward(prompts, t("001123$99"), partial=False).tolist() == [1.0]


def test_reward_add_task():
    task = AddTask()
    prompts = t("123+908=", "500+500=")
    assert task.reward(prompts, t("1031$", "1000$"), partial=False).tolist() == [1.0, 1.0]
    assert task.reward(prompts, t("1030$", "0100$")).tolist() == pytest.approx([4 / 5, 3 / 5])


def test_response_mask():
    r = t("12$45", "$$$$$", "12345")
    assert response_mask(r, E).tolist() == [
        [True, True, True, False, False], [True, False, False, False, False], [True] * 5]


@pytest.mark.parametrize("name", ["reverse", "sort", "add"])
def test_dataset_deterministic_distinct_and_correct(name):
    task = get_task(name)
    p1, a1 = task.make_dataset(512, seed=0)
    p2, a2 = task.make_dataset(512, seed=0)
    p3, _ = task.make_dataset(512, seed=1)
    assert p1.shape == (512, task.prompt_len) and a1.shape == (512, task.answer_len)
    assert p1.dtype == torch.long and torch.equal(p1, p2) and torch.equal(a1, a2)
    assert not torch.equal(p1, p3)
    assert len({tuple(r) for r in p1.tolist()}) == 512
    assert (p1[:, -1] == 10).all() and torch.equal(a1, task.solve(p1))
    # A perfect response earns full reward everywhere.
    targets = task.targets(a1)
    assert task.reward(p1, targets, partial=False).sum().item() == 512


def test_dataset_is_pinned():
    """The fixed training set must not drift between versions: pin its first prompts."""
    p, _ = ReverseTask().make_dataset(512, seed=0)
    assert ReverseTask().decode(p[0]) == "493039="


def test_teacher_forcing():
    task = AddTask()
    prompts = t("123+908=")
    seq = task.teacher_forcing(prompts)
    assert seq.tolist() == [ids("123+908=1031$")]
    assert seq.shape[1] == task.seq_len


def test_greedy_decode_conventions():
    """greedy_decode stops each row at EOS, pads after it, and marks the mask up to and including EOS."""
    from rl.decoding import greedy_decode

    plan = torch.tensor([[3, E, 5], [E, 1, 1], [4, 4, 4]])  # row i emits plan[i, step]

    def logits_fn(seq):
        step = seq.shape[1] - 2  # prompts are 2 wide
        return torch.nn.functional.one_hot(plan[:, step], 14).float()[:, None, :].expand(-1, seq.shape[1], -1)

    resp, mask = greedy_decode(lambda seq: logits_fn(seq)[:, -1], torch.zeros(3, 2, dtype=torch.long), 3, E, P_)
    assert resp.tolist() == [[3, E, P_], [E, P_, P_], [4, 4, 4]]
    assert mask.tolist() == [[True, True, False], [True, False, False], [True, True, True]]


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_warmup_reaches_partial_accuracy_on_module_and_param_dict(one_thread):
    """The supervised warm-up trains the model's plain-torch forward, or a parameter dict with a logits function."""
    from rl.model import ModelConfig, TinyGPT
    from rl.torch_model import torch_forward, torch_logits
    from rl.warmup import greedy_accuracy, supervised_warmup, teacher_forcing_loss

    task = ReverseTask(n_digits=3)
    prompts, answers = task.make_dataset(64, seed=0)
    cfg = ModelConfig(vocab_size=task.vocab_size, d_model=32, n_layers=1, n_heads=2, max_seq_len=8)
    model = TinyGPT(cfg, seed=0)
    seqs = task.teacher_forcing(prompts, answers)
    forward = torch_forward(model)
    before = teacher_forcing_loss(forward, seqs, task.prompt_len).item()
    res = supervised_warmup(forward, task, prompts, params=model.parameters(), stop_at=0.3, max_acc=1.0,
                            max_steps=150, seed=0)
    assert res.reached and res.accuracy >= 0.3 and 0 < res.steps <= 150
    assert res.accuracy == greedy_accuracy(forward, task, prompts)
    assert teacher_forcing_loss(forward, seqs, task.prompt_len).item() < before

    # the same through a parameter dict and a functional forward
    params = {k: v.detach().clone().requires_grad_(True) for k, v in TinyGPT(cfg, seed=0).state_dict().items()}

    def logits_fn(tokens):
        return torch_logits(params, cfg, tokens)

    res2 = supervised_warmup(logits_fn, task, prompts, params=params, stop_at=0.3, max_acc=1.0,
                             max_steps=150, seed=0)
    assert res2.steps == res.steps and res2.accuracy == res.accuracy
    assert torch.equal(params["lm_head.weight"], model.lm_head.weight)


def test_warmup_rolls_back_an_overshoot(one_thread):
    """A step that jumps past max_acc is undone and retried at half the lr."""
    from rl.model import ModelConfig, TinyGPT
    from rl.torch_model import torch_forward
    from rl.warmup import supervised_warmup

    task = ReverseTask(n_digits=3)
    prompts, _ = task.make_dataset(64, seed=0)
    cfg = ModelConfig(vocab_size=task.vocab_size, d_model=32, n_layers=1, n_heads=2, max_seq_len=8)
    model = TinyGPT(cfg, seed=0)
    res = supervised_warmup(torch_forward(model), task, prompts, params=model.parameters(), stop_at=0.3, max_acc=0.32,
                            max_steps=150, seed=0)
    rolled = [h for h in res.history if h.get("rolled_back")]
    assert rolled and res.reached and 0.3 <= res.accuracy <= 0.32
    assert res.lr == pytest.approx(3e-3 / 2 ** len(rolled))

"""The matched RL loop end to end: sampler == learner bitwise, engine != learner, training, resume."""

import json

import pytest
import torch

import precision_kernels as pk
from rl.learner import StepConfig, learner_step, sequence_logprobs
from rl.model import ModelConfig, TinyGPT
from rl.sampler import generate
from rl.tasks import get_task
from rl.train import build_parser, train

TASK = get_task("reverse")
DEVICE = pk.backend.device()  # the kernels' device: the suite also runs on a GPU machine


def _gen(seed: int) -> torch.Generator:
    return torch.Generator(device=DEVICE).manual_seed(seed)


def _model(precision: str, seed: int = 0, head_precision=None) -> TinyGPT:
    cfg = ModelConfig(vocab_size=TASK.vocab_size, d_model=32, n_layers=2, n_heads=2, max_seq_len=TASK.seq_len,
                      precision=precision, head_precision=head_precision)
    model = TinyGPT(cfg, seed=seed, init="torch")  # a non-uniform policy, so EOS and digits both occur
    return model.to(DEVICE)


def _prompts(n: int, seed: int = 0) -> torch.Tensor:
    return TASK.sample(n, torch.Generator().manual_seed(seed))[0].to(DEVICE)


def _assert_matched(model, prompts, temperature, seed=0):
    ro = generate(model, prompts, TASK.max_new_tokens, temperature=temperature,
                  generator=_gen(seed), eos_id=TASK.eos_id, pad_id=TASK.pad_id)
    with torch.no_grad():
        lp = sequence_logprobs(model, ro.tokens, TASK.prompt_len, temperature)
    assert ro.mask.any()
    assert torch.equal(lp[ro.mask], ro.logprobs[ro.mask])
    return ro


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("batch", [1, 2, 6])
def test_matched_sampler_equals_learner_bitwise(precision, batch):
    _assert_matched(_model(precision), _prompts(batch), temperature=1.0)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_matched_at_temperature_0_7_with_eos_mid_batch(precision):
    model = _model(precision, seed=3)
    # Make EOS likely so that some sequences stop early while others go on.
    with torch.no_grad():
        model.lm_head.weight[TASK.eos_id] += 0.15
    ro = _assert_matched(model, _prompts(6, seed=1), temperature=0.7, seed=4)
    lengths = ro.mask.sum(1)
    assert lengths.min() < lengths.max(), "expected EOS to stop some sequences before others"
    after = ~ro.mask
    assert torch.all(ro.logprobs[after] == 0)
    assert torch.all(ro.tokens[:, TASK.prompt_len:][after] == TASK.pad_id)


@pytest.mark.parametrize("precision", ["bf16"])  # one precision: it is about tiles, and costs ~3 s
def test_learner_pass_across_the_256_row_tile_boundary(precision):
    """33 sequences x 8 sampled tokens: the learner scores 264 rows (more than one 256-row tile), the
    sampler 33 rows per step; the log-probs still agree bit for bit (I2 across tiles)."""
    cfg = ModelConfig(vocab_size=13, d_model=16, n_layers=1, n_heads=2, max_seq_len=12, precision=precision)
    model = TinyGPT(cfg, seed=1, init="torch").to(DEVICE)
    prompts = torch.randint(0, 13, (33, 4), generator=torch.Generator().manual_seed(2)).to(DEVICE)
    ro = generate(model, prompts, 8, generator=_gen(3))  # no EOS: every row samples all 8 tokens
    assert ro.mask.all() and ro.mask.numel() > 256
    with torch.no_grad():
        lp = sequence_logprobs(model, ro.tokens, 4)
    assert torch.equal(lp, ro.logprobs)


@pytest.mark.parametrize("precision,head", [("fp32", "bf16"), ("fp32", "fp16"), ("fp16", "bf16")])
def test_narrower_head_rounds_through_round_to(precision, head, monkeypatch):
    """I4: hidden states narrowed to the LM head's precision are rounded by pk.round_to from fp32."""
    model = _model(precision, head_precision=head)
    tokens = _prompts(3)
    calls = []
    real = pk.round_to

    def spy(x, dtype):
        calls.append((tuple(x.shape), x.dtype, dtype))
        return real(x, dtype)

    monkeypatch.setattr(pk, "round_to", spy)
    with torch.no_grad():
        h = model.hidden_states(tokens)
    want = pk.Precision.parse(head).dtype
    assert h.dtype == want
    assert (tuple(h.shape), torch.float32, want) in calls, calls
    monkeypatch.setattr(pk, "round_to", real)
    # the same bits as rounding the layers' output from fp32 by hand
    with torch.no_grad():
        wide = TinyGPT(ModelConfig(**{**model.cfg.__dict__, "head_precision": None}), init="torch").to(DEVICE)
        wide.load_state_dict(model.state_dict())
        ref = pk.round_to(wide.hidden_states(tokens).float(), want)
    assert torch.equal(h.view(torch.int16), ref.view(torch.int16))


def test_rollout_semantics_and_reproducibility():
    model = _model("fp16")
    prompts = _prompts(4)
    a = generate(model, prompts, TASK.max_new_tokens, generator=_gen(7),
                 eos_id=TASK.eos_id, pad_id=TASK.pad_id)
    b = generate(model, prompts, TASK.max_new_tokens, generator=_gen(7),
                 eos_id=TASK.eos_id, pad_id=TASK.pad_id)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.logprobs, b.logprobs)
    assert a.tokens.shape == (4, TASK.prompt_len + TASK.max_new_tokens)
    assert a.logprobs.dtype == torch.float32 and a.mask.dtype == torch.bool
    assert torch.equal(a.tokens[:, :TASK.prompt_len], prompts)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_engine_profile_gives_nonzero_mismatch(precision):
    model = _model(precision)
    prompts = _prompts(8)
    ro = generate(model, prompts, TASK.max_new_tokens, generator=_gen(0),
                  profile="engine", eos_id=TASK.eos_id, pad_id=TASK.pad_id)
    with torch.no_grad():
        lp = sequence_logprobs(model, ro.tokens, TASK.prompt_len)
    assert not torch.equal(lp[ro.mask], ro.logprobs[ro.mask])


def test_ppo_ratio_is_exactly_one_in_matched_mode():
    model = _model("bf16")
    prompts = _prompts(2).repeat_interleave(2, 0)
    ro = generate(model, prompts, TASK.max_new_tokens, generator=_gen(0),
                  eos_id=TASK.eos_id, pad_id=TASK.pad_id)
    rewards = TASK.reward(prompts, ro.tokens[:, TASK.prompt_len:], ro.mask)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    # ratio "sampler" (exp(pi - mu)) is the one that sees the sampler; "old" is 1 on a first pass by definition
    res = learner_step(model, opt, torch.amp.GradScaler(DEVICE.type, enabled=False), ro, rewards, 2, TASK.prompt_len,
                       StepConfig(algo="ppo", ratio="sampler"))
    assert res.stats["ppo_ratio_max_dev"] == 0.0
    assert torch.equal(res.pi_old[ro.mask], ro.logprobs[ro.mask])


def test_fp16_loss_scaler_skips_inf_gradients_and_recovers():
    model = _model("fp16")
    prompts = _prompts(2).repeat_interleave(2, 0)
    ro = generate(model, prompts, TASK.max_new_tokens, generator=_gen(0),
                  eos_id=TASK.eos_id, pad_id=TASK.pad_id)
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0], device=DEVICE)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    # A scale of 2^40 overflows fp16 gradients: the step must be skipped and the scale lowered
    # (by 2^-8 a time here, so it recovers within a few steps).
    scaler = torch.amp.GradScaler(DEVICE.type, init_scale=2.0**40, backoff_factor=2.0**-8, growth_interval=1000)
    before = [p.detach().clone() for p in model.parameters()]
    res = learner_step(model, opt, scaler, ro, rewards, 2, TASK.prompt_len, StepConfig())
    assert res.skipped == 1 and res.loss_scale < 2.0**40
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    for _ in range(6):  # the scale keeps backing off until a step goes through
        res = learner_step(model, opt, scaler, ro, rewards, 2, TASK.prompt_len, StepConfig())
        if res.skipped == 0:
            break
    assert res.skipped == 0
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def _args(tmp_path, *extra):
    # One layer, and the last step's evaluation on 4 prompts: these tests compare runs, not what they learn.
    return build_parser().parse_args(["--steps", "3", "--batch", "2", "--group", "2", "--d-model", "32",
                                      "--layers", "1", "--eval-every", "100", "--eval-prompts", "4",
                                      "--dataset-size", "32", "--warmup-target", "0.0", "--no-progress",
                                      "--out", str(tmp_path), *extra])


def test_resumed_run_ends_with_the_same_weights(tmp_path):
    full = tmp_path / "full"
    train(_args(full), log=lambda *_: None)
    part = tmp_path / "part"
    a = _args(part)
    a.steps = 2
    train(a, log=lambda *_: None)
    train(_args(part, "--resume"), log=lambda *_: None)
    w_full = torch.load(full / "checkpoint.pt", weights_only=False)["model"]
    w_part = torch.load(part / "checkpoint.pt", weights_only=False)["model"]
    assert w_full.keys() == w_part.keys()
    assert all(torch.equal(w_full[k], w_part[k]) for k in w_full)
    lines = (part / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3]


def test_gspo_with_a_kl_penalty_resumes_bit_for_bit(tmp_path):
    """The frozen KL anchor travels in the checkpoint: a resumed run ends where the full run does."""
    # two layers: with this seed the one-layer policy's first step has all-equal group rewards and stays put
    flags = ["--algo", "gspo", "--kl-coef", "0.05", "--kl-estimator", "k2", "--strict", "--layers", "2"]
    a = _args(tmp_path / "full", *flags)
    a.steps = 2
    train(a, log=lambda *_: None)
    b = _args(tmp_path / "part", *flags)
    b.steps = 1
    train(b, log=lambda *_: None)
    c = _args(tmp_path / "part", *flags, "--resume")
    c.steps = 2
    train(c, log=lambda *_: None)
    w_full = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)["model"]
    w_part = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(w_full[k], w_part[k]) for k in w_full)
    records = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["kl_k2"] == 0.0 < records[1]["kl_k2"]  # the anchor is the policy before step 1
    assert "gspo_clip_frac" in records[0]


def test_a_run_does_not_depend_on_the_global_rng_states(tmp_path):
    """Why the checkpoint saves no global RNG state: with the global torch, NumPy and Python seeds changed,
    a run gives the same records and the same checkpoint tensors."""
    import random

    import numpy as np

    def run(name: str, seed: int):
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        a = _args(tmp_path / name, "--precision", "fp16", "--warmup-target", "0.2")
        a.steps = 2
        train(a, log=lambda *_: None)
        records = [{k: v for k, v in json.loads(x).items() if not k.endswith("_s")}
                   for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return records, torch.load(tmp_path / name / "checkpoint.pt", weights_only=False)

    (rec_a, ck_a), (rec_b, ck_b) = run("a", 1), run("b", 2)
    assert rec_a == rec_b
    assert set(ck_a) == {"format_version", "step", "model", "optimizer", "scaler", "generators", "extra"}
    assert all(torch.equal(ck_a["model"][k], ck_b["model"][k]) for k in ck_a["model"])
    for sa, sb in zip(ck_a["optimizer"]["state"].values(), ck_b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in ("exp_avg", "exp_avg_sq"))
    assert ck_a["scaler"] == ck_b["scaler"]
    assert torch.equal(ck_a["generators"]["data"], ck_b["generators"]["data"])


def test_matched_training_reports_zero_mismatch_and_strict_passes(tmp_path):
    summary = train(_args(tmp_path, "--strict", "--precision", "bf16"), log=lambda *_: None)
    assert summary["frac_tokens_differ"] == 0.0 and summary["mean_abs_dlogp"] == 0.0


def test_short_training_raises_the_reward_weighted_log_likelihood():
    """A few learner steps on fixed rollouts move probability towards the better-rewarded samples."""
    model = _model("fp16", seed=5)
    prompts = _prompts(2, seed=2).repeat_interleave(4, 0)
    ro = generate(model, prompts, TASK.max_new_tokens, generator=_gen(1),
                  eos_id=TASK.eos_id, pad_id=TASK.pad_id)
    rewards = TASK.reward(prompts, ro.tokens[:, TASK.prompt_len:], ro.mask)
    assert rewards.view(2, 4).std(1).min() > 0, "each group needs a spread of rewards"
    adv = (rewards.view(2, 4) - rewards.view(2, 4).mean(1, keepdim=True)).view(-1)

    def objective():
        with torch.no_grad():
            lp = sequence_logprobs(model, ro.tokens, TASK.prompt_len)
        return float((adv * (lp * ro.mask).sum(1)).sum())

    before = objective()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler(DEVICE.type, init_scale=2.0**8)
    for _ in range(4):
        learner_step(model, opt, scaler, ro, rewards, 4, TASK.prompt_len, StepConfig())
    assert objective() > before


def test_training_repeats_bit_for_bit_across_processes(tmp_path):
    import subprocess
    import sys

    flags = ["--steps", "2", "--batch", "2", "--group", "2", "--d-model", "32", "--layers", "1", "--eval-every",
             "100", "--eval-prompts", "4", "--dataset-size", "32", "--warmup-target", "0.2", "--no-progress"]
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-m", "rl.train", *flags, "--out", str(tmp_path / name)], check=True,
                       capture_output=True)
    wa = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["model"]
    wb = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

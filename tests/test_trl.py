"""TRL's GRPOTrainer, bitwise on-policy (``rl.trl.MatchedGRPOTrainer``), on the tiny offline Llama.

Two GRPO steps of 2 prompts of different lengths (so one is left-padded) x 2 generations, up to 6
completion tokens, with an extra EOS id so that some completions stop mid-way. In the mode TRL's own
mismatch metrics read exactly 0 and 1 and generate()'s logits are the training forward's bit for bit,
at T = 1 and T = 0.7; the same trainer without the mode is the control (non-zero metrics).
"""

from __future__ import annotations

import inspect

import pytest
import torch

pytest.importorskip("trl", reason="TRL is not installed: pip install -e '.[trl]' (make setup installs it)")

import precision_kernels as pk  # noqa: E402
from rl.tiny_hf import write_tiny_llama  # noqa: E402
from rl.trl import TRL_KEYS, GRPOConfig, MatchedGRPOTrainer, check_on_policy, token_logprobs  # noqa: E402

PROMPTS = ["hello world", "ab"]
EXTRA_EOS = "="           # a character the random-init model draws now and then
MAX_NEW = 6
DEVICE = pk.backend.device()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("trl") / "llama", layers=1).parent


def _config(out, **overrides):
    settings = dict(output_dir=str(out), per_device_train_batch_size=4, num_generations=2,
                    max_completion_length=MAX_NEW, max_steps=2, learning_rate=0.05,
                    use_cpu=DEVICE.type == "cpu", report_to="none", logging_steps=1, save_strategy="no", seed=0,
                    disable_tqdm=True)
    settings.update(overrides)
    return GRPOConfig(**settings)


def _model_and_tokenizer(model_dir):
    import transformers as tf

    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(tf.AutoConfig.from_pretrained(model_dir), attn_implementation="sdpa")
    model.to(DEVICE)
    tokenizer = tf.AutoTokenizer.from_pretrained(model_dir)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(EXTRA_EOS)]
    return model, tokenizer


def _length_reward(completions, **_):
    return [float(len(c)) for c in completions]


def _train(model_dir, out, *, matched, temperature, audit=False, bf16=True):
    """Two steps; returns the trainer, its logged steps and, per training forward, the rows compared to generate().

    ``bf16=True`` is TRL's default: bf16 autocast around the model's forward, for generate() and the learner alike.
    """
    from datasets import Dataset

    model, tokenizer = _model_and_tokenizer(model_dir)
    args = _config(out, temperature=temperature, bf16=bf16)
    trainer = MatchedGRPOTrainer(model=model, reward_funcs=_length_reward, args=args,
                                 train_dataset=Dataset.from_dict({"prompt": PROMPTS}), processing_class=tokenizer,
                                 matched=matched, audit=audit)
    compared = []

    def against_the_sampler(module, args, kwargs, output):
        if not torch.is_grad_enabled():           # generate() and the rollout's scoring run without grad
            return
        rollout = trainer.last_rollout
        # bf16 logits under autocast: widened exactly, as generate() widens its own
        ids, mask, logits = kwargs["input_ids"], kwargs["attention_mask"], output.logits[:, :-1].detach().float()
        n = logits.shape[1]
        for row in range(ids.shape[0]):
            # the rollout's row with these tokens (TRL shuffles the rows; equal rows have equal logits)
            drawn = next(i for i, seq in enumerate(rollout["sequences"]) if torch.equal(seq, ids[row]))
            kept = int(mask[row, -n:].sum())        # up to and including the first EOS
            compared.append((logits[row, :kept], rollout["logits"][drawn, :kept], bool(mask[row, 0] == 0)))

    model.register_forward_hook(against_the_sampler, with_kwargs=True)
    trainer.train()
    steps = [h for h in trainer.state.log_history if TRL_KEYS[0] in h]
    return trainer, steps, compared


# One run per test: under pytest-xdist a shared fixture would run once per worker.
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_in_the_mode_trls_metrics_are_0_and_1_and_generates_logits_are_the_learners(model_dir, tmp_path,
                                                                                      temperature):
    # T = 1: fp32, audited; T = 0.7: TRL's default bf16 autocast
    audit = temperature == 1.0
    trainer, steps, compared = _train(model_dir, tmp_path, matched=True, temperature=temperature, audit=audit,
                                      bf16=not audit)
    assert len(steps) == 2
    for step in steps:
        assert step["sampling/sampling_logp_difference/mean"] == 0.0
        assert step["sampling/sampling_logp_difference/max"] == 0.0
        for stat in ("min", "mean", "max"):
            assert step[f"sampling/importance_sampling_ratio/{stat}"] == 1.0
        assert step["rollout_corr/k3_kl"] == 0.0 and step["rollout_corr/kl"] == 0.0
        assert step["training/rollout_probs_diff_max"] == 0.0
    # generate()'s logits and the training forward's (with grad), row by row, bit for bit
    assert compared, "no training forward was compared"
    for learner, sampler, _ in compared:
        assert learner.dtype == sampler.dtype == torch.float32
        assert torch.equal(learner.view(torch.int32), sampler.view(torch.int32))
    assert any(padded for _, _, padded in compared), "no left-padded prompt"
    lengths = [learner.shape[0] for learner, _, _ in compared]
    assert min(lengths) < MAX_NEW, f"no completion stopped at an EOS: {lengths}"
    # generate() passes position ids only to a forward whose signature names them
    assert "position_ids" in inspect.signature(trainer.model.forward).parameters
    if audit:
        assert len(trainer.matched_reports) == 2
        # TRL sums each completion's rewards with nansum: a float reduction pk does not serve, outside the policy.
        assert trainer.uncovered_ops == {"nansum.default"}
        served = set().union(*(r.served for r in trainer.matched_reports))
        for op in ("mm.default", "_log_softmax.default", "_log_softmax_backward_data.default",
                   "_scaled_dot_product_flash_attention_for_cpu.default",
                   "_scaled_dot_product_flash_attention_for_cpu_backward.default", "embedding_dense_backward.default"):
            assert op in served, op


def test_without_the_mode_the_same_metrics_are_not_zero(model_dir, tmp_path):
    _, steps, compared = _train(model_dir, tmp_path, matched=False, temperature=0.7)
    assert max(s["sampling/sampling_logp_difference/max"] for s in steps) > 0
    assert max(s["sampling/importance_sampling_ratio/max"] for s in steps) > 1.0
    assert min(s["sampling/importance_sampling_ratio/min"] for s in steps) < 1.0
    assert any(not torch.equal(learner, sampler) for learner, sampler, _ in compared)


def test_trls_own_fused_lm_head_is_served_whole_and_batch_invariant_in_the_mode():
    """TRL's chunked log-prob head tiles its logits with torch.mm(out=tile) and accumulates its backward with
    addmm_: the mode serves both, leaves nothing uncovered, and a row alone gets the bits it gets in the batch."""
    from trl.kernels import ChunkedLogProbFunction

    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(7, 32, generator=g).to(DEVICE), torch.randn(99, 32, generator=g).to(DEVICE)
    targets = torch.randint(0, 99, (7,), generator=g).to(DEVICE)

    def head(rows):
        h = hidden[rows].clone().requires_grad_(True)
        logp, entropy, *_ = ChunkedLogProbFunction.apply(h, weight, None, targets[rows], 0.7, 40, None, 1.0,
                                                         ("log_probs", "entropy"))
        (logp.sum() + entropy.sum()).backward()
        return logp.detach(), h.grad

    with pk.matched_mode(strict=True) as report:
        batch, alone = head(slice(0, 7)), head(slice(2, 3))
    assert report.served["mm.out"] > 0 and report.served["addmm_.default"] > 0, report.summary()
    for b, a in zip(batch, alone):
        assert torch.equal(b[2:3].view(torch.int32), a.view(torch.int32))


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.3])
def test_token_logprobs_are_those_of_the_distribution_generate_samples_from(temperature):
    """generate() samples from softmax(TemperatureLogitsWarper(logits)): the same division by float32(T)."""
    from transformers.generation.logits_process import TemperatureLogitsWarper

    g = torch.Generator().manual_seed(3)
    logits, tokens = torch.randn(4, 5, 99, generator=g) * 4, torch.randint(0, 99, (4, 5), generator=g)
    warped = logits if temperature == 1.0 else TemperatureLogitsWarper(temperature)(None, logits.reshape(20, 99))
    want = torch.log_softmax(warped.reshape(4, 5, 99), -1).gather(-1, tokens[..., None])[..., 0]
    got, entropy = token_logprobs(logits, tokens, temperature, entropy=True)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))
    p = torch.softmax(warped.reshape(4, 5, 99).double(), -1)
    torch.testing.assert_close(entropy.double(), -(p * p.log()).sum(-1), rtol=1e-5, atol=1e-5)


REFUSED = [
    ("use_vllm", dict(use_vllm=True)),
    ("torch_compile", dict(torch_compile=True)),
    ("use_liger_kernel", dict(use_liger_kernel=True)),
    ("use_kernels", dict(model_init_kwargs={"use_kernels": True})),
    ("continuous_batching", dict(use_transformers_continuous_batching=True)),
    ("cache_implementation='paged'", dict(cache_implementation="paged")),
    ("top_p=0.9", dict(top_p=0.9)),
    ("top_k=5", dict(top_k=5)),
    ("top_k=None", dict(top_k=None)),
    ("min_p=0.1", dict(min_p=0.1)),
    ("repetition_penalty=1.1", dict(repetition_penalty=1.1)),
    ("generation_kwargs['typical_p']=0.5", dict(generation_kwargs={"typical_p": 0.5})),
    ("generation_kwargs['top_p']=0.5", dict(generation_kwargs={"top_p": 0.5})),
]


@pytest.mark.parametrize("option, settings", REFUSED, ids=[r[0] for r in REFUSED])
def test_every_setting_that_breaks_the_guarantee_is_refused_by_name(option, settings, tmp_path):
    with pytest.raises(ValueError, match=f"MatchedGRPOTrainer: .*{option.replace('[', '.').replace(']', '.')}"):
        check_on_policy(_config(tmp_path, **settings))


def test_the_trainer_refuses_before_building_and_checks_the_models_generation_config(model_dir, tmp_path):
    from datasets import Dataset

    model, tokenizer = _model_and_tokenizer(model_dir)
    data = Dataset.from_dict({"prompt": PROMPTS})
    with pytest.raises(ValueError, match="top_p=0.9"):
        MatchedGRPOTrainer(model=model, reward_funcs=_length_reward, args=_config(tmp_path, top_p=0.9),
                           train_dataset=data, processing_class=tokenizer)
    with pytest.raises(ValueError, match="rollout_func"):
        check_on_policy(_config(tmp_path), rollout_func=lambda prompts, trainer: {})
    model.generation_config.min_p = 0.05        # generate() would fill TRL's min_p=None from here
    with pytest.raises(ValueError, match=r"model.generation_config\['min_p'\]=0.05"):
        check_on_policy(_config(tmp_path), model)

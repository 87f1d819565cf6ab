"""rl.policy: the one interface TinyGPT and a Hugging Face LM implement, and the loop that never asks which.

The training loop reaches a model only through ``rl.policies.build_policy`` and the ``Policy``
methods; both policies implement every method; the layout rules (a left-padded prompt mask, and
TinyGPT's refusal of one) hold in the one sampling loop and the one greedy decode.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
import torch

import precision_kernels as pk
from rl.hf_policy import HFPolicy
from rl.learner import sequence_logprobs
from rl.model import ModelConfig, TinyGPT
from rl.policies import TinyGPTPolicy
from rl.policy import Policy
from rl.sampler import generate, greedy

ROOT = Path(__file__).resolve().parents[1]
DEVICE = pk.backend.device()
CFG = ModelConfig(vocab_size=13, d_model=16, n_layers=1, n_heads=2, max_seq_len=12, precision="bf16")


def _protocol_names() -> set[str]:
    return {n for n in vars(Policy) if not n.startswith("_")} | set(Policy.__annotations__)


@pytest.mark.parametrize("cls", [TinyGPTPolicy, HFPolicy])
def test_both_policies_implement_every_method_of_the_protocol(cls):
    missing = [n for n in sorted(_protocol_names()) if not hasattr(cls, n) and n != "cfg"]
    assert not missing, f"{cls.__name__} lacks {missing}"
    for name in ("prefill", "hidden_states", "numerics", "start", "compute_weights"):
        want = list(inspect.signature(getattr(Policy, name)).parameters)
        got = list(inspect.signature(getattr(cls, name)).parameters)
        assert got == want, (cls.__name__, name, got)


def test_the_training_loop_names_no_model_kind():
    """rl.train builds the policy through rl.policies and never imports a model module or reads --model."""
    tree = ast.parse((ROOT / "rl" / "train.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "policies" in imported and not imported & {"model", "hf", "hf_policy", "warmup", "torch_model"}
    reads = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "model"
             and isinstance(n.value, ast.Name) and n.value.id == "args"]
    assert not reads, "rl.train reads args.model: the policy, not the loop, decides what the model kind changes"


@pytest.fixture(scope="module")
def tiny():
    return TinyGPT(CFG, seed=0).to(DEVICE)


def _prompts():
    return torch.tensor([[1, 2, 3, 10], [4, 5, 6, 10]], device=DEVICE)


def test_an_all_ones_prompt_mask_changes_no_bit_of_tinygpt(tiny):
    prompts = _prompts()
    ones = torch.ones_like(prompts)
    plain = generate(tiny, prompts, 4, seed=3, eos_id=11, pad_id=12)
    masked = generate(tiny, prompts, 4, seed=3, eos_id=11, pad_id=12, prompt_mask=ones)
    assert torch.equal(plain.tokens, masked.tokens) and torch.equal(plain.logprobs, masked.logprobs)
    assert torch.equal(greedy(tiny, prompts, 4, 11, 12)[0], greedy(tiny, prompts, 4, 11, 12, prompt_mask=ones)[0])
    with torch.no_grad():
        learner = sequence_logprobs(tiny, plain.tokens, 4, prompt_mask=ones)
    assert torch.equal(learner[plain.mask], plain.logprobs[plain.mask])


def test_tinygpt_refuses_left_padded_prompts(tiny):
    """TinyGPT's positions count from the first token: a padded prompt would be read at other positions."""
    prompts = _prompts()
    padded = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]], device=DEVICE)
    with pytest.raises(ValueError, match="prompt_mask must be all ones"):
        generate(tiny, prompts, 2, seed=0, prompt_mask=padded)
    with pytest.raises(ValueError, match="prompt_mask must be all ones"):
        greedy(tiny, prompts, 2, 11, prompt_mask=padded)
    with pytest.raises(ValueError, match="prompt_mask must be all ones"):
        tiny.hidden_states(prompts, prompt_mask=padded)
    with pytest.raises(ValueError, match="prompt_mask must be all ones"):
        tiny.hidden_states(prompts, prompt_mask=torch.ones(3, 4, dtype=torch.long, device=DEVICE))  # batch 3 of 2


@pytest.mark.parametrize("mask,fragment", [
    ([[1, 1, 1]], "prompts' shape"),                 # one column short
    ([[1, 1, 1, 2]], "0/1"),
    ([[1, 1, 1, 0]], "last column"),                 # right padding: the first draw would follow a pad
])
def test_a_bad_prompt_mask_is_refused_by_name(tiny, mask, fragment):
    prompts = _prompts()[:1]
    for call in (lambda m: generate(tiny, prompts, 2, seed=0, prompt_mask=m),
                 lambda m: greedy(tiny, prompts, 2, 11, prompt_mask=m)):
        with pytest.raises(ValueError, match=fragment):
            call(torch.tensor(mask, device=DEVICE))

"""rl.sampler: bad decode requests are refused before any kernel runs, with the argument named."""

import pytest
import torch

import precision_kernels as pk
from rl.model import ModelConfig, TinyGPT
from rl.sampler import generate, greedy

DEVICE = pk.backend.device()
V = 13
CFG = ModelConfig(vocab_size=V, d_model=16, n_layers=1, n_heads=2, max_seq_len=8, precision="fp32")


@pytest.fixture(scope="module")
def model():
    return TinyGPT(CFG, seed=0).to(DEVICE)


def ok_prompts():
    return torch.tensor([[1, 2, 3, 4]], device=DEVICE)


OK = "valid prompts"
ELSEWHERE = "valid prompts on the meta device"  # a device that is never the kernels'

BAD = [
    # (what, prompts, kwargs, error, message fragment)
    ("negative id wraps around", torch.tensor([[1, 2, -3, 4]]), {}, ValueError, "prompts"),
    ("id == vocab", torch.tensor([[1, 2, V, 4]]), {}, ValueError, "prompts"),
    ("float prompts", torch.tensor([[1.0, 2.0, 3.0, 4.0]]), {}, TypeError, "prompts"),
    ("bool prompts", torch.tensor([[True, False, True, True]]), {}, TypeError, "prompts"),
    ("a list", [[1, 2, 3, 4]], {}, TypeError, "prompts"),
    ("None", None, {}, TypeError, "prompts"),
    ("1-D prompts", torch.tensor([1, 2, 3, 4]), {}, ValueError, "prompts"),
    ("empty batch", torch.zeros(0, 4, dtype=torch.int64), {}, ValueError, "prompts"),
    ("empty prompt", torch.zeros(1, 0, dtype=torch.int64), {}, ValueError, "prompts"),
    ("wrong device", ELSEWHERE, {}, ValueError, "device"),
    ("max_new_tokens 0", OK, {"max_new_tokens": 0}, ValueError, "max_new_tokens"),
    ("max_new_tokens float", OK, {"max_new_tokens": 2.0}, ValueError, "max_new_tokens"),
    ("max_new_tokens bool", OK, {"max_new_tokens": True}, ValueError, "max_new_tokens"),
    ("past max_seq_len", OK, {"max_new_tokens": 6}, ValueError, "max_seq_len"),
    ("eos_id negative", OK, {"eos_id": -1}, ValueError, "eos_id"),
    ("eos_id == vocab", OK, {"eos_id": V}, ValueError, "eos_id"),
    ("pad_id == vocab", OK, {"eos_id": 1, "pad_id": V}, ValueError, "pad_id"),
    ("pad_id float", OK, {"eos_id": 1, "pad_id": 1.0}, ValueError, "pad_id"),
]


def _call(fn, model, prompts, kwargs):
    if prompts is OK:
        prompts = ok_prompts()
    elif prompts is ELSEWHERE:
        prompts = torch.tensor([[1, 2, 3, 4]], device="meta")
    elif isinstance(prompts, torch.Tensor):
        prompts = prompts.to(DEVICE)
    kwargs = dict(kwargs)
    n = kwargs.pop("max_new_tokens", 2)
    if fn is greedy:
        kwargs.setdefault("eos_id", 0)
        return greedy(model, prompts, n, **kwargs)
    return generate(model, prompts, n, **kwargs)


@pytest.mark.parametrize("fn", [generate, greedy], ids=["generate", "greedy"])
@pytest.mark.parametrize("what,prompts,kwargs,error,fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_decode_request(model, fn, what, prompts, kwargs, error, fragment):
    with pytest.raises(error, match=fragment):
        _call(fn, model, prompts, kwargs)


@pytest.mark.parametrize("t", [0.0, -1.0, 1e-50, 1e39, float("inf"), float("nan"), "1.0", True])
def test_bad_temperature(model, t):
    with pytest.raises(ValueError, match="temperature"):
        generate(model, ok_prompts(), 2, temperature=t)


def test_greedy_needs_an_eos(model):
    with pytest.raises(ValueError, match="eos_id"):
        greedy(model, ok_prompts(), 2, None)


def test_valid_edges_are_accepted(model):
    """Ids 0 and V-1, and exactly max_seq_len positions (the last token is never fed back)."""
    prompts = torch.tensor([[0, V - 1, 0, V - 1]], device=DEVICE)
    ro = generate(model, prompts, 5, generator=torch.Generator(device=DEVICE).manual_seed(0), eos_id=V - 1,
                  pad_id=0)
    assert ro.tokens.shape == (1, 9)
    resp, mask = greedy(model, prompts, 5, V - 1, 0)
    assert resp.shape == (1, 5) and mask[0, 0]

"""rl.sampler: bad decode requests are refused before any kernel runs, with the argument named."""

import pytest
import torch

import precision_kernels as pk
from rl.model import ModelConfig, TinyGPT
from rl.sampler import generate, greedy, mix_seed, splitmix64

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


# ---- keyed sampling: seed=, first_index= --------------------------------------------------

def test_splitmix64_known_answers():
    """splitmix64's first two outputs from state 0 (Steele, Lea & Flood 2014 / Vigna's reference code)."""
    assert splitmix64(0) == 0xE220A8397B1DCDAF
    assert splitmix64(0x9E3779B97F4A7C15) == 0x6E789E6AA1B965F4
    assert mix_seed(0) == splitmix64(0) >> 1
    assert mix_seed(3, 5, 7) == splitmix64(splitmix64(splitmix64(3) ^ 5) ^ 7) >> 1
    assert 0 <= mix_seed(-1, 2**70) < 2**63


@pytest.fixture(scope="module")
def peaked_model():
    return TinyGPT(ModelConfig(vocab_size=V, d_model=16, n_layers=1, n_heads=2, max_seq_len=8, precision="fp16"),
                   seed=3, init="torch").to(DEVICE)


def _equal(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_a_batch_sampled_in_pieces_equals_one_call_bitwise(peaked_model):
    prompts = torch.randint(0, V, (6, 3), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    kw = {"seed": 12345, "eos_id": 0, "pad_id": 1, "temperature": 1.0}
    whole = generate(peaked_model, prompts, 4, **kw)
    first = generate(peaked_model, prompts[:2], 4, **kw)
    rest = generate(peaked_model, prompts[2:], 4, first_index=2, **kw)
    joined = [torch.cat([a, b]) for a, b in zip(first, rest)]
    assert _equal(whole, joined)
    # a row's draw depends on its global index, not its place in the call
    alone = generate(peaked_model, prompts[4:5], 4, first_index=4, **kw)
    assert _equal([x[4:5] for x in whole], alone)
    # and on the seed and the index: other keys draw other tokens somewhere
    assert not torch.equal(generate(peaked_model, prompts, 4, **{**kw, "seed": 54321}).tokens, whole.tokens)
    assert not torch.equal(generate(peaked_model, prompts, 4, first_index=6, **kw).tokens, whole.tokens)


@pytest.mark.parametrize("kwargs,error,fragment", [
    ({"seed": -1}, ValueError, "seed"),
    ({"seed": 2**63}, ValueError, "seed"),
    ({"seed": 1.0}, ValueError, "seed"),
    ({"seed": True}, ValueError, "seed"),
    ({"seed": 1, "generator": torch.Generator(device=DEVICE)}, ValueError, "generator"),
    ({"seed": 1, "first_index": -1}, ValueError, "first_index"),
    ({"seed": 1, "first_index": 0.5}, ValueError, "first_index"),
])
def test_bad_seed_arguments(model, kwargs, error, fragment):
    with pytest.raises(error, match=fragment):
        generate(model, ok_prompts(), 2, **kwargs)

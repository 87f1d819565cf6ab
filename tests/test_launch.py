"""The one launch path (ops/_common.launch): every kernel launch of every op family receives the backend's
launch options (FMA contraction off) and the tile config's warps, and goes through ``launch``."""

import pytest
import torch
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

import precision_kernels as pk
from precision_kernels import backend
from precision_kernels.ops import _common
from precision_kernels.ops._common import launch, observe_launches

DEV = backend.device()


@pytest.fixture
def received(monkeypatch):
    """What Triton's launcher itself was handed, launch by launch: (kernel name, keyword arguments)."""
    calls = []
    for cls in (InterpretedFunction, JITFunction):
        original = cls.run

        def run(self, *args, grid, warmup=False, _original=original, **kwargs):
            if not warmup:
                calls.append((getattr(self, "__name__", str(self)), dict(kwargs)))
            return _original(self, *args, grid=grid, warmup=warmup, **kwargs)

        monkeypatch.setattr(cls, "run", run)
    return calls


def _randn(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype).to(DEV)


def _round_to():
    pk.round_to(_randn(5, 7), torch.bfloat16)


def _matmul():
    a, b = _randn(5, 8, dtype=torch.float16, seed=1).requires_grad_(), _randn(8, 3, dtype=torch.float16, seed=2)
    pk.matmul(a, b).float().sum().backward()


def _bmm():
    pk.matmul(_randn(2, 5, 8, dtype=torch.bfloat16), _randn(2, 8, 3, dtype=torch.bfloat16, seed=1))


def _linear():
    x = _randn(5, 8).requires_grad_()
    w, bias = _randn(3, 8, seed=1).requires_grad_(), _randn(3, seed=2).requires_grad_()
    pk.linear(x, w, bias).sum().backward()


def _softmax():
    x = _randn(4, 9).requires_grad_()
    (pk.softmax(x, scale=0.5) * _randn(4, 9, seed=1)).sum().backward()
    pk.log_softmax(x).sum().backward()


def _rms_norm():
    x, w = _randn(4, 9).requires_grad_(), _randn(9, seed=1).requires_grad_()
    pk.rms_norm(x, w).sum().backward()


def _layer_norm():
    x, w, b = _randn(4, 9).requires_grad_(), _randn(9, seed=1).requires_grad_(), _randn(9, seed=2).requires_grad_()
    pk.layer_norm(x, w, b).sum().backward()


def _token_logprobs():
    logits = _randn(4, 11).requires_grad_()
    lp, h = pk.token_logprobs(logits, torch.tensor([0, 3, 10, 5], device=DEV), 0.7, return_entropy=True)
    (lp.sum() + h.sum()).backward()


def _lm_head():
    h, w = _randn(4, 16, dtype=torch.float16).requires_grad_(), _randn(11, 16, dtype=torch.float16, seed=1)
    tokens, _ = pk.linear_sample(h.detach(), w, 0.9, generator=torch.Generator(device=DEV).manual_seed(0))
    pk.linear_logprobs(h, w, tokens, 0.9).sum().backward()


FAMILIES = {"round_to": _round_to, "matmul": _matmul, "bmm": _bmm, "linear": _linear, "softmax": _softmax,
            "rms_norm": _rms_norm, "layer_norm": _layer_norm, "token_logprobs": _token_logprobs, "lm_head": _lm_head}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_launch_sets_fp_fusion(family, received):
    """The options a real launch received, not launch_options() compared with itself."""
    with observe_launches() as recorded:
        FAMILIES[family]()
    assert received, f"{family} launched no kernel"
    for name, kwargs in received:
        assert kwargs.get("enable_fp_fusion") is False, f"{family}: {name} launched with {kwargs}"
        assert "num_warps" in kwargs or name == "round_to_kernel", f"{family}: {name} got no num_warps"
    # every launch went through the one launch path, with the options the kernel received
    assert [r.kernel for r in recorded] == [name for name, _ in received]
    for record, (_, kwargs) in zip(recorded, received):
        assert all(kwargs[k] == v for k, v in record.options.items())


def test_launch_passes_config_warps_and_skips_an_empty_grid(received):
    class Config:
        num_warps = 2
        num_stages = 1

    x = torch.zeros(8, device=DEV)
    out = torch.empty(8, dtype=torch.int16, device=DEV)
    from precision_kernels.kernels.rounding import round_to_kernel

    launch(round_to_kernel, (0,), x, out, 8, config=Config(), OUT_KIND=2, BLOCK=8)
    assert received == []
    launch(round_to_kernel, (1,), x, out, 8, config=Config(), OUT_KIND=2, BLOCK=8)
    (_, kwargs), = received
    assert kwargs["num_warps"] == 2 and kwargs["num_stages"] == 1 and kwargs["enable_fp_fusion"] is False
    assert out.eq(0).all()


def test_native_dot_is_decided_once_by_the_backend():
    assert _common.NATIVE_DOT == (not backend.INTERPRETED)

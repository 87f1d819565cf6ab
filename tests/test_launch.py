"""The one launch path (ops/_common.launch): every kernel launch of every op family receives the backend's
launch options (FMA contraction off) and the tile config's warps, and goes through ``launch``. The calls are
the op families' samples (tests/families), forward and backward."""

import functools

import pytest
import torch
from families import all_samples
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

from precision_kernels import backend
from precision_kernels.ops import _common
from precision_kernels.ops._common import launch, observe_launches

DEV = backend.device()
# What Triton's launcher receives: the CPU twins bypass it (test_cpu_executor.py tests their records).
pytestmark = pytest.mark.usefixtures("interpreter_executor")


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


def _run_sample(sample_id: str, dtype) -> None:
    """A family's sample (tests/families) forward, then backward through every output that has a gradient."""
    sample = all_samples(dtype, rows=5, n=9, k=8, seed=0)[sample_id]
    outs = sample.fn(*sample.args)
    outs = outs if isinstance(outs, tuple) else (outs,)
    loss = sum(o.float().sum() for o in outs if o.requires_grad)
    if isinstance(loss, torch.Tensor):
        loss.backward()


DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Every sample once, the storage formats taken in turn (round_to's input is fp32 whatever the dtype).
FAMILIES = {name: functools.partial(_run_sample, name, DTYPES[i % 3])
            for i, name in enumerate(sorted(all_samples(torch.float32, rows=1, n=1, k=1, seed=0)))}


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

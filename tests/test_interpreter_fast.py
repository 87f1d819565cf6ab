"""The interpreter fast paths (precision_kernels.interpreter_fast) change no bit of any kernel output.

Each sample of the op families (tests/families) runs at random small shapes (hypothesis) with the fast paths and
again with them removed (the plain Triton 3.9 interpreter), forward and backward, and
the results must be bitwise equal. One subprocess checks that ``PK_INTERPRETER_FAST=0``
leaves Triton untouched and computes the same bits.
"""

import contextlib
import functools
import os
import subprocess
import sys
import warnings

import pytest
import torch
import triton
import triton.language as tl
from families import all_samples
from hypothesis import given, settings
from hypothesis import strategies as st
from triton.runtime import interpreter

from precision_kernels import interpreter_fast

pytestmark = pytest.mark.skipif(
    not interpreter_fast.active(),
    reason="interpreter fast paths not active (GPU backend, PK_INTERPRETER_FAST=0, or another Triton version)")

# The fast paths patch the interpreter: the kernels must run in it, not in their CPU twins.
pytestmark = [pytestmark, pytest.mark.usefixtures("interpreter_executor")]

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@contextlib.contextmanager
def plain_interpreter():
    """Run the block on the plain Triton interpreter, then put the fast paths back."""
    interpreter_fast.remove()
    try:
        assert not interpreter_fast.active()
        yield
    finally:
        assert interpreter_fast.install(triton.__version__)


def _bits(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().contiguous()
    return t.view(torch.int16) if t.element_size() == 2 else t.view(torch.int32) if t.element_size() == 4 else t


def _assert_same_bits(fast: list, plain: list) -> None:
    assert len(fast) == len(plain)
    for i, (a, b) in enumerate(zip(fast, plain)):
        assert a.dtype == b.dtype and a.shape == b.shape, i
        assert torch.equal(_bits(a), _bits(b)), f"output {i} differs"


def _run_sample(sample_id: str, dtype, rows, n, k, seed) -> list:
    """A family's sample (tests/families): its outputs, then the gradients of a random linear function of
    its differentiable outputs with respect to its differentiable inputs."""
    sample = all_samples(dtype, rows, n, k, seed)[sample_id]
    outs = sample.fn(*sample.args)
    outs = list(outs) if isinstance(outs, tuple) else [outs]
    inputs = [a for a in sample.args if isinstance(a, torch.Tensor) and a.requires_grad]
    diff = [o for o in outs if o.requires_grad]
    if not diff:
        return outs
    g = torch.Generator().manual_seed(seed)
    upstream = [torch.randn(o.shape, generator=g).to(o.dtype) for o in diff]
    return outs + list(torch.autograd.grad(diff, inputs, upstream))


# Each registered sample: (dtype, rows, n, k, seed) -> list of tensors (outputs and gradients).
FAMILIES = {name: functools.partial(_run_sample, name) for name in all_samples(torch.float32, 1, 1, 1, 0)}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@settings(max_examples=3)
@given(dtype=st.sampled_from(DTYPES), rows=st.integers(1, 40), n=st.integers(1, 70), k=st.integers(1, 70),
       seed=st.integers(0, 2**16))
def test_fast_paths_change_no_bits(family, dtype, rows, n, k, seed):
    fast = FAMILIES[family](dtype, rows, n, k, seed)
    with plain_interpreter():
        plain = FAMILIES[family](dtype, rows, n, k, seed)
    _assert_same_bits(fast, plain)


@triton.jit
def _frontend_kernel(x_ptr, i_ptr, out_f_ptr, out_i_ptr, n, BLOCK: tl.constexpr):
    """Operand kinds the memoised type work must replay: scalar with block, rank expansion,
    (M, 1) with (1, N), integer promotion, unsigned wrap-around, pointer arithmetic, and the
    same operand types with and without division (fp16 / fp16 computes in fp32)."""
    r = tl.arange(0, BLOCK)
    col = tl.load(x_ptr + r, mask=r < n, other=1.5)               # (B,) fp32
    mat = col[:, None] * col[None, :]                             # (B, 1) x (1, B)
    mat = mat + col                                               # (B, B) + (B,): new leading axis
    mat = 0.25 - mat                                              # scalar - block
    ints = tl.load(i_ptr + r, mask=r < n, other=7)                # (B,) int32
    wide = ints.to(tl.int64) * 3 + ints                           # int64 with int32
    unsigned = ints.to(tl.uint32, bitcast=True) + 0xFFFFFFF0      # wraps around
    mixed = mat + ints[None, :]                                   # fp32 with int32, broadcast
    half = col.to(tl.float16)
    quotient = (half * half) / (half + 3.0)                       # fp16 * fp16 stays fp16; / is in fp32
    mixed = mixed + quotient[:, None]
    tl.store(out_f_ptr + r[:, None] * BLOCK + r[None, :], mixed)
    tl.store(out_i_ptr + r, (wide + unsigned.to(tl.int64, bitcast=False)) // 2)


def _run_frontend_kernel():
    g = torch.Generator().manual_seed(0)
    x, ints = torch.randn(12, generator=g), torch.randint(-2**30, 2**30, (12,), generator=g, dtype=torch.int32)
    out_f, out_i = torch.empty(16, 16), torch.empty(16, dtype=torch.int64)
    _frontend_kernel[(1,)](x, ints, out_f, out_i, 12, BLOCK=16)
    return [out_f, out_i]


def test_fast_paths_replay_every_operand_kind():
    fast = _run_frontend_kernel()
    with plain_interpreter():
        plain = _run_frontend_kernel()
    _assert_same_bits(fast, plain)


@triton.jit
def _bad_broadcast_kernel(x_ptr, BLOCK: tl.constexpr):
    a = tl.load(x_ptr + tl.arange(0, BLOCK))
    b = tl.load(x_ptr + tl.arange(0, 2 * BLOCK))
    tl.store(x_ptr + tl.arange(0, BLOCK), a + b)


def test_fast_paths_raise_what_the_plain_interpreter_raises():
    x = torch.zeros(32)
    for _ in range(2):  # the second time through the memo
        with pytest.raises(Exception, match="incompatible dimensions"):
            _bad_broadcast_kernel[(1,)](x, BLOCK=8)
    with plain_interpreter(), pytest.raises(Exception, match="incompatible dimensions"):
        _bad_broadcast_kernel[(1,)](x, BLOCK=8)


def test_other_triton_version_falls_back_to_plain_interpreter():
    interpreter_fast.remove()
    try:
        with pytest.warns(UserWarning, match="plain"):
            assert not interpreter_fast.install("3.10.0")
        assert not interpreter_fast.active()
        assert "binary_op_type_checking_impl" not in vars(interpreter.interpreter_semantic)
        assert triton.language.core.tensor.__init__.__module__ == "triton.language.core"
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert interpreter_fast.install(triton.__version__)


_SUBPROCESS = """
import sys, torch, triton
from precision_kernels import interpreter_fast
from triton.runtime import interpreter
assert not interpreter_fast.active()
assert "__new__" not in vars(triton.language.core.block_type)
assert "binary_op_type_checking_impl" not in vars(interpreter.interpreter_semantic)
assert interpreter.interpreter_builder.options.sanitize_overflow
sys.path.insert(0, sys.argv[2])
from test_interpreter_fast import FAMILIES, DTYPES
outs = [t.detach() for i, name in enumerate(sorted(FAMILIES)) for t in FAMILIES[name](DTYPES[i % 3], 37, 45, 33, i)]
torch.save(outs, sys.argv[1])
"""


def test_env_switch_runs_the_unpatched_interpreter(tmp_path):
    """PK_INTERPRETER_FAST=0 at import: Triton untouched, and the same bits as this (fast) process."""
    path = tmp_path / "plain.pt"
    env = dict(os.environ, PK_INTERPRETER_FAST="0")
    subprocess.run([sys.executable, "-c", _SUBPROCESS, str(path), os.path.dirname(__file__)], env=env, check=True)
    fast = [t.detach() for i, name in enumerate(sorted(FAMILIES)) for t in FAMILIES[name](DTYPES[i % 3], 37, 45, 33, i)]
    _assert_same_bits(fast, torch.load(path))

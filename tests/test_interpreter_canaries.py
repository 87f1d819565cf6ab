"""Canaries for the interpreter defects in DESIGN.md section 3.

Each test asserts that the project's workaround is right, and records as a
warning whether the upstream defect is still present, so we notice a fix.
"""

import warnings

import pytest
import torch
import triton
import triton.language as tl

import precision_kernels as pk
from precision_kernels.kernels.rounding import round_fp32, to_fp32

pytestmark = pytest.mark.skipif(pk.active_backend() != "interpreter", reason="interpreter defects only")


@triton.jit
def _cast_kernel(x_ptr, ours_ptr, theirs_ptr, wide_ptr):
    r = tl.arange(0, 16)
    x = tl.load(x_ptr + r)
    tl.store(ours_ptr + r, round_fp32(x, 2))
    tl.store(theirs_ptr + r, x.to(tl.bfloat16).to(tl.int16, bitcast=True))
    # widen our own bits back: exact, through integer shifts
    tl.store(wide_ptr + r, to_fp32(round_fp32(x, 2), 2))


def test_bf16_cast_workaround_and_canary():
    # ties, a tie that must round up to even, a carry, and a value the truncating cast gets wrong
    x = torch.tensor([1 + 2**-8, 1 + 3 * 2**-8, 2 - 2**-9, 1 + 2**-7 + 2**-9, 1.999, -1.999, 3.0, 0.1] * 2)
    ours, theirs, wide = torch.empty(16, dtype=torch.int16), torch.empty(16, dtype=torch.int16), torch.empty(16)
    _cast_kernel[(1,)](x, ours, theirs, wide)
    want = x.to(torch.bfloat16)
    assert torch.equal(ours, want.view(torch.int16))
    assert torch.equal(wide, want.float())
    warnings.warn(f"interpreter defect 'x.to(tl.bfloat16) does not round to nearest even': "
                  f"{'still present' if not torch.equal(theirs, want.view(torch.int16)) else 'FIXED upstream'}",
                  stacklevel=1)


@triton.jit
def _widen_kernel(bits_ptr, native_ptr, ours_ptr):
    r = tl.arange(0, 4)
    raw = tl.load(bits_ptr + r)
    tl.store(native_ptr + r, raw.to(tl.bfloat16, bitcast=True).to(tl.float32))
    tl.store(ours_ptr + r, to_fp32(raw, 2))


def test_bf16_widening_workaround_and_canary():
    # found while building the foundation: the interpreter widens bf16 subnormals wrongly
    x = torch.tensor([1.5, -2.25, 1e-39, -3e-40]).to(torch.bfloat16)
    native, ours = torch.empty(4), torch.empty(4)
    _widen_kernel[(1,)](x.view(torch.int16), native, ours)
    assert torch.equal(ours, x.float())
    warnings.warn(f"interpreter defect 'bf16 -> fp32 widening of subnormals': "
                  f"{'still present' if not torch.equal(native, x.float()) else 'FIXED upstream'}", stacklevel=1)

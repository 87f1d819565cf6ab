"""Each interpreter fast path on its own: it can be turned off, and on or off it changes no bit.

The reference is the plain Triton interpreter (every fast path removed). Each installer is
skipped in turn (the others installed), and installed alone, and a small workload must give
the reference's bits every time. tests/test_interpreter_fast.py runs every kernel family with
all of them against none.
"""

import os
import subprocess
import sys

import pytest
import torch
import triton
import triton.language as tl

import precision_kernels as pk
from precision_kernels import interpreter_fast

NAMES = tuple(interpreter_fast.INSTALLERS)

pytestmark = pytest.mark.skipif(
    not interpreter_fast.active(),
    reason="interpreter fast paths not active (GPU backend, PK_INTERPRETER_FAST=0, or another Triton version)")

# The fast paths patch the interpreter: the kernels must run in it, not in their CPU twins.
pytestmark = [pytestmark, pytest.mark.usefixtures("interpreter_executor")]


@pytest.fixture(autouse=True)
def _restore_fast_paths():
    """Every test leaves the fast paths as the process had them."""
    before = interpreter_fast.installed()
    yield
    interpreter_fast.install(skip=set(NAMES) - set(before))
    assert interpreter_fast.installed() == before


@triton.jit
def _frontend_kernel(x_ptr, i_ptr, out_f_ptr, out_i_ptr, n, BLOCK: tl.constexpr):
    """Scalar with block, (M, 1) with (1, N), a new leading axis, int32 with int64, unsigned
    wrap-around (an overflow check would fire on it), fp16 division, and a nested helper."""
    r = tl.arange(0, BLOCK)
    col = tl.load(x_ptr + r, mask=r < n, other=1.5)
    mat = _outer(col) + col
    mat = 0.25 - mat
    ints = tl.load(i_ptr + r, mask=r < n, other=7)
    wide = ints.to(tl.int64) * 3 + ints
    unsigned = ints.to(tl.uint32, bitcast=True) + 0xFFFFFFF0
    half = col.to(tl.float16)
    mat = mat + ints[None, :] + ((half * half) / (half + 3.0))[:, None]
    tl.store(out_f_ptr + r[:, None] * BLOCK + r[None, :], mat)
    tl.store(out_i_ptr + r, (wide + unsigned.to(tl.int64)) // 2)


@triton.jit
def _outer(col):
    return col[:, None] * col[None, :]


@triton.jit
def _bad_broadcast_kernel(x_ptr, BLOCK: tl.constexpr):
    a = tl.load(x_ptr + tl.arange(0, BLOCK))
    b = tl.load(x_ptr + tl.arange(0, 2 * BLOCK))
    tl.store(x_ptr + tl.arange(0, BLOCK), a + b)


def _workload() -> list[torch.Tensor]:
    """A few small kernel calls, forward and backward, in each storage dtype."""
    g = torch.Generator().manual_seed(7)
    x, ints = torch.randn(12, generator=g), torch.randint(-2**30, 2**30, (12,), generator=g, dtype=torch.int32)
    out_f, out_i = torch.empty(16, 16), torch.empty(16, dtype=torch.int64)
    _frontend_kernel[(1,)](x, ints, out_f, out_i, 12, BLOCK=16)
    outs = [out_f, out_i]
    a = (torch.randn(5, 19, generator=g)).to(torch.bfloat16).requires_grad_()
    w = (torch.randn(9, 19, generator=g)).to(torch.bfloat16).requires_grad_()
    y = pk.linear(a, w)
    outs += [y, *torch.autograd.grad(y, [a, w], torch.randn(y.shape, generator=g).to(y.dtype))]
    s = (torch.randn(6, 33, generator=g) * 4).to(torch.float16).requires_grad_()
    p = pk.softmax(s)
    outs += [p, *torch.autograd.grad(p, [s], torch.randn(p.shape, generator=g).to(p.dtype))]
    outs.append(pk.round_to(torch.randn(40, generator=g) * 1e-6, torch.float16))
    return [t.detach() for t in outs]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _assert_same_bits(got: list, want: list) -> None:
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == b.dtype and a.shape == b.shape, i
        assert torch.equal(_bits(a), _bits(b)), f"output {i} differs"


@pytest.fixture(scope="module")
def plain_bits():
    before = interpreter_fast.installed()
    interpreter_fast.remove()
    try:
        return _workload()
    finally:
        interpreter_fast.install(skip=set(NAMES) - set(before))


@pytest.fixture(scope="module")
def targets():
    """What each installer replaces, and the plain value of each of those attributes."""
    before = interpreter_fast.installed()
    interpreter_fast.install(skip=())
    replaced = {name: interpreter_fast.targets(name) for name in NAMES}
    interpreter_fast.remove()
    plain = {(id(obj), attr): vars(obj).get(attr) for pairs in replaced.values() for obj, attr in pairs}
    interpreter_fast.install(skip=set(NAMES) - set(before))
    return replaced, plain


def test_every_installer_replaces_attributes_no_other_one_does(targets):
    replaced, _ = targets
    assert all(replaced[name] for name in NAMES)
    pairs = [(id(obj), attr) for name in NAMES for obj, attr in replaced[name]]
    assert len(pairs) == len(set(pairs))


@pytest.mark.parametrize("name", NAMES)
def test_each_installer_can_be_turned_off(name, targets):
    replaced, plain = targets
    interpreter_fast.install(skip={name})
    assert interpreter_fast.installed() == tuple(n for n in NAMES if n != name)
    for owner, pairs in replaced.items():
        for obj, attr in pairs:
            is_plain = vars(obj).get(attr) is plain[id(obj), attr]
            assert is_plain == (owner == name), (owner, attr)


@pytest.mark.parametrize("name", NAMES)
def test_each_installer_off_or_alone_changes_no_bit(name, plain_bits):
    interpreter_fast.install(skip={name})
    _assert_same_bits(_workload(), plain_bits)
    interpreter_fast.install(skip=set(NAMES) - {name})
    assert interpreter_fast.installed() == (name,)
    _assert_same_bits(_workload(), plain_bits)
    with pytest.raises(Exception, match="incompatible dimensions"):
        _bad_broadcast_kernel[(1,)](torch.zeros(32), BLOCK=8)


def test_no_overflow_checks_is_what_turns_the_overflow_checks_off():
    # The checks redo each 32-bit integer op in int64; that work is invisible in the bits above.
    from triton.runtime import interpreter

    interpreter_fast.install(skip={"no_overflow_checks"})
    assert interpreter.interpreter_builder.options.sanitize_overflow
    interpreter_fast.install(skip=set(NAMES) - {"no_overflow_checks"})
    assert not interpreter.interpreter_builder.options.sanitize_overflow


def test_all_installed_change_no_bit(plain_bits):
    interpreter_fast.install(skip=())
    _assert_same_bits(_workload(), plain_bits)


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="skip: unknown interpreter fast path"):
        interpreter_fast.install(skip={"no_such_path"})
    with pytest.raises(ValueError, match="name: 'no_such_path' is not an installed"):
        interpreter_fast.targets("no_such_path")


def test_skip_env_turns_off_the_named_installers_at_import():
    env = dict(os.environ, **{interpreter_fast.SKIP_ENV: " common_types,numpy_dtypes "})
    env.pop(interpreter_fast.FAST_ENV, None)
    code = "import precision_kernels as pk; print(','.join(pk.interpreter_fast.installed()))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [",".join(n for n in NAMES if n not in ("common_types", "numpy_dtypes"))]


def test_skip_env_with_an_unknown_name_is_refused(monkeypatch):
    before = interpreter_fast.installed()
    monkeypatch.setenv(interpreter_fast.SKIP_ENV, "common_types,no_such_path")
    with pytest.raises(ValueError, match=r"PK_INTERPRETER_FAST_SKIP: unknown .* path\(s\) \['no_such_path'\]"):
        interpreter_fast.install()
    assert interpreter_fast.installed() == before  # refused before anything was removed

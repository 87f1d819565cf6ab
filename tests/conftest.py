import os

import pytest
from hypothesis import HealthCheck, settings

# Before anything imports triton: the backend (and TRITON_INTERPRET) is decided here.
import precision_kernels

# CI profile (DESIGN.md section 10): reproducible, no deadline (an interpreter launch
# takes 10-1000 ms), about 20 examples per property. HYPOTHESIS_PROFILE=thorough digs deeper.
settings.register_profile("ci", derandomize=True, deadline=None, max_examples=20,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", deadline=None, max_examples=2000,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def interpreter_executor(monkeypatch):
    """Run the test's CPU launches (and its subprocesses') in the Triton interpreter, not the CPU twins:
    tests of the interpreter itself and of the Triton source on CPU use it
    (``pytestmark = pytest.mark.usefixtures("interpreter_executor")``)."""
    monkeypatch.setenv("PK_CPU_EXECUTOR", "interpreter")


@pytest.fixture
def masked_lanes_undefined(monkeypatch):
    """A masked ``tl.load`` without ``other`` reads NaN (floats) or all-ones bits (integers), not the interpreter's 0.

    On a GPU such lanes hold whatever is there, so a kernel that relies on them being 0 is wrong there; the
    compiled-form tests (tests/test_compiled_form*.py) run with this so that a dropped ``other=0`` shows.
    Nothing changes on a GPU.
    """
    if not precision_kernels.backend.INTERPRETED:
        return
    import numpy as np
    from triton.runtime import interpreter

    original = interpreter.InterpreterBuilder.create_masked_load

    def poisoned(self, ptrs, mask, other, cache_policy, is_volatile):
        if other is None:
            dtype_tt = ptrs.get_element_ty()
            dtype_np = np.dtype(interpreter._get_np_dtype(dtype_tt))
            fill = np.nan if dtype_np.kind == "f" else True if dtype_np.kind == "b" else np.array(-1).astype(dtype_np)
            other = interpreter.TensorHandle(np.full(ptrs.data.shape, fill, dtype=dtype_np), dtype_tt)
        return original(self, ptrs, mask, other, cache_policy, is_volatile)

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_masked_load", poisoned)


@pytest.fixture
def bf16_dot_widened(monkeypatch):
    """The interpreter's ``tl.dot`` on bf16 operands multiplies their uint16 bit patterns as integers (DESIGN.md
    section 3.3); here bf16 operands are widened exactly to fp32 first (a 16-bit shift), so a dot computes
    what tensor cores do: exact products, fp32 sums. Lets the compiled-form tests run bf16. Nothing changes on
    a GPU."""
    if not precision_kernels.backend.INTERPRETED:
        return
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    original = interpreter.InterpreterBuilder.create_dot

    def widened(x):
        if x.dtype.scalar != tl.bfloat16:
            return x
        return interpreter.TensorHandle((x.data.astype(np.uint32) << 16).view(np.float32), tl.float32)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return original(self, widened(a), widened(b), d, input_precision, max_num_imprecise_acc)

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_dot", create_dot)

import os

import pytest
from hypothesis import HealthCheck, settings

# Before anything imports triton: the backend (and TRITON_INTERPRET) is decided here.
import precision_kernels  # noqa: F401

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

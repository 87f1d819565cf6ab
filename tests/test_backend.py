import os
import subprocess
import sys

import pytest
import torch

import precision_kernels as pk
from precision_kernels import backend

# The interpreter fast paths (PK_INTERPRETER_FAST) are tested in tests/test_interpreter_fast.py, and the
# options every real launch receives in tests/test_launch.py.


def test_backend_is_decided_and_exposed():
    assert pk.active_backend() in ("cuda", "interpreter")
    assert pk.active_backend() == ("cuda" if torch.cuda.is_available() else "interpreter")
    assert backend.device().type == ("cuda" if pk.active_backend() == "cuda" else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only machines choose the interpreter; this one has a GPU")
def test_cpu_only_machine_runs_the_interpreter():
    assert os.environ.get("TRITON_INTERPRET") == "1"
    assert backend.INTERPRETED


def _backend_in_subprocess(env_update: dict, unset=()) -> str:
    env = dict(os.environ, **env_update)
    for key in unset:
        env.pop(key, None)
    out = subprocess.run([sys.executable, "-c", "import precision_kernels as pk; print(pk.active_backend())"],
                         env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_compile_only_override_defines_compiled_kernels():
    assert _backend_in_subprocess({"PK_COMPILE_ONLY": "1"}) == "compile-only"


def test_user_setting_of_triton_interpret_wins():
    assert _backend_in_subprocess({"TRITON_INTERPRET": "1"}) == "interpreter"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU-only: TRITON_INTERPRET=0 selects CUDA only where "
                    "a CUDA device exists")
def test_user_setting_of_triton_interpret_off_selects_cuda():
    assert _backend_in_subprocess({"TRITON_INTERPRET": "0"}) == "cuda"

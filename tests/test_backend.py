import os
import subprocess
import sys

import pytest
import torch
import triton

import precision_kernels as pk
from precision_kernels import backend, interpreter_fast

# The interpreter fast paths change no bit: tests/test_interpreter_fast.py (every kernel family) and
# tests/test_interpreter_installers.py (each installer). The options every real launch receives:
# tests/test_launch.py.


def test_backend_is_decided_and_exposed():
    assert pk.active_backend() in ("cuda", "interpreter")
    assert pk.active_backend() == ("cuda" if torch.cuda.is_available() else "interpreter")
    assert backend.device().type == ("cuda" if pk.active_backend() == "cuda" else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only machines choose the interpreter; this one has a GPU")
def test_cpu_only_machine_runs_the_interpreter():
    assert os.environ.get("TRITON_INTERPRET") == "1"
    assert backend.INTERPRETED


@pytest.mark.skipif(not backend.INTERPRETED or os.environ.get(interpreter_fast.FAST_ENV, "1") == "0",
                    reason="the fast paths are only installed under the interpreter, unless PK_INTERPRETER_FAST=0")
def test_interpreter_runs_with_every_fast_path():
    """Without them the interpreter is ~2x slower: a Triton other than the one they are written for fails here."""
    expected = tuple(name for name in interpreter_fast.INSTALLERS if name not in interpreter_fast.skipped_by_env())
    assert interpreter_fast.installed() == expected, (
        f"interpreter fast paths installed: {interpreter_fast.installed()}, expected {expected}; they are written "
        f"for Triton {interpreter_fast.PATCHED_TRITON}x and this is Triton {triton.__version__} "
        f"(the Makefile pins it on CPU-only machines: rm -rf .venv && make setup)")


# Run in a fresh process: the backend, the fast paths installed, and, for each kernel or op module, whether
# the fast paths were already installed when it was first imported.
_IMPORT_WATCH = """
import importlib.abc, sys
seen = []
class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.startswith(("precision_kernels.kernels.", "precision_kernels.ops.")):
            fast = sys.modules.get("precision_kernels.interpreter_fast")
            seen.append(bool(fast and fast.installed()))
sys.meta_path.insert(0, Watch())
import precision_kernels as pk
print(pk.active_backend(), ",".join(pk.interpreter_fast.installed()) or "-", len(seen), sum(seen))
"""


def _backend_in_subprocess(env_update: dict, unset=()) -> list[str]:
    env = dict(os.environ, **env_update)
    for key in unset:
        env.pop(key, None)
    out = subprocess.run([sys.executable, "-c", _IMPORT_WATCH], env=env, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_compile_only_override_defines_compiled_kernels():
    chosen, fast, modules, _ = _backend_in_subprocess({"PK_COMPILE_ONLY": "1"})
    assert (chosen, fast) == ("compile-only", "-")  # Triton's frontend untouched for triton.compile
    assert int(modules) > 0


def test_user_setting_of_triton_interpret_wins():
    chosen, fast, modules, installed_before = _backend_in_subprocess({"TRITON_INTERPRET": "1"},
                                                                     unset=[interpreter_fast.FAST_ENV,
                                                                            interpreter_fast.SKIP_ENV])
    assert chosen == "interpreter"
    if triton.__version__.startswith(interpreter_fast.PATCHED_TRITON):
        # installed by the backend's decision, before any kernel is defined
        assert fast == ",".join(interpreter_fast.INSTALLERS)
        assert int(modules) > 0 and installed_before == modules


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU-only: TRITON_INTERPRET=0 selects CUDA only where "
                    "a CUDA device exists")
def test_user_setting_of_triton_interpret_off_selects_cuda():
    assert _backend_in_subprocess({"TRITON_INTERPRET": "0"}) == "cuda"

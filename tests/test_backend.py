import os
import subprocess
import sys

import torch

import precision_kernels as pk
from precision_kernels import backend


def test_backend_is_decided_and_exposed():
    assert pk.active_backend() in ("cuda", "interpreter")
    if not torch.cuda.is_available():
        assert pk.active_backend() == "interpreter"
        assert os.environ.get("TRITON_INTERPRET") == "1"
        assert backend.device().type == "cpu"


def test_every_launch_sets_fp_fusion():
    assert backend.launch_options() == {"enable_fp_fusion": backend.FP_FUSION}


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

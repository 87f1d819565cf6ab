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


def test_interpreter_speedups_change_no_bits():
    """backend.py skips redundant interpreter work; the same kernels with it off give the same bits."""
    if pk.active_backend() != "interpreter":
        return
    script = (
        "import torch, precision_kernels as pk\n"
        "g = torch.Generator().manual_seed(0)\n"
        "x = torch.randn(70, 96, generator=g).half(); w = torch.randn(40, 96, generator=g).half()\n"
        "t = torch.randint(0, 40, (70,), generator=g)\n"
        "out = [pk.linear(x, w), pk.softmax(x, scale=0.3), pk.rms_norm(x, torch.ones(96).half()),\n"
        "       pk.linear_logprobs(x, w, t, 0.7)]\n"
        "torch.save(out, __import__('sys').argv[1])\n"
    )
    results = []
    for fast in ("1", "0"):
        path = f"/tmp/pk_fast_{fast}_{os.getpid()}.pt"
        env = dict(os.environ, PK_INTERPRETER_FAST=fast)
        subprocess.run([sys.executable, "-c", script, path], env=env, check=True)
        results.append(torch.load(path))
        os.unlink(path)
    for a, b in zip(*results):
        assert torch.equal(a.view(torch.int16) if a.dtype != torch.float32 else a.view(torch.int32),
                           b.view(torch.int16) if b.dtype != torch.float32 else b.view(torch.int32))

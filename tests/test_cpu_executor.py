"""The CPU executor's framework (precision_kernels/cpu_executor): selection rule, registry, lazy import,
threads, launch records, and the numpy semantics the twins rely on (a numpy upgrade that changes
them fails here first). Each family's twins are tested in tests/test_cpu_executor_<family>.py."""

import hashlib
import os
import subprocess
import sys
import textwrap
import threading
import warnings

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

import precision_kernels as pk
from precision_kernels import backend, cpu_executor, profiles
from precision_kernels.cpu_executor import use_cpu_executor
from precision_kernels.kernels.matmul import matmul_kernel
from precision_kernels.ops import registry
from precision_kernels.ops._common import compiled_forms, launch, observe_launches

pytestmark = pytest.mark.skipif(not backend.INTERPRETED, reason="the CPU executor runs on the interpreter backend")

# Kernels of the op registry that have no twin yet. A family's twin module removes its kernels from
# here; the test fails both ways, so this list is always the truth.
KERNELS_WITHOUT_TWIN: set[str] = set()


def _family_kernels() -> set[str]:
    return {k.__name__ for family in registry.all_families().values() for k in family.kernels}


def test_the_twin_list_is_the_truth():
    twins = set(cpu_executor.registered())
    kernels = _family_kernels()
    # a two-form kernel's compiled (tl.dot) form has no twin by design: its interpreter form has it
    compiled_forms = {name for family in registry.all_families().values() for name in family.compiled_forms()}
    assert twins <= kernels, f"twins of kernels no op family launches: {twins - kernels}"
    assert not twins & compiled_forms, f"twins of compiled forms: {sorted(twins & compiled_forms)}"
    assert kernels - compiled_forms - twins == KERNELS_WITHOUT_TWIN, (
        f"kernels without a twin: {sorted(kernels - twins)}; KERNELS_WITHOUT_TWIN says {sorted(KERNELS_WITHOUT_TWIN)}")
    assert {"matmul_kernel", "bmm_kernel"} <= twins


def _x(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def test_the_default_is_the_twin_and_each_switch_selects_the_interpreter(monkeypatch):
    a, b = _x(3, 5), _x(5, 4, seed=1)
    monkeypatch.delenv(cpu_executor.EXECUTOR_ENV, raising=False)
    with observe_launches() as records:
        pk.matmul(a, b)
    assert [r.executor for r in records] == ["twin"]
    with use_cpu_executor("interpreter"), observe_launches() as records:
        pk.matmul(a, b)
    assert [r.executor for r in records] == ["interpreter"]
    monkeypatch.setenv(cpu_executor.EXECUTOR_ENV, "interpreter")
    with observe_launches() as records:
        pk.matmul(a, b)
    assert [r.executor for r in records] == ["interpreter"]
    with use_cpu_executor("twins"), observe_launches() as records:   # the context manager wins
        pk.matmul(a, b)
    assert [r.executor for r in records] == ["twin"]
    monkeypatch.setenv(cpu_executor.EXECUTOR_ENV, "numba")
    with pytest.raises(ValueError, match="PK_CPU_EXECUTOR must be one of"):
        pk.matmul(a, b)
    with pytest.raises(ValueError, match="executor must be one of"), use_cpu_executor("fast"):
        pass


def test_compiled_forms_and_cuda_tiles_always_run_in_the_interpreter():
    assert cpu_executor.choose(matmul_kernel) is not None
    with profiles.config_backend("cuda"), observe_launches() as records:
        pk.matmul(_x(3, 5), _x(5, 4, seed=1))
    assert [r.executor for r in records] == ["interpreter"]
    with compiled_forms(), observe_launches() as records:
        pk.matmul(_x(3, 5), _x(5, 4, seed=1))
    assert [(r.kernel, r.executor) for r in records] == [("matmul_compiled_kernel", "interpreter")]


@triton.jit
def _copy_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)


def test_a_kernel_without_twin_runs_in_the_interpreter_and_warns_once():
    x, out = torch.arange(5.0), torch.zeros(5)
    cpu_executor._warned.discard("_copy_kernel")
    with pytest.warns(RuntimeWarning, match="_copy_kernel has no CPU twin"), observe_launches() as records:
        launch(_copy_kernel, (1,), x, out, 5, BLOCK=8)
    assert records[0].executor == "interpreter" and torch.equal(out, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        launch(_copy_kernel, (1,), x, out, 5, BLOCK=8)


def test_twin_registration_rejects_a_second_twin_and_a_non_kernel():
    with pytest.raises(ValueError, match="already has a twin"):
        cpu_executor.twin(matmul_kernel)(lambda grid, **kw: None)
    with pytest.raises(TypeError, match="takes a @triton.jit kernel"):
        cpu_executor.twin(len)


def test_import_and_launch_without_numba():
    """A GPU machine has no numba: importing the library must not need it; a CPU launch then falls back."""
    code = textwrap.dedent("""
        import sys, warnings
        sys.modules["numba"] = None            # import numba raises ImportError
        import torch
        import precision_kernels as pk
        assert "numba" not in sys.modules or sys.modules["numba"] is None
        from precision_kernels.ops._common import observe_launches
        with warnings.catch_warnings(record=True) as caught, observe_launches() as records:
            warnings.simplefilter("always")
            out = pk.matmul(torch.ones(2, 3), torch.ones(3, 2))
        assert [r.executor for r in records] == ["interpreter"], records
        assert any("needs numba" in str(w.message) for w in caught), [str(w.message) for w in caught]
        assert out.eq(3).all()
        print("ok")
    """)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_several_python_threads_launch_twins_at_once():
    """numba's workqueue layer aborts here; the threadsafe layer (OpenMP or TBB) must not."""
    import numba

    a, b = _x(70, 40), _x(40, 130, seed=1)
    want = pk.matmul(a, b)
    results, errors = {}, []

    def work(i):
        try:
            for _ in range(3):
                results[i] = pk.matmul(a, b)
        except BaseException as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert all(torch.equal(r.view(torch.int32), want.view(torch.int32)) for r in results.values())
    assert numba.threading_layer() in ("omp", "tbb")


# ---- the numpy semantics the twins assume (EXECUTOR_API.md "numpy-owned bits") ---------------


def _pairwise(a: np.ndarray) -> np.float32:
    """numpy's pairwise sum of a contiguous float32 run (numpy/_core/src/umath/loops_utils.h.src)."""
    n = len(a)
    if n < 8:
        res = np.float32(0.0)
        for v in a:
            res = np.float32(res + v)
        return res
    if n <= 128:
        r = [np.float32(v) for v in a[:8]]
        i = 8
        while i < n - n % 8:
            for j in range(8):
                r[j] = np.float32(r[j] + a[i + j])
            i += 8
        res = np.float32(np.float32(np.float32(r[0] + r[1]) + np.float32(r[2] + r[3]))
                         + np.float32(np.float32(r[4] + r[5]) + np.float32(r[6] + r[7])))
        for v in a[i:]:
            res = np.float32(res + v)
        return res
    half = n // 2
    half -= half % 8
    return np.float32(_pairwise(a[:half]) + _pairwise(a[half:]))


def _spread(shape, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * np.exp(rng.uniform(-12, 12, shape))).astype(np.float32)


@pytest.mark.parametrize("n", [1, 5, 7, 8, 9, 31, 64, 127, 128, 129, 256, 1000, 4099])
def test_numpy_sums_a_last_axis_pairwise(n):
    x = _spread((3, n), n)
    got = np.sum(x, axis=-1)
    want = np.array([np.float32(0.0) + _pairwise(row) for row in x], np.float32)
    assert got.view(np.uint32).tolist() == want.view(np.uint32).tolist()
    if n >= 64:  # and that is not the sequential sum
        seq = np.zeros(3, np.float32)
        for j in range(n):
            seq = (seq + x[:, j]).astype(np.float32)
        assert seq.view(np.uint32).tolist() != got.view(np.uint32).tolist()


def test_numpy_sums_an_outer_axis_slice_by_slice_from_plus_zero():
    x = _spread((37, 4, 5), 1)
    want = np.zeros((4, 5), np.float32)
    for k in range(37):
        want = (want + x[k]).astype(np.float32)
    assert np.sum(x, axis=0).view(np.uint32).tolist() == want.view(np.uint32).tolist()
    assert np.sum(np.full((3, 2), -0.0, np.float32), axis=0).view(np.uint32).tolist() == [0, 0]


def test_numpy_nanmax_ignores_nan_and_keeps_this_zero():
    assert np.nanmax(np.array([np.nan, 1.0, -2.0], np.float32)) == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert np.isnan(np.nanmax(np.array([np.nan, np.nan], np.float32)))
    zeros = np.array([[-0.0, 0.0], [0.0, -0.0]], np.float32)
    # which zero wins depends on the axis: recorded as numpy 2.4 does it
    assert np.signbit(np.nanmax(zeros, axis=1)).tolist() == [True, False]
    assert np.signbit(np.nanmax(zeros, axis=0)).tolist() == [True, True]


def test_numpy_exp_and_log_bits_are_unchanged():
    """Twins call numpy's exp and log (a compiled exp matched it on ~61% of elements): these are its bits."""
    rng = np.random.default_rng(20261207)
    x = rng.uniform(-90, 90, 4099).astype(np.float32)
    y = rng.uniform(1e-30, 1e3, 4099).astype(np.float32)
    with np.errstate(over="ignore"):
        e = np.exp(x)
        assert np.exp(np.repeat(x, 2)[::2]).tobytes() == e.tobytes()      # strided: the same bits
    assert hashlib.sha256(e.tobytes()).hexdigest()[:16] == "8f9870576b341485"
    assert hashlib.sha256(np.log(y).tobytes()).hexdigest()[:16] == "073ad44068be7031"


# ---- the twins' format helpers (cpu_executor/_numba.py) -------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_widening_every_16_bit_pattern_is_exact_and_keeps_nan_payloads(dtype):
    from precision_kernels.cpu_executor._numba import widen_all

    patterns = np.arange(-(2**15), 2**15, dtype=np.int16)
    got = widen_all(patterns, 1 if dtype == torch.float16 else 2).view(np.uint32)
    if dtype == torch.float16:   # numpy's widening (the interpreter's), signalling NaNs included
        want = patterns.view(np.float16).astype(np.float32).view(np.uint32)
    else:                        # the interpreter's shift
        want = (patterns.view(np.uint16).astype(np.uint32) << 16)
    assert np.array_equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_rounding_matches_round_fp32_on_edge_and_random_patterns(dtype):
    """The compiled RNE against the kernels' own rounding (pk.round_to runs round_to_kernel)."""
    from precision_kernels.cpu_executor._numba import round_all

    rng = np.random.default_rng(5)
    edges = [0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00001, 0x7F800001, 0x7F7FFFFF,
             0x477FF000, 0x477FEFFF, 0x477FF001, 0x38800000, 0x387FFFFF, 0x33000000, 0x33000001, 0x00000001,
             0x3F808000, 0x3F818000, 0x7F7F8000, 0x7F7F7FFF, 0xFF7F8000]
    pats = np.concatenate([np.array(edges, np.uint32), rng.integers(0, 2**32, 20000, dtype=np.uint32),
                           (rng.integers(0, 2**16, 4000, dtype=np.uint32) << 16) | 0x8000])
    x = pats.view(np.float32)
    kind = 1 if dtype == torch.float16 else 2
    bits, back = round_all(x, kind)
    with use_cpu_executor("interpreter"):
        want = pk.round_to(torch.from_numpy(x.copy()), dtype)
    assert np.array_equal(bits, want.view(torch.int16).numpy())
    assert np.array_equal(back.view(np.uint32), want.float().numpy().view(np.uint32))


def _matmul_bits_in_child(a, b):
    # 2 threads for the twin only: torch's own OpenMP regions hang in a forked child (libgomp is not
    # fork-safe), so nothing else here may run on 2 threads
    torch.set_num_threads(2)
    out = pk.matmul(a, b)
    torch.set_num_threads(1)
    return out.view(torch.int32).numpy().tobytes()


def test_a_process_forked_after_parallel_twins_still_computes():
    """GNU OpenMP terminates a forked child that enters its parent's pool: such a child runs twins serially."""
    import concurrent.futures
    import multiprocessing

    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        a, b = _x(70, 40), _x(40, 300, seed=1)
        want = pk.matmul(a, b).view(torch.int32).numpy().tobytes()   # a parallel twin here (2 threads)
        ctx = multiprocessing.get_context("fork")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx, initializer=torch.set_num_threads,
                                                    initargs=(1,)) as pool:
            got = pool.submit(_matmul_bits_in_child, a, b).result(timeout=120)
    finally:
        torch.set_num_threads(saved)
    assert got == want


def test_warm_compiles_every_family():
    seconds = cpu_executor.warm()
    assert "matmul" in seconds


def test_an_rl_step_runs_on_the_twins(monkeypatch):
    """The default path really is the executor: the interpreter's entry point raises for every kernel that has
    a twin, and a TinyGPT RL step (sampling, scoring, backward) still runs."""
    from triton.runtime.interpreter import InterpretedFunction

    from rl.learner import StepConfig, learner_step
    from rl.model import ModelConfig, TinyGPT
    from rl.sampler import generate
    from rl.tasks import get_task

    monkeypatch.delenv(cpu_executor.EXECUTOR_ENV, raising=False)
    original = InterpretedFunction.run

    def run(self, *args, **kwargs):
        if self.__name__ not in KERNELS_WITHOUT_TWIN:
            raise AssertionError(f"{self.__name__} ran in the interpreter, not its twin")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(InterpretedFunction, "run", run)
    task = get_task("reverse")
    cfg = ModelConfig(vocab_size=task.vocab_size, d_model=32, n_layers=2, n_heads=2, max_seq_len=task.seq_len,
                      precision="fp16")
    model = TinyGPT(cfg, seed=0, init="torch")
    prompts = task.sample(2, torch.Generator().manual_seed(0))[0]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with observe_launches() as records:
        ro = generate(model, prompts, task.max_new_tokens, generator=torch.Generator().manual_seed(1),
                      eos_id=task.eos_id, pad_id=task.pad_id)
        rewards = task.reward(prompts, ro.tokens[:, task.prompt_len:], ro.mask)
        learner_step(model, opt, torch.amp.GradScaler("cpu", enabled=False), ro, rewards, 2, task.prompt_len,
                     StepConfig())
    assert {r.kernel for r in records if r.executor == "twin"} >= {"matmul_kernel", "lm_head_kernel"}
    assert {r.kernel for r in records if r.executor != "twin"} <= KERNELS_WITHOUT_TWIN


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.float16, torch.float32])
def test_executor_helpers_compare_bit_patterns(dtype):
    """The twin tests' comparison sees the sign of zero and a NaN's payload, in fp8 too."""
    from executor_helpers import bits

    zeros = torch.tensor([0.0, -0.0]).to(dtype)
    assert bits(zeros)[0] != bits(zeros)[1]
    nan = torch.tensor([float("nan")]).to(dtype)
    assert bool((bits(nan) == bits(nan.clone())).all())
    pattern = bits(nan)
    sign_bit = 0x80 if pattern.dtype == torch.uint8 else torch.iinfo(pattern.dtype).min
    other_nan = pattern ^ sign_bit                   # the same NaN, the other sign: e4m3fn has no second payload
    assert bool(torch.isnan(other_nan.view(dtype)).all()) and not bool((other_nan == bits(nan)).all())

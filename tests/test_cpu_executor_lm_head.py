"""The fused LM head's CPU twins (cpu_executor/lm_head.py) give the interpreter's bits: pk.linear_logprobs (SCORE,
with and without entropy, forward and both gradients) and pk.linear_sample (seeded SAMPLE: tokens and log-probs),
every dtype, both profiles (engine split-K), T != 1, odd sizes, one row, V past a vocab block and past a backward
chunk, NaN/inf/-0 and -0 logits; direct launches with other BLOCK_V/BLOCK_K/SPLITS; 1 vs 2 threads."""

import pytest
import torch
import triton
from executor_helpers import assert_twin_matches_interpreter, bits
from hypothesis import given, settings
from hypothesis import strategies as st

import precision_kernels as pk
from precision_kernels import backend
from precision_kernels.cpu_executor import use_cpu_executor
from precision_kernels.kernels.lm_head import lm_head_dlogits_kernel, lm_head_kernel
from precision_kernels.ops._common import kernel_view, launch, observe_launches

pytestmark = pytest.mark.skipif(not backend.INTERPRETED, reason="the CPU executor runs on the interpreter backend")

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
KIND = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def _head(rows, d, vocab, dtype, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(rows, d, generator=g).to(dtype)
    w = (torch.randn(vocab, d, generator=g) * (scale / max(d, 1) ** 0.5)).to(dtype)
    ids = torch.randint(0, vocab, (rows,), generator=g)
    seeds = torch.randint(-(2**63), 2**63 - 1, (rows,), generator=g, dtype=torch.int64)
    return h, w, ids, seeds


def _score(ids, temperature, entropy):
    """With entropy: the custom op, whose row max and row sum (the backward's state) are compared too."""
    if entropy:
        return lambda h, w: torch.ops.pk.linear_logprobs(h, w, ids, temperature, True)
    return lambda h, w: pk.linear_logprobs(h, w, ids, temperature)


def _sample(seeds, temperature):
    return lambda h, w: pk.linear_sample(h, w, temperature, seeds=seeds)


def _all_modes(h, w, ids, seeds, temperature):
    """SCORE with entropy (forward, both gradients), SCORE alone, seeded SAMPLE: each bitwise."""
    assert_twin_matches_interpreter(_score(ids, temperature, True), h.requires_grad_(), w.requires_grad_())
    assert_twin_matches_interpreter(_score(ids, temperature, False), h, w)
    records = assert_twin_matches_interpreter(_sample(seeds, temperature), h.detach(), w.detach())
    assert [r.kernel for r in records] == ["lm_head_kernel"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("profile", ["matched", "engine"])
def test_every_mode_dtype_and_profile(dtype, profile):
    """5 rows, K = 37 (a partial BLOCK_K; engine: chunks of 16), V = 300 (three vocab blocks, the last partial)."""
    h, w, ids, seeds = _head(5, 37, 300, dtype, 1, scale=3.0)
    with pk.use_profile(profile):
        _all_modes(h, w, ids, seeds, 0.7)


def test_one_row_and_temperature_above_one():
    h, w, ids, seeds = _head(1, 9, 129, torch.bfloat16, 2, scale=4.0)
    with pk.use_profile("engine"):
        _all_modes(h, w, ids, seeds, 1.7)


@pytest.mark.parametrize("profile", ["matched", "engine"])
def test_empty_hidden_dimension(profile):
    """K = 0: every logit is the empty sum +0 (a uniform distribution)."""
    h, w, ids, seeds = _head(2, 0, 130, torch.float16, 9)
    with pk.use_profile(profile):
        _all_modes(h, w, ids, seeds, 0.7)


def test_no_rows_by_vocab_buffer():
    """The twins hold chunks of columns, never (rows x V): numpy's peak while scoring with entropy, its backward
    and sampling 128 rows over V = 40000 stays under a quarter of one fp32 (rows x V) buffer."""
    import tracemalloc

    h, w, ids, seeds = _head(128, 4, 40000, torch.float32, 8)
    h.requires_grad_()
    tracemalloc.start()
    try:
        logprob, entropy = pk.linear_logprobs(h, w, ids, return_entropy=True)
        (logprob.sum() + entropy.sum()).backward()
        pk.linear_sample(h.detach(), w, seeds=seeds)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 128 * 40000 * 4 / 4, peak


def test_vocab_past_a_backward_chunk(monkeypatch):
    """V = 8192 + 201: 65 vocab blocks forward, two backward chunks (the second partial) whose grad_hidden
    partials are summed in chunk order. The twin's own column chunks are cut to 5 blocks (13 and a partial one
    forward, 640 columns backward), so the running state crosses chunk boundaries."""
    from precision_kernels.cpu_executor import lm_head as twins  # numba: only on the interpreter backend

    monkeypatch.setattr(twins, "CHUNK_ELEMENTS", 3 * 128 * 5)
    h, w, ids, seeds = _head(3, 20, 8192 + 201, torch.float32, 3, scale=5.0)
    ids[1] = 8192 + 200          # a token in the last, partial chunk and block
    records = assert_twin_matches_interpreter(_score(ids, 0.9, True), h.requires_grad_(), w.requires_grad_())
    assert [r.kernel for r in records].count("lm_head_dlogits_kernel") == 2
    assert_twin_matches_interpreter(_sample(seeds, 0.9), h.detach(), w.detach())


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_inf_and_negative_zero(dtype):
    """Row 1 has a NaN (every logit NaN), row 2 an inf (+-inf and NaN logits), row 3 -0 entries; the weight has
    a -inf, a NaN-free -0 row and a zero row (logits that tie at +0)."""
    h, w, ids, seeds = _head(5, 12, 260, dtype, 4, scale=3.0)
    h[1, 3], h[2, 5], h[3, :6] = float("nan"), float("inf"), -0.0
    w[7, :], w[8, :], w[200, 2] = 0.0, -0.0, float("-inf")
    _all_modes(h, w, ids, seeds, 0.8)


def test_negative_zero_logits_tie_with_positive_zero():
    """z = logit / T underflows to -0 for a logit of -(smallest subnormal) and T = 3. Vocab block 0 is all -0,
    block 1 mixed (its max is a tie within the block), block 2 all +0: the running max meets -0 and +0 at each
    step, and numpy's fmax picks one by the operands' order and their SIMD position, as on the kernel's
    BLOCK_M-long rows (the stored row max shows which)."""
    tiny = torch.tensor(2.0**-149)
    w = torch.zeros(300, 1)
    w[:128] = -tiny
    w[128:256] = torch.where(torch.arange(128)[:, None] % 3 == 0, -tiny, torch.tensor(-0.0))
    ids = torch.tensor([0, 200, 299])
    _all_modes(torch.ones(3, 1), w, ids, torch.tensor([5, -6, 7], dtype=torch.int64), 3.0)


@settings(max_examples=6)
@given(rows=st.integers(1, 6), d=st.integers(0, 40), vocab=st.integers(1, 300), dtype=st.sampled_from(DTYPES),
       engine=st.booleans(), temperature=st.sampled_from([0.5, 1.0, 1.7]), seed=st.integers(0, 2**16))
def test_small_shapes(rows, d, vocab, dtype, engine, temperature, seed):
    h, w, ids, seeds = _head(rows, d, vocab, dtype, seed, scale=3.0)
    with pk.use_profile("engine" if engine else "matched"):
        _all_modes(h, w, ids, seeds, temperature)


def _direct(make, executor):
    kernel, grid, args, constexprs = make()
    with use_cpu_executor(executor), observe_launches() as records:
        launch(kernel, grid, *args, **constexprs)
    assert [r.executor for r in records] == ["twin" if executor == "twins" else "interpreter"]
    return args


@pytest.mark.parametrize("mode", [0, 1])
@pytest.mark.parametrize("block_v,block_k,splits,k_chunk", [(16, 8, 1, 45), (32, 4, 3, 10), (64, 16, 2, 30)])
def test_direct_launch_follows_block_v_block_k_and_splits(mode, block_v, block_k, splits, k_chunk):
    """Tiles the ops do not pass (BLOCK_M = 16 < rows): the vocab blocks, K blocks and split chunks are followed;
    the backward kernel over a chunk that starts past column 0."""
    m, k, v, dtype = 19, 45, 150, torch.float16
    h, w, ids, seeds = _head(m, k, v, dtype, 5, scale=4.0)
    hv, wv = kernel_view(h), kernel_view(w.t().contiguous().t())   # a column-major weight: stride_wv = 1

    def forward():
        out = [torch.full((m,), 7.0) for _ in range(4)]
        tokens = ids.clone() if mode == 0 else torch.zeros(m, dtype=torch.int64)
        return lm_head_kernel, (triton.cdiv(m, 16),), (hv, wv, tokens, seeds, *out, m, v, k, k_chunk, *hv.stride(),
                                                        *wv.stride(), 0.6), dict(
            MODE=mode, KIND=1, SPLITS=splits, WITH_ENTROPY=True, BLOCK_M=16, BLOCK_V=block_v,
            BLOCK_K=block_k)

    want, got = _direct(forward, "interpreter"), _direct(forward, "twins")
    for i in (2, 4, 5, 6, 7):
        assert torch.equal(bits(got[i]), bits(want[i])), i
    logprob, entropy, row_max, row_sum = want[4:8]
    g = torch.Generator().manual_seed(6)
    g_lp, g_ent = torch.randn(m, generator=g), torch.randn(m, generator=g)

    def backward():
        out = torch.full((m, 100), 7.0, dtype=dtype)
        return lm_head_dlogits_kernel, (2, triton.cdiv(100, block_v)), (
            hv, wv, ids, g_lp, g_ent, entropy, row_max, row_sum, kernel_view(out), m, v, k, block_v, 100,
            *hv.stride(), *wv.stride(), 0.6), dict(KIND=1, HAS_G_ENTROPY=mode == 1, BLOCK_M=16,
                                                   BLOCK_V=block_v, BLOCK_K=block_k)

    assert torch.equal(_direct(backward, "twins")[8], _direct(backward, "interpreter")[8])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_thread_and_two_threads_give_the_same_bits(dtype):
    h, w, ids, seeds = _head(70, 64, 9000, dtype, 7, scale=3.0)
    saved = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
            logprob, entropy = pk.linear_logprobs(hh, ww, ids, 0.8, return_entropy=True)
            (logprob.sum() + entropy.sum()).backward()
            with pk.use_profile("engine"):
                tokens, sampled = pk.linear_sample(h[:4], w, 0.8, seeds=seeds[:4])
            runs.append((logprob, entropy, hh.grad, ww.grad, tokens, sampled))
    finally:
        torch.set_num_threads(saved)
    for one, two in zip(*runs):
        assert torch.equal(bits(one), bits(two))

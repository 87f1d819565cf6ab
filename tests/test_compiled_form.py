"""The compiled (``tl.dot``) forms of the matmul families, run under the interpreter (DESIGN.md section 3.6).

Every launch here takes the compiled form (``ops._common.compiled_forms``) on the CUDA tile table
(``profiles.config_backend("cuda")``), at small shapes that leave partial tiles in M, N and K, so the GPU
code's masks, offsets, strides and pointer steps run on a CPU. The interpreter's ``tl.dot`` is numpy's matmul
(BLAS): accurate, but an element's bits depend on its place in the tile, and it multiplies bf16 operands as
their bit patterns, so here bf16 operands are widened exactly first (conftest ``bf16_dot_widened``: exact
products and fp32 sums, as on tensor cores). Two kinds of checks, in fp32, fp16 and bf16:

* accuracy against FP64 on the same rounded inputs, within the bound any summation order meets: an output
  rounded once to a format of unit roundoff u_out from an fp32 sum of K exact products,
  |c - c64| <= u_out |c64| + (1 + u_out) gamma_{K+S} (|A| |B|) (+ u_out (|A| |B|) with S > 1 rounded
  split-K partials), gamma_n = n u / (1 - n u), u = 2^-24;
* a masked load without ``other`` reads NaN (all-ones bits for integers) here, as a GPU leaves such lanes
  undefined (the interpreter reads 0, which would hide a dropped ``other=0``; conftest
  ``masked_lanes_undefined``), and operands are also read as views whose memory past their logical edges
  holds NaN, so a mask one lane too wide on either operand poisons the result;
* logic invariants, bitwise, on exact-arithmetic inputs: small integers times powers of two, with K and the
  magnitudes bounded so that fp32 holds every product and partial sum exactly. Every summation order then
  gives the same bits, so any bitwise difference comes from a mask, offset, stride or chunk boundary.
"""

from __future__ import annotations

import pytest
import torch

import precision_kernels as pk
from precision_kernels import profiles
from precision_kernels.ops._common import compiled_forms, observe_launches
from precision_kernels.ops.fp8 import reference_scaled_mm
from precision_kernels.ops.lm_head import reference_linear_logprobs
from precision_kernels.ops.matmul import _k_chunk
from precision_kernels.ops.registry import all_families

# On a GPU the same tests run the compiled forms with the hardware's tl.dot (tests/gpu_selection.txt).
pytestmark = pytest.mark.compiled_form

DEVICE = pk.backend.device()
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
U32 = 2.0**-24
U_OUT = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
# (M, K, N): no dimension a multiple of any CUDA tile (fp32 64x64x32, fp16 128x128x64, batched 16x32)
M, K, N = 37, 100, 70


# Kernels whose interpreter form has a compiled form beside it: none of them may run in these tests.
INTERPRETER_FORMS = frozenset().union(*(f.interpreter_forms() for f in all_families().values()))


@pytest.fixture(autouse=True)
def _compiled_on_cuda_tiles(masked_lanes_undefined, bf16_dot_widened):
    with profiles.config_backend("cuda"), compiled_forms(), observe_launches() as records:
        yield
    # what ran is the compiled forms (ops._common.kernel_form): an interpreter form gives the exact bits too
    launched = {r.kernel for r in records}
    assert launched and not launched & INTERPRETER_FORMS, f"interpreter forms ran: {sorted(launched)}"


def randn(*shape, dtype, seed) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype).to(DEVICE)


def exact(*shape, dtype, seed, lo=-8, hi=8, frac_bits=3) -> torch.Tensor:
    """Integers in [lo, hi] / 2^frac_bits: exact in fp16 and fp8 e4m3; with |entries| <= 8 and K <= 2^10 every
    partial sum of products is a multiple of 2^-6 below 2^16, so exact in fp32 (24 bits)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(lo, hi + 1, shape, generator=g).double() / 2**frac_bits).to(dtype).to(DEVICE)


def gamma(n: int) -> float:
    return n * U32 / (1 - n * U32)


def check_matmul_bound(got, ref64, abs_prod, out_dtype, terms: int, splits: int = 1, what=""):
    u = U_OUT[out_dtype]
    bound = u * ref64.abs() + (1 + u) * (gamma(terms + splits) + (u if splits > 1 else 0.0)) * abs_prod
    err = (got.double().cpu() - ref64).abs()
    bad = ~(err <= bound)
    worst = float((err / bound).max())
    assert not bad.any(), f"{what}: {int(bad.sum())} of {bad.numel()} beyond the bound, worst {worst:.3g}"


def bits(t: torch.Tensor) -> torch.Tensor:
    t = t.cpu()
    return t.view({2: torch.int16, 4: torch.int32}[t.element_size()]) if t.dtype.is_floating_point else t


def assert_bitwise(got, want, what=""):
    assert got.dtype == want.dtype and got.shape == want.shape, what
    diff = bits(got) != bits(want)
    assert not diff.any(), f"{what}: {int(diff.sum())} of {diff.numel()} elements differ in their bits"


# ---- 2-D and batched matmul, linear -------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(DTYPES))
def test_matmul_linear_bmm_accuracy_against_fp64(fmt):
    dtype = DTYPES[fmt]
    a, b = randn(M, K, dtype=dtype, seed=1), randn(K, N, dtype=dtype, seed=2)
    ref = a.double().cpu() @ b.double().cpu()
    check_matmul_bound(pk.matmul(a, b), ref, a.double().abs().cpu() @ b.double().abs().cpu(), dtype, K, what="matmul")
    # linear: the weight (N, K) read through transposed strides, and the bias
    w, bias = randn(N, K, dtype=dtype, seed=3), randn(N, dtype=dtype, seed=4)
    ref = a.double().cpu() @ w.double().cpu().T + bias.double().cpu()
    abs_prod = a.double().abs().cpu() @ w.double().abs().cpu().T + bias.double().abs().cpu()
    check_matmul_bound(pk.linear(a, w, bias), ref, abs_prod, dtype, K + 1, what="linear")
    a3, b3 = randn(3, M, K, dtype=dtype, seed=5), randn(3, K, N, dtype=dtype, seed=6)
    ref = a3.double().cpu() @ b3.double().cpu()
    check_matmul_bound(pk.matmul(a3, b3), ref, a3.double().abs().cpu() @ b3.double().abs().cpu(), dtype, K,
                       what="batched")


@pytest.mark.parametrize("fmt", list(DTYPES))
def test_matmul_exact_inputs_rows_and_items_alone_equal_the_batch(fmt):
    """I2 on exact inputs: the rounded exact product, bitwise, for the batch and for each row or item alone."""
    dtype = DTYPES[fmt]
    a, b = exact(M, K, dtype=dtype, seed=11), exact(K, N, dtype=dtype, seed=12)
    full = pk.matmul(a, b)
    assert_bitwise(full, (a.double() @ b.double()).to(dtype), "matmul against the rounded exact product")
    for i in (0, 17, M - 1):
        assert_bitwise(pk.matmul(a[i:i + 1], b), full[i:i + 1], f"row {i} alone")
    # more row blocks than GROUP_M (8), in two column blocks: the grouped program -> tile mapping, last group partial
    tall = profiles.matmul_config(dtype, m=4096, n=N, k=40).block_m * 9 + 5
    a_tall, b_tall = exact(tall, 40, dtype=dtype, seed=17), exact(40, N, dtype=dtype, seed=18)
    assert_bitwise(pk.matmul(a_tall, b_tall), (a_tall.double() @ b_tall.double()).to(dtype), "grouped tiles")
    a3, b3 = exact(3, M, K, dtype=dtype, seed=13), exact(3, K, N, dtype=dtype, seed=14)
    full3 = pk.matmul(a3, b3)
    assert_bitwise(full3, (a3.double() @ b3.double()).to(dtype), "batched against the rounded exact product")
    for i in range(3):
        assert_bitwise(pk.matmul(a3[i:i + 1], b3[i:i + 1]), full3[i:i + 1], f"item {i} alone")
        assert_bitwise(pk.matmul(a3[i], b3[i]), full3[i], f"item {i} as a 2-D product")


def nan_framed(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a view into a larger buffer whose elements past its last row and column are NaN."""
    frame = torch.full((t.shape[0] + 1, t.shape[1] + 3), float("nan"), dtype=t.dtype, device=t.device)
    frame[:t.shape[0], :t.shape[1]] = t
    return frame[:t.shape[0], :t.shape[1]]


@pytest.mark.parametrize("fmt", list(DTYPES))
def test_matmul_nan_past_the_operands_edges_changes_nothing(fmt):
    """Exact inputs read through NaN-framed views, A and B, and B^T as linear's weight: bitwise the product of the
    plain tensors. A mask one K lane, row or column too wide on either operand reads a NaN (0 * NaN is NaN)."""
    dtype = DTYPES[fmt]
    a, b = exact(M, K, dtype=dtype, seed=15), exact(K, N, dtype=dtype, seed=16)
    want = (a.double() @ b.double()).to(dtype)
    assert_bitwise(pk.matmul(nan_framed(a), nan_framed(b)), want, "matmul of framed operands")
    assert_bitwise(pk.linear(nan_framed(a), nan_framed(b.T.contiguous())), want, "linear of framed operands")
    with pk.use_profile("engine"):
        got = pk.matmul(nan_framed(a[:9]), nan_framed(b))
    assert not got.isnan().any(), "engine split-K of framed operands"


def _split_k_expected(a, b, splits: int, k_chunk: int, dtype):
    """The engine's split-K value: each chunk's exact sum rounded to dtype, the rounded partials added in fp32
    in chunk order, the total rounded to dtype."""
    total = torch.zeros(a.shape[0], b.shape[1], dtype=torch.float32, device=a.device)
    for s in range(splits):
        lo, hi = s * k_chunk, min((s + 1) * k_chunk, a.shape[1])
        if lo < hi:
            total += (a[:, lo:hi].double() @ b[lo:hi].double()).to(dtype).float()
    return total.to(dtype)


def test_engine_split_k_chunk_boundaries_are_where_they_should_be():
    """fp16 engine split-K on exact inputs whose chunk sums do not fit fp16: the rounded partials tell the chunk
    boundaries apart (a boundary one K element off gives other bits, checked on the inputs themselves)."""
    dtype, m = torch.float16, 9
    a = exact(m, K, dtype=dtype, seed=21, frac_bits=4)
    b = exact(K, N, dtype=dtype, seed=22, lo=-64, hi=64, frac_bits=4)
    splits = profiles.engine_config().splits
    with pk.use_profile("engine"):
        assert profiles.engine_splits_for(m) == splits > 1
        got = pk.matmul(a, b)
    chunk = _k_chunk(K, splits)
    want = _split_k_expected(a, b, splits, chunk, dtype)
    assert_bitwise(got, want, "engine split-K")
    for off in (-1, 1):
        assert not torch.equal(want, _split_k_expected(a, b, splits, chunk + off, dtype)), "inputs cannot tell"
    a, b = randn(m, K, dtype=dtype, seed=23), randn(K, N, dtype=dtype, seed=24)
    with pk.use_profile("engine"):
        got = pk.matmul(a, b)
    a64, b64 = a.double().cpu(), b.double().cpu()
    check_matmul_bound(got, a64 @ b64, a64.abs() @ b64.abs(), dtype, K, splits=splits, what="engine split-K")


# ---- scaled_mm (fp8 operands; compiled form: exact widening to fp16, fp16 tl.dot) -------------------


@pytest.mark.parametrize("out_fmt", ["fp32", "fp16", "bf16"])
def test_scaled_mm_accuracy_and_exact_rows(out_fmt):
    """Accuracy: the matmul bound on the dequantised operands plus the two scale multiplies and the bias add
    (3 fp32 roundings of the result). Exact: fp8 values k/8 (|k| <= 8), power-of-two row scales and a
    k/8 bias give the rounded exact value, bitwise, for the batch and for a row alone (I2, row-wise scales)."""
    out_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[out_fmt]
    e4 = torch.float8_e4m3fn
    a, b = randn(M, K, dtype=torch.float32, seed=31).to(e4), randn(K, N, dtype=torch.float32, seed=32).to(e4)
    sa, sb = torch.tensor(0.37, device=DEVICE), torch.tensor(1.9, device=DEVICE)
    bias = randn(N, dtype=out_dtype, seed=33)
    got = pk.scaled_mm(a, b, sa, sb, bias=bias, out_dtype=out_dtype)
    ref = reference_scaled_mm(a.cpu(), b.cpu(), sa.cpu(), sb.cpu(), bias=bias.cpu()).cpu()
    abs_prod = (a.double().abs().cpu() @ b.double().abs().cpu()) * float(sa) * float(sb)
    u = U_OUT[out_dtype]
    bound = u * ref.abs() + (1 + u) * (gamma(K + 3) * (abs_prod + bias.double().abs().cpu()) + 3 * U32 * ref.abs())
    err = (got.double().cpu() - ref).abs()
    assert not (~(err <= bound)).any(), f"scaled_mm {out_fmt}: worst {float((err / bound).max()):.3g}"

    a, b = exact(M, K, dtype=torch.float32, seed=34).to(e4), exact(K, N, dtype=torch.float32, seed=35).to(e4)
    sa = 2.0 ** torch.randint(-3, 4, (M, 1), generator=torch.Generator().manual_seed(36)).float().to(DEVICE)
    sb = 2.0 ** torch.randint(-3, 4, (1, N), generator=torch.Generator().manual_seed(37)).float().to(DEVICE)
    bias = exact(N, dtype=out_dtype, seed=38)
    full = pk.scaled_mm(a, b, sa, sb, bias=bias, out_dtype=out_dtype)
    want = ((a.double() @ b.double()) * sa.double() * sb.double() + bias.double()).to(out_dtype)
    assert_bitwise(full, want, "scaled_mm against the rounded exact value")
    for i in (0, M - 1):
        assert_bitwise(pk.scaled_mm(a[i:i + 1], b, sa[i:i + 1], sb, bias=bias, out_dtype=out_dtype), full[i:i + 1],
                       f"row {i} alone")


# ---- fused LM head (SCORE, entropy, SAMPLE) ------------------------------------------------------


V_SIZE = 300          # not a multiple of the CUDA vocabulary block


@pytest.mark.parametrize("fmt", list(DTYPES))
def test_lm_head_accuracy_against_fp64(fmt):
    """|logprob - lp64| <= 2 max_v |dz_v| / T + (V + 8) u (|lp64| + max |z| / T + 1): each logit z = h.w carries
    the rounding to the compute dtype and the fp32 sum's error (u_out |z| + gamma_K |h||w|), which moves the
    token's logit and the log-sum-exp by at most max |dz| / T each; exp, the V-term sum and log add the rest."""
    dtype, rows, temp = DTYPES[fmt], 21, 0.7
    h, w = randn(rows, K, dtype=dtype, seed=41), randn(V_SIZE, K, dtype=dtype, seed=42)
    tokens = torch.randint(0, V_SIZE, (rows,), generator=torch.Generator().manual_seed(43)).to(DEVICE)
    lp, ent = pk.linear_logprobs(h, w, tokens, temp, return_entropy=True)
    lp64, ent64 = reference_linear_logprobs(h.cpu(), w.cpu(), tokens.cpu(), temp, return_entropy=True)
    z = h.double().cpu() @ w.double().cpu().T
    dz = U_OUT[dtype] * z.abs() + gamma(K) * (h.double().abs().cpu() @ w.double().abs().cpu().T)
    zmax = z.abs().amax(-1) / temp
    slack = (V_SIZE + 8) * U32
    bound = 2 * dz.amax(-1) / temp + slack * (lp64.abs() + zmax + 1)
    assert ((lp.double().cpu() - lp64).abs() <= bound).all(), "lm head logprob"
    # entropy = lse - sum p z / T: each term moves by the logit error, twice
    bound = 4 * dz.amax(-1) / temp + slack * (ent64.abs() + 2 * zmax + 1)
    assert ((ent.double().cpu() - ent64).abs() <= bound).all(), "lm head entropy"


@pytest.mark.parametrize("fmt", list(DTYPES))
def test_lm_head_exact_logits_row_alone_and_sample_equals_score(fmt):
    """Exact logits (h, w of k/8, K = 100), so every row's log-sum-exp sees the same fp32 values wherever the
    row sits: a row alone equals itself in the batch, and seeded SAMPLE's log-prob equals SCORE's for the
    drawn token (I5), bitwise."""
    dtype, rows = DTYPES[fmt], 21
    h, w = exact(rows, K, dtype=dtype, seed=51), exact(V_SIZE, K, dtype=dtype, seed=52)
    tokens = torch.randint(0, V_SIZE, (rows,), generator=torch.Generator().manual_seed(53)).to(DEVICE)
    lp, ent = pk.linear_logprobs(h, w, tokens, 1.5, return_entropy=True)
    for i in (0, rows - 1):
        lp_i, ent_i = pk.linear_logprobs(h[i:i + 1], w, tokens[i:i + 1], 1.5, return_entropy=True)
        assert_bitwise(lp_i, lp[i:i + 1], f"row {i} logprob alone")
        assert_bitwise(ent_i, ent[i:i + 1], f"row {i} entropy alone")
    seeds = torch.arange(rows, dtype=torch.int64, device=DEVICE) * 7919 - 3
    drawn, lp_sample = pk.linear_sample(h, w, 1.5, seeds=seeds)
    assert_bitwise(lp_sample, pk.linear_logprobs(h, w, drawn, 1.5), "SAMPLE against SCORE")
    drawn_1, lp_1 = pk.linear_sample(h[3:4], w, 1.5, seeds=seeds[3:4])
    assert torch.equal(drawn_1, drawn[3:4]) and torch.equal(lp_1, lp_sample[3:4]), "a sampled row alone"


@pytest.mark.parametrize("fmt", list(DTYPES))
def test_lm_head_backward_exact_one_hot_softmax(fmt):
    """The backward's compiled forms (dlogits tiles recomputing the logits, then the products with W and h) on
    logits whose softmax is exactly one-hot: column TOP scores 64 + noise and every other -64 + noise (|noise|
    <= 99/16), so exp underflows to exactly 0 off the top and the log-sum-exp is the top logit. Then
    dlogits = g (onehot(token) - onehot(TOP)) exactly, and dh = dlogits W, dW = dlogits^T h are exact sums:
    bitwise against them, and a row's dh alone equals its row in the batch."""
    dtype, rows, top = DTYPES[fmt], 21, 137
    g = torch.Generator().manual_seed(61)
    h = torch.randint(-2, 3, (rows, K), generator=g).double() / 8
    h[:, 0] = 1.0
    w = torch.randint(-2, 3, (V_SIZE, K), generator=g).double() / 8
    w[:, 0] = -64.0
    w[top, 0] = 64.0
    tokens = torch.randint(0, V_SIZE, (rows,), generator=g)
    tokens[::4] = top                                       # some rows score the top token: zero gradient
    tokens[1], tokens[2] = V_SIZE - 1, 0                    # the vocabulary's edges
    g_lp = torch.randint(-16, 17, (rows,), generator=g).double() / 8
    h, w = h.to(dtype).to(DEVICE), w.to(dtype).to(DEVICE)
    tokens, g_lp = tokens.to(DEVICE), g_lp.float().to(DEVICE)

    def grads(h, w, tokens, g_lp):
        leaves = [t.detach().clone().requires_grad_() for t in (h, w)]
        pk.linear_logprobs(*leaves, tokens, 1.0).backward(g_lp)
        return [t.grad for t in leaves]

    dh, dw = grads(h, w, tokens, g_lp)
    onehot = torch.nn.functional.one_hot(tokens, V_SIZE).double()
    dlogits = g_lp.double()[:, None] * (onehot - torch.nn.functional.one_hot(torch.full_like(tokens, top),
                                                                             V_SIZE).double())
    assert_bitwise(dh, (dlogits @ w.double()).to(dtype), "dh against the exact gradient")
    assert_bitwise(dw, (dlogits.T @ h.double()).to(dtype), "dW against the exact gradient")
    for i in (1, rows - 1):
        assert_bitwise(grads(h[i:i + 1], w, tokens[i:i + 1], g_lp[i:i + 1])[0], dh[i:i + 1], f"row {i}'s dh alone")

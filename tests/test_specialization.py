"""No kernel is specialised on the batch (kernels/specialization.py; docs/DESIGN.md section 4.4).

* every registered kernel tells Triton not to specialise its batch-varying arguments
  (checked against the table below, so dropping one from a kernel fails here);
* every op accepts M = 1 and gives the bits of the same row inside a batch, forward and
  backward (the interpreter here; on a GPU the same test compiles the M = 1 launch);
* GPU only: a batch-1 decode equals the batched pass at GPU-sized shapes and batch sizes
  that Triton would specialise (1, multiples of 16).
"""

import pytest
import torch
import triton

import precision_kernels as pk
from precision_kernels import profiles
from precision_kernels.kernels.specialization import row_kernel, tile_kernel, unspecialized_args

DEV = pk.backend.device()
ON_GPU = not pk.backend.INTERPRETED

# What varies with the batch in each kernel: row counts, batch sizes, M. Written out here, not read
# from the kernels, so removing one from a kernel's decorator fails the test.
BATCH_VARYING = {
    "matmul_compiled_kernel": {"M"},
    "bmm_compiled_kernel": {"BATCH", "M"},
    "lm_head_compiled_kernel": {"M"},
    "lm_head_dlogits_compiled_kernel": {"M"},
    "softmax_fwd_kernel": {"n_rows"},
    "softmax_bwd_kernel": {"n_rows"},
    "token_logprobs_fwd_kernel": {"n_rows"},
    "token_logprobs_bwd_kernel": {"n_rows"},
    "rms_norm_fwd_kernel": {"n_rows"},
    "rms_norm_bwd_kernel": {"n_rows"},
    "col_sum_kernel": {"n_parts"},        # one partial row per block of rows
    "layer_norm_fwd_kernel": {"n_rows"},
    "layer_norm_bwd_kernel": {"n_rows"},
    "round_to_kernel": {"n_elements"},   # elementwise: no summation tree, but batch-varying all the same
    "scaled_mm_compiled_kernel": {"M"},
    # attention: (batch, head) items, both sequence lengths, the first-real-key bounds, and every stride that
    # holds a sequence length
    "attention_fwd_compiled_kernel": {"n_items", "Tq", "Tk", "ks_min", "stride_qb", "stride_qh", "stride_kb",
                                      "stride_kh", "stride_mt"},
    "attention_bwd_dq_compiled_kernel": {"n_items", "Tq", "Tk", "ks_min", "stride_qb", "stride_kb", "stride_dob"},
    "attention_bwd_dkdv_compiled_kernel": {"n_kv_items", "Tq", "Tk", "ks_min", "qb_hi", "shift_min", "stride_qb",
                                           "stride_kb", "stride_dob"},
}


def test_every_kernel_leaves_its_batch_varying_arguments_unspecialised():
    from precision_kernels.compile_check import kernel_specs

    fns = {spec.fn.__name__: spec.fn for spec in kernel_specs().values()}
    assert set(fns) == set(BATCH_VARYING), "classify every registered kernel's batch-varying arguments here"
    missing = {name: sorted(BATCH_VARYING[name] - unspecialized_args(fn)) for name, fn in fns.items()
               if BATCH_VARYING[name] - unspecialized_args(fn)}
    assert not missing, f"specialised on the batch: {missing}"


def test_unspecialized_args_reads_compiled_and_interpreted_kernels():
    """The reader sees do_not_specialize on a JITFunction (compiled) and an InterpretedFunction alike."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    def body(x_ptr, n_rows, n_cols):
        pass

    assert unspecialized_args(JITFunction(body, do_not_specialize=["n_rows", 2])) == {"n_rows", "n_cols"}
    assert unspecialized_args(InterpretedFunction(body, do_not_specialize=["n_rows"])) == {"n_rows"}
    assert unspecialized_args(JITFunction(body)) == frozenset()


def test_decorators_refuse_names_that_are_not_runtime_arguments():
    """triton.jit silently ignores an unknown name in do_not_specialize: a typo would leave M specialised."""

    def body(x_ptr, n_rows, BLOCK: triton.language.constexpr):
        pass

    with pytest.raises(ValueError, match=r"batch_args of body: \['M'\]"):
        tile_kernel(batch_args=("M",))(body)
    with pytest.raises(ValueError, match=r"\['BLOCK'\] are not runtime arguments"):
        row_kernel(batch_args=("BLOCK",))(body)
    with pytest.raises(TypeError, match="tuple of argument names"):
        tile_kernel(batch_args="n_rows")(body)
    assert unspecialized_args(row_kernel(body)) == {"n_rows"}


# ---------------------------------------------------------------- M = 1 equals the row in a batch

def _randn(shape, dtype, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale).to(dtype).to(DEV)


def _ops(dtype, d, n, vocab):
    """name -> fn(x, rows): the op on the batch input x, whose rows are ``rows`` (a slice) of the full batch;
    returns a tuple of tensors with one leading entry per row."""
    w = _randn((n, d), dtype, 1, scale=d ** -0.5)
    bias = _randn((n,), dtype, 2)
    norm_w, norm_b = _randn((d,), dtype, 3), _randn((d,), dtype, 4)
    head = _randn((vocab, d), dtype, 5, scale=3 * d ** -0.5)
    tokens = torch.randint(0, vocab, (512,), generator=torch.Generator().manual_seed(6)).to(DEV)
    seeds = torch.randint(-(2**62), 2**62, (512,), generator=torch.Generator().manual_seed(7)).to(DEV)
    return {
        "linear": lambda x, rows: (pk.linear(x, w, bias),),
        "matmul": lambda x, rows: (pk.matmul(x, w.mT),),
        "softmax": lambda x, rows: (pk.softmax(x, scale=0.5),),
        "log_softmax": lambda x, rows: (pk.log_softmax(x),),
        "token_logprobs": lambda x, rows: pk.token_logprobs(x, tokens[rows], 0.7, return_entropy=True),
        "rms_norm": lambda x, rows: (pk.rms_norm(x, norm_w),),
        "layer_norm": lambda x, rows: (pk.layer_norm(x, norm_w, norm_b),),
        "linear_logprobs": lambda x, rows: pk.linear_logprobs(x, head, tokens[rows], 0.7, return_entropy=True),
        "linear_sample": lambda x, rows: pk.linear_sample(x, head, 0.7, seeds=seeds[rows]),
    }


# Ops whose gradient with respect to x is row-local (linear_sample has no backward).
ROW_LOCAL_BACKWARD = {"linear", "matmul", "softmax", "log_softmax", "token_logprobs", "rms_norm", "layer_norm",
                      "linear_logprobs"}


def _bits(t):
    if not t.is_floating_point():
        return t
    return t.view(torch.int16) if t.element_size() == 2 else t.view(torch.int32)


def _outputs_and_grad(fn, x, rows, upstreams=None):
    """fn's outputs and d(sum_i out_i * upstream_i)/dx; upstreams drawn for the outputs' shapes when not given."""
    x = x.detach().requires_grad_(True)
    outs = fn(x, rows)
    if upstreams is None:
        upstreams = [_randn(o.shape, torch.float32, 100 + i) for i, o in enumerate(outs)]
    scored = [(o, u) for o, u in zip(outs, upstreams, strict=True) if o.requires_grad]
    grads = torch.autograd.grad(sum((o.float() * u).sum() for o, u in scored), x) if scored else ()
    return tuple(o.detach() for o in outs) + grads, upstreams


def _check_row_alone_equals_row_in_batch(op, dtype, batch, row, d=40, n=24, vocab=300):
    fn = _ops(dtype, d, n, vocab)[op]
    x = _randn((batch, vocab if op in ("softmax", "log_softmax", "token_logprobs") else d), dtype, 11, scale=2.0)
    together, upstreams = _outputs_and_grad(fn, x, slice(0, batch))
    alone, _ = _outputs_and_grad(fn, x[row:row + 1], slice(row, row + 1), [u[row:row + 1] for u in upstreams])
    assert len(together) == len(upstreams) + (op in ROW_LOCAL_BACKWARD)
    for i, (a, t) in enumerate(zip(alone, together, strict=True)):
        assert a.shape == t[row:row + 1].shape
        assert torch.equal(_bits(a), _bits(t[row:row + 1])), f"{op} output {i}: M=1 differs from row {row} of {batch}"


OPS = list(_ops(torch.float32, 8, 8, 8))  # names only


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_m1_equals_the_same_row_inside_a_batch(op, dtype):
    """Every op accepts a single row (M = 1), and gives it the bits it gets as row 3 of 5, forward and backward."""
    _check_row_alone_equals_row_in_batch(op, dtype, batch=5, row=3)


@pytest.mark.cuda_configs
@pytest.mark.parametrize("op", ["linear", "log_softmax", "linear_logprobs", "linear_sample"])
def test_m1_equals_the_same_row_inside_a_batch_cuda_tiles(op):
    with profiles.config_backend("cuda"):
        _check_row_alone_equals_row_in_batch(op, torch.float16, batch=5, row=3)


def test_bmm_accepts_one_item_of_one_row():
    """Batched matmul with BATCH = 1 and M = 1 (a decode step's attention) equals that item's row in a batch."""
    a, b = _randn((3, 5, 24), torch.bfloat16, 21), _randn((3, 24, 17), torch.bfloat16, 22)
    together = pk.matmul(a, b)
    alone = pk.matmul(a[1:2, 2:3], b[1:2])
    assert torch.equal(_bits(alone), _bits(together[1:2, 2:3]))


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="GPU-only: Triton specialises M == 1 and M % 16 == 0 only when it compiles "
                                       "(the interpreter does not specialise); not run on a CPU-only machine")
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch", [16, 17, 64, 256])
def test_batch1_decode_equals_batched_pass_gpu(op, dtype, batch):
    """A decode step of one sequence (M = 1, specialised as a constexpr if we let Triton) gives each op the bits
    of the same row inside a batched pass (M a multiple of 16 or not), at GPU-sized shapes."""
    _check_row_alone_equals_row_in_batch(op, dtype, batch=batch, row=batch - 1, d=1024, n=4096, vocab=32000)

"""torch.compile(fullgraph=True) over pk ops: one graph, no breaks, and bitwise the eager result (forward and backward).

Each pk op is one opaque ``torch.ops.pk`` node in the graph (ops/_custom.py), so compiling
changes only the torch glue between them. Two backends:

* ``aot_eager`` (make test): dynamo + AOT autograd, the glue run by eager torch;
* Inductor (``slow``, PK_SLOW=1): the glue compiled to C++ with gcc. Inductor fuses fp16/bf16
  elementwise chains and computes them in fp32 without the intermediate roundings that eager
  torch does after each op (measured: 1,491 of 4,096 elements differed), so these tests set
  ``torch._inductor.config.emulate_precision_casts = True``, which rounds after every op as eager does.

TinyGPT (rl.model) compiles with fullgraph=True too: its causal mask branches on the query
length (a shape), not on tensor data.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from families import all_samples
from torch._dynamo.testing import CompileCounterWithBackend

import precision_kernels as pk

DEVICE = pk.backend.device()
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
SLOW = pytest.mark.skipif(not os.environ.get("PK_SLOW"),
                          reason="Inductor compiles C++ with gcc (tens of seconds): PK_SLOW=1 runs it")


def rand(*shape, dtype=F32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(DEVICE, dtype)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({4: torch.int32, 2: torch.int16, 8: torch.int64}[t.element_size()])


def assert_bitwise(got, want, what=""):
    assert got.shape == want.shape and got.dtype == want.dtype, (what, got.shape, want.shape, got.dtype, want.dtype)
    same = bits(got) == bits(want)
    assert bool(same.all()), f"{what}: {int((~same).sum())} of {same.numel()} elements differ"


def compile_once(fn, backend):
    """torch.compile(fullgraph=True) with a counter: the test asserts one frame and one graph (no breaks)."""
    counter = CompileCounterWithBackend(backend)
    return torch.compile(fn, backend=counter, fullgraph=True), counter


@pytest.fixture
def inductor_with_rounding():
    """Inductor that rounds after every fp16/bf16 op as eager torch does (see the module docstring)."""
    import torch._inductor.config as inductor_config

    with inductor_config.patch(emulate_precision_casts=True):
        yield "inductor"


# ---- a function of several pk ops --------------------------------------------------------------


def several_ops(x, w, bias, norm_w, tokens):
    """Every op of this file's family (linear, matmul, softmax, log_softmax, rms_norm, layer_norm,
    token_logprobs, round_to) with torch glue between them, fp16/bf16 elementwise included."""
    h = pk.linear(x, w, bias)                                        # (B, T, D)
    h = pk.rms_norm(h, norm_w, eps=1e-6) + h                         # residual: 16-bit add
    scores = pk.matmul(h, h.transpose(1, 2))                         # batched (B, T, T)
    p = pk.softmax(scores, dim=-1, scale=0.25)
    mixed = pk.matmul(p, h)
    ln = pk.layer_norm(torch.relu(mixed) * mixed, norm_w, bias)     # 16-bit elementwise chain
    logp = pk.log_softmax(ln, dim=1)                                 # a non-last dim: moved by a view
    lp, ent = pk.token_logprobs(ln, tokens, temperature=0.7, return_entropy=True)
    rounded = pk.round_to(lp * 3.0, ln.dtype)
    return ln, logp, lp, ent, rounded


def _several_inputs(dtype):
    B, T, D = 2, 5, 8
    params = {"w": rand(D, D, dtype=dtype, seed=1, scale=0.4), "bias": rand(D, dtype=dtype, seed=2),
              "norm_w": rand(D, dtype=dtype, seed=3)}
    params = {k: v.requires_grad_() for k, v in params.items()}
    x = rand(B, T, D, dtype=dtype, seed=4).requires_grad_()
    tokens = torch.randint(0, D, (B, T), generator=torch.Generator().manual_seed(5)).to(DEVICE)
    return x, params, tokens


def _run_several(fn, dtype):
    """Outputs and the gradients of a loss over all of them, for fn = several_ops or its compiled form."""
    x, params, tokens = _several_inputs(dtype)
    outs = fn(x, params["w"], params["bias"], params["norm_w"], tokens)
    loss = sum(o.float().sum() * (i + 1) for i, o in enumerate(outs) if o.dtype.is_floating_point)
    grads = torch.autograd.grad(loss, [x, *params.values()])
    return [o.detach() for o in outs], list(grads)


def _check_several(backend, dtype):
    eager_outs, eager_grads = _run_several(several_ops, dtype)
    compiled, counter = compile_once(several_ops, backend)
    outs, grads = _run_several(compiled, dtype)
    assert (counter.frame_count, counter.op_count > 0) == (1, True)
    for i, (got, want) in enumerate(zip(outs, eager_outs)):
        assert_bitwise(got, want, f"output {i}")
    for name, got, want in zip(("x", "w", "bias", "norm_w"), grads, eager_grads):
        assert_bitwise(got, want, f"grad {name}")


@pytest.mark.parametrize("dtype", [F16, BF16])
def test_several_ops_aot_eager_bitwise(dtype):
    _check_several("aot_eager", dtype)


@pytest.mark.slow
@SLOW
@pytest.mark.parametrize("dtype", [F16, BF16, F32])
def test_several_ops_inductor_bitwise(dtype, inductor_with_rounding):
    _check_several(inductor_with_rounding, dtype)


# ---- every registered op in one compiled graph ---------------------------------------------------


def _all_samples_outputs(compile_with=None):
    """Every family's sample (tests/families) called in one function, plain or compiled; its outputs and the
    gradients of a loss over them with respect to every differentiable input."""
    samples = list(all_samples(BF16, rows=3, n=8, k=8, seed=0).values())

    def every_op(*args):
        outs, i = [], 0
        for s in samples:
            out = s.fn(*args[i:i + len(s.args)])
            outs += list(out) if isinstance(out, tuple) else [out]
            i += len(s.args)
        return outs

    fn, counter = (every_op, None) if compile_with is None else compile_once(every_op, compile_with)
    args = [a for s in samples for a in s.args]
    outs = fn(*args)
    loss = sum(o.float().sum() * (i + 1) for i, o in enumerate(outs) if o.requires_grad)
    grads = torch.autograd.grad(loss, [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad])
    return [o.detach() for o in outs], list(grads), counter


def test_every_registered_op_compiles_into_one_graph_bitwise():
    eager_outs, eager_grads, _ = _all_samples_outputs()
    outs, grads, counter = _all_samples_outputs("aot_eager")
    assert counter.frame_count == 1
    for i, (got, want) in enumerate(zip(outs, eager_outs, strict=True)):
        assert_bitwise(got, want, f"output {i}")
    for i, (got, want) in enumerate(zip(grads, eager_grads, strict=True)):
        assert_bitwise(got, want, f"grad {i}")


def test_compiled_graph_follows_the_profile_at_run_time():
    """The profile is read inside the op at run time: one compiled graph serves matched and engine, like eager."""
    a, b = rand(4, 96, dtype=F16, seed=6), rand(96, 8, dtype=F16, seed=7)
    compiled, counter = compile_once(lambda a, b: pk.matmul(a, b) * 2, "aot_eager")
    with pk.use_profile("engine"):
        engine_eager, engine_compiled = pk.matmul(a, b) * 2, compiled(a, b)
    matched_eager, matched_compiled = pk.matmul(a, b) * 2, compiled(a, b)
    assert counter.frame_count == 1
    assert_bitwise(engine_compiled, engine_eager, "engine")
    assert_bitwise(matched_compiled, matched_eager, "matched")
    assert not torch.equal(engine_eager, matched_eager)      # the profiles do differ here


# ---- a TinyGPT-shaped module on pk ops -----------------------------------------------------------


class _Block(torch.nn.Module):
    """TinyGPT's layer code (rl/model.py) with the causal mask applied unconditionally: round_to'd
    weights, embedding gather, rms_norm, fused QKV linear, batched attention matmuls, masked_fill(-inf),
    scaled softmax, residual adds, ReLU^2 MLP, final rms_norm and LM-head log-probs."""

    def __init__(self, vocab=11, d=16, heads=2, seq=8, dtype=F16):
        super().__init__()
        self.heads, self.dtype = heads, dtype
        g = torch.Generator().manual_seed(0)

        def p(*shape, scale):
            return torch.nn.Parameter((torch.randn(*shape, generator=g) * scale).to(DEVICE))

        self.tok, self.pos = p(vocab, d, scale=1.0), p(seq, d, scale=1.0)
        self.qkv, self.proj = p(3 * d, d, scale=d ** -0.5), p(d, d, scale=d ** -0.5)
        self.fc, self.out = p(4 * d, d, scale=d ** -0.5), p(d, 4 * d, scale=(4 * d) ** -0.5)
        self.norm1, self.norm2, self.head = p(d, scale=1.0), p(d, scale=1.0), p(vocab, d, scale=d ** -0.5)

    def forward(self, tokens):
        w = {n: pk.round_to(t, self.dtype) for n, t in self.named_parameters()}
        B, T = tokens.shape
        H, D = self.heads, w["tok"].shape[1]
        hd = D // H
        x = w["tok"][tokens] + w["pos"][torch.arange(T, device=tokens.device)]
        h = pk.rms_norm(x, w["norm1"])
        q, k, v = pk.linear(h, w["qkv"]).view(B, T, 3, H, hd).permute(2, 0, 3, 1, 4).reshape(3, B * H, T, hd).unbind(0)
        scores = pk.matmul(q, k.transpose(1, 2))
        future = torch.arange(T, device=tokens.device)[None, :] > torch.arange(T, device=tokens.device)[:, None]
        probs = pk.softmax(scores.masked_fill(future, float("-inf")), scale=1.0 / math.sqrt(hd))
        att = pk.matmul(probs, v).view(B, H, T, hd).transpose(1, 2).reshape(B, T, D)
        x = x + pk.linear(att, w["proj"])
        m = torch.relu(pk.linear(pk.rms_norm(x, w["norm2"]), w["fc"]))
        x = x + pk.linear(m * m, w["out"])
        logits = pk.linear(pk.rms_norm(x, w["norm1"]), w["head"])
        return pk.token_logprobs(logits[:, :-1], tokens[:, 1:])


def _run_block(model, fn, tokens):
    model.zero_grad()
    lp = fn(tokens)
    lp.sum().backward()
    return lp.detach(), [p.grad.clone() for p in model.parameters()]


def _check_block(backend, dtype):
    model = _Block(dtype=dtype)
    tokens = torch.randint(0, 11, (3, 8), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    eager_lp, eager_grads = _run_block(model, model, tokens)
    compiled, counter = compile_once(model, backend)
    lp, grads = _run_block(model, compiled, tokens)
    assert counter.frame_count == 1
    assert_bitwise(lp, eager_lp, "log-probs")
    for (name, _), got, want in zip(model.named_parameters(), grads, eager_grads):
        assert_bitwise(got, want, f"grad {name}")


def test_pk_block_aot_eager_bitwise():
    _check_block("aot_eager", F16)


@pytest.mark.slow
@SLOW
@pytest.mark.parametrize("dtype", [F16, BF16])
def test_pk_block_inductor_bitwise(dtype, inductor_with_rounding):
    _check_block(inductor_with_rounding, dtype)


# ---- TinyGPT itself ------------------------------------------------------------------------------


def test_tinygpt_hidden_states_fullgraph_aot_eager_bitwise():
    from rl.model import ModelConfig, TinyGPT

    model = TinyGPT(ModelConfig(vocab_size=13, d_model=32, n_layers=1, n_heads=2, max_seq_len=8, precision="fp16"))
    tokens = torch.randint(0, 13, (2, 6), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    compiled, counter = compile_once(model.hidden_states, "aot_eager")
    got = compiled(tokens)
    assert counter.frame_count == 1
    assert_bitwise(got, model.hidden_states(tokens), "hidden states")


# ---- scalars and shapes that change between calls ------------------------------------------------


def scalar_ops(x, w, norm_w, tokens, scale, eps, temperature):
    h = pk.layer_norm(pk.rms_norm(pk.linear(x, w), norm_w, eps=eps), norm_w, None, eps=eps)
    return pk.token_logprobs(pk.softmax(h, scale=scale), tokens, temperature=temperature)


def test_changing_scalars_and_shapes_compile_without_breaks():
    """A scale, eps or temperature that changes between calls becomes a symbolic float in the recompiled
    graph (so do sizes); the wrappers check them with comparisons only, so fullgraph still holds."""
    compiled, counter = compile_once(scalar_ops, "aot_eager")
    w, norm_w = rand(8, 8, dtype=F16, seed=1), rand(8, dtype=F16, seed=2)
    calls = [(3, 0.5, 1e-6, 0.7), (3, 0.25, 1e-5, 0.9), (5, 0.3, 1e-3, 1.3), (2, 0.3, 1e-3, 3e-39)]
    for rows, scale, eps, temperature in calls:
        x, tokens = rand(rows, 8, dtype=F16, seed=rows), torch.arange(rows, device=DEVICE) % 8
        args = (x, w, norm_w, tokens, scale, eps, temperature)
        assert_bitwise(compiled(*args), scalar_ops(*args), f"rows={rows}")   # fullgraph: a break would raise
    assert counter.frame_count >= 2                                            # it did recompile

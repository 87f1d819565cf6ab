"""The registration machinery of the ahead-of-time compile check (``compile_check.py``).

Each entry names a kernel, its runtime signature and the constexpr configs it is compiled
with. ``signature`` maps each runtime argument to a Triton type string ("*fp32", "*i16",
"i32", ...); each config maps every constexpr argument to a value, and may add the launch
options ``num_warps`` / ``num_stages`` the kernel is launched with. The configs are the CUDA
table's (the ones that run compiled), in both profiles where the engine changes a constexpr.
16-bit formats travel as int16 bit patterns ("*i16" pointers).

The entries themselves live with their op family: each record in the op registry
(ops/registry.py) holds a ``compile_kernels(table)`` function that calls ``register`` once per
kernel and format; ``compile_check.kernel_specs`` runs them all.

``make test`` compiles the first config of one kernel per family (the name without its
dtype suffix); ``--all`` compiles every config of every kernel. No compiled variant may spill registers, but those
``SPILL_ALLOWANCES`` names, each with its bound and reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CallSpecialization:
    """How Triton's JIT specialises a typical launch: ``ones`` are integer arguments equal to 1 there (compiled
    as constexprs), ``divisible`` are pointers 16-byte aligned / integers divisible by 16 (``tt.divisibility``).
    The compile check compiles each config this way too, besides the generic signature, because the kernel a
    GPU runs is the specialised one (other registers, other spills)."""

    name: str
    ones: tuple = ()
    divisible: tuple = ()


@dataclass(frozen=True)
class KernelSpec:
    name: str
    fn: object
    signature: dict
    configs: list = field(default_factory=list)
    # Name of a family whose TTGIR tt.reduce layouts must match config by config (I5 audit).
    reduce_layout_group: str | None = None
    expects_mma: bool = False
    # Runtime specialisations compiled besides the generic signature.
    calls: tuple = ()
    # The op family (ops/registry.py) that registered the kernel.
    family: str | None = None


def matmul_calls(signature: dict) -> tuple[CallSpecialization, ...]:
    """How the JIT specialises a matmul-family launch on contiguous operands (K a multiple of 16): ``linear``, A (M, K)
    row-major times a weight (N, K) row-major read transposed (B = W^T: stride_bk = 1; torch._scaled_mm's column-major
    B too); ``matmul``, A and B (K, N) row-major. The output is (M, N) row-major. Pointers are 16-byte aligned and
    every other stride, K, N and the engine's K chunk (a multiple of 16, ops/matmul.ENGINE_K_ALIGN) divisible by 16.
    Arguments the kernel does not take are left out; M and the batch size are never specialised (batch args)."""
    def call(name: str, unit: tuple) -> CallSpecialization:
        divisible = [a for a, t in signature.items() if t.startswith("*")]
        divisible += ["N", "K", "k_chunk", "stride_ab", "stride_bb", "stride_cb", "stride_am", "stride_cm",
                      *(s for s in ("stride_bk", "stride_bn") if s not in unit)]
        return CallSpecialization(name, ones=tuple(a for a in unit + ("stride_cn",) if a in signature),
                                  divisible=tuple(a for a in divisible if a in signature))

    return call("linear", ("stride_ak", "stride_bk")), call("matmul", ("stride_ak", "stride_bn"))


# Attention on contiguous (B, H, T, D) tensors: the head-dim strides are 1 and q, k, v 16-byte aligned. Nothing else
# is specialised on a GPU either: the batch, head and sequence strides are batch args, and only the tl.dot operands
# keep alignment facts (kernels/attention.py, DOT_OPERANDS).
ATTENTION_CONTIGUOUS = CallSpecialization("contiguous", ones=("stride_qd", "stride_kd", "stride_vd", "stride_dod"),
                                          divisible=("q_ptr", "k_ptr", "v_ptr"))


def attention_calls(signature: dict) -> tuple[CallSpecialization, ...]:
    """``ATTENTION_CONTIGUOUS`` restricted to the arguments of one attention kernel."""
    c = ATTENTION_CONTIGUOUS
    return (CallSpecialization(c.name, ones=tuple(a for a in c.ones if a in signature),
                               divisible=tuple(a for a in c.divisible if a in signature)),)


@dataclass(frozen=True)
class SpillAllowance:
    """A stated exception to the compile check's rule that no variant spills registers: variants of the kernels whose
    registered name matches ``kernels`` (a regex), compiled as one of ``calls`` ("generic" or a call specialisation's
    name), whose config holds every item of ``where``, may spill up to ``max_bytes`` on either target."""

    kernels: str
    calls: tuple
    where: dict
    max_bytes: int
    reason: str


_GENERIC_MATMUL = ("no unit stride known: every operand element is loaded through its own 64-bit pointer (no vector "
                   "loads, no cp.async pipelining). These tiles spill 0 bytes in the contiguous linear and matmul "
                   "calls; 64 x 64 fp16 tiles spill 0 here too, at half the reuse of each loaded element")
_ATTENTION_FMA = ("every product with P, dS or dO is an IEEE fp32 tl.dot (FMA, operand tiles in registers, so P is "
                  "never rounded to 16 bits); the smallest spill of a search over keys per program (16-64), warps "
                  "(2-16) and stages (1-4), which are not reduction orders; the orders (key and query blocks) kept")
# The measured maximum (either target) of each exception; every other variant of every registered kernel must spill 0
# bytes (compile_check fails it otherwise).
SPILL_ALLOWANCES: tuple[SpillAllowance, ...] = (
    SpillAllowance(r"matmul_(fp16|bf16)", ("generic",), {}, 752, _GENERIC_MATMUL),
    SpillAllowance(r"matmul_fp32", ("generic",), {}, 176, _GENERIC_MATMUL),
    SpillAllowance(r"scaled_mm_bf16", ("generic",), {}, 480, _GENERIC_MATMUL),
    SpillAllowance(r"attention_bwd_dkdv_(fp16|bf16)", ("generic", "contiguous"), {"BLOCK_D": 64}, 32, _ATTENTION_FMA),
    SpillAllowance(r"attention_bwd_dkdv_(fp32|fp16|bf16)", ("generic", "contiguous"), {"BLOCK_D": 128}, 56,
                   _ATTENTION_FMA),
    SpillAllowance(r"attention_bwd_dq_(fp16|bf16)", ("generic", "contiguous"), {"BLOCK_D": 128}, 464,
                   _ATTENTION_FMA + "; the dq kernel at head dim 128 spilled 40-2824 bytes before"),
)


def spill_allowance(kernel: str, config: dict, call: str) -> int:
    """The bytes a variant may spill: the largest matching ``SPILL_ALLOWANCES`` entry, else 0."""
    return max((a.max_bytes for a in SPILL_ALLOWANCES if re.fullmatch(a.kernels, kernel) and call in a.calls
                and all(config.get(k) == v for k, v in a.where.items())), default=0)


# (dtype name, storage kind, pointer type of its tensors inside a kernel)
FORMATS = (("fp32", 0, "*fp32"), ("fp16", 1, "*i16"), ("bf16", 2, "*i16"))
# Row kernels are registered per pointer type: (name suffix, pointer type, storage kinds).
# The 16-bit group comes first, so make test compiles bf16.
ROW_FORMAT_GROUPS = (("", "*i16", (2, 1)), ("_fp32", "*fp32", (0,)))


def row_blocks() -> dict:
    """The CUDA row config's tile constexprs, shared by every row-reduction kernel."""
    from .profiles import row_config_for

    cfg = row_config_for("cuda")
    return {"BLOCK_ROWS": cfg.block_rows, "BLOCK_COLS": cfg.block_cols}


def register(table: dict, name: str, fn, signature: dict, configs: list, *, reduce_layout_group: str | None = None,
             expects_mma: bool = False, calls: tuple = ()) -> None:
    from .kernels.specialization import unspecialized_args

    if name in table:
        raise ValueError(f"kernel {name!r} is registered twice")
    batch = unspecialized_args(fn)
    for call in calls:
        unknown = [a for a in (*call.ones, *call.divisible) if a not in signature]
        if unknown:
            raise ValueError(f"kernel {name!r}: call specialisation {call.name!r} names unknown arguments {unknown}")
        # A batch-varying argument is never specialised at run time, so compiling it specialised checks nothing.
        varying = [a for a in (*call.ones, *call.divisible) if a in batch]
        if varying:
            raise ValueError(f"kernel {name!r}: call specialisation {call.name!r} specialises batch-varying {varying}")
    table[name] = KernelSpec(name, fn, dict(signature), [dict(c) for c in configs], reduce_layout_group,
                             expects_mma, tuple(calls))

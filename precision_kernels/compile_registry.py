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
dtype suffix); ``--all`` compiles every config of every kernel.
"""

from __future__ import annotations

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

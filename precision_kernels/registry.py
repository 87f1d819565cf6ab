"""Kernels register here (name, signature, constexpr configs) for the compile check.

Adding a kernel to the ahead-of-time check is one ``register(...)`` line under its
definition. ``signature`` maps each runtime argument to a Triton type string
("*fp32", "*i16", "i32", ...); each config maps every constexpr argument to a value, and may
add the launch options ``num_warps`` / ``num_stages`` the kernel is launched with.
``make test`` compiles the first config of one kernel per family (the name without its
dtype suffix); ``--all`` compiles every config of every kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class KernelSpec:
    name: str
    fn: object
    signature: dict
    configs: list = field(default_factory=list)
    # Name of a family whose TTGIR tt.reduce layouts must match config by config (I5 audit).
    reduce_layout_group: str | None = None
    expects_mma: bool = False


KERNELS: dict[str, KernelSpec] = {}


def register(name: str, fn, signature: dict, configs: list, *, reduce_layout_group: str | None = None,
             expects_mma: bool = False) -> None:
    KERNELS[name] = KernelSpec(name, fn, dict(signature), [dict(c) for c in configs],
                               reduce_layout_group, expects_mma)

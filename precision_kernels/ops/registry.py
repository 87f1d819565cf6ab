"""The op registry: each op family declares once what the library needs of it at run time.

An ``ops/<family>.py`` module ends with one ``register_family(OpFamily(...))`` call: its public
names, custom ops, the aten overloads matched mode serves with it, its kernels, their compile-table
entries and its FP64 oracles. The compile check (``compile_check.kernel_specs``), matched mode's
served table, ``pk.reference`` and the generic tests read the families from here instead of keeping
lists of their own. The tests' data for each family (samples, opcheck cases, bad inputs) is in
tests/families/<family>.py. docs/DESIGN.md, "How to add an op", is the recipe.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class OpFamily:
    """One kernel family's declaration. Only ``name`` is required.

    ``aten`` names the aten overloads matched mode serves with this family, as ``"aten.<op>.<overload>"``
    strings; ``precision_kernels/matched/`` holds one handler per name."""

    name: str
    # Public functions exported as ``pk.<name>``.
    public: tuple[str, ...] = ()
    # torch.library custom ops, backward ops included: "pk::layer_norm", "pk::layer_norm_backward".
    custom_ops: tuple[str, ...] = ()
    # Matched-mode aten overloads served with this family.
    aten: tuple[str, ...] = ()
    # The family's @triton.jit kernels; ``batch_args()`` reads what each leaves unspecialised.
    kernels: tuple = ()
    # (interpreter form, compiled form) of each kernel written as two jit kernels, both also in ``kernels``; the op
    # launches ``ops._common.kernel_form(interpreter, compiled)``. The compiled form (tl.dot) is the one in the
    # compile table; the interpreter form (the CPU specification) is the one with a CPU twin.
    forms: tuple = ()
    # compile_kernels(table): one compile_registry.register(table, ...) per kernel and pointer type.
    compile_kernels: Callable[[dict], None] | None = None
    # Public name -> FP64 oracle (``precision_kernels.reference.<name>``).
    reference: Mapping[str, Callable] = field(default_factory=dict)

    def batch_args(self) -> dict[str, frozenset[str]]:
        """Kernel name -> the arguments it tells Triton not to specialise (its batch-varying ones)."""
        from ..kernels.specialization import unspecialized_args

        return {k.__name__: unspecialized_args(k) for k in self.kernels}

    def interpreter_forms(self) -> frozenset[str]:
        """Names of the kernels that run only as the interpreter form of a two-form kernel (``forms``)."""
        return frozenset(interpreted.__name__ for interpreted, _ in self.forms)

    def compiled_forms(self) -> frozenset[str]:
        """Names of the compiled (tl.dot) forms of the two-form kernels (``forms``): no CPU twin, by design."""
        return frozenset(compiled.__name__ for _, compiled in self.forms)


_FAMILIES: dict[str, OpFamily] = {}


def register_family(family: OpFamily) -> OpFamily:
    if family.name in _FAMILIES:
        raise ValueError(f"op family {family.name!r} is registered twice")
    for name in family.custom_ops:
        if not name.startswith("pk::"):
            raise ValueError(f"op family {family.name!r}: custom op {name!r} is not in namespace pk")
    for name in family.aten:
        if not name.startswith("aten.") or name.count(".") != 2:
            raise ValueError(f"op family {family.name!r}: {name!r} is not an 'aten.<op>.<overload>' name")
    stray = [k.__name__ for pair in family.forms for k in pair if k not in family.kernels]
    if stray:
        raise ValueError(f"op family {family.name!r}: forms {stray} are not in its kernels")
    unknown = set(family.reference) - set(family.public)
    if unknown:
        raise ValueError(f"op family {family.name!r}: references for {sorted(unknown)}, which it does not export")
    _FAMILIES[family.name] = family
    return family


def all_families() -> dict[str, OpFamily]:
    """Every family by name, in the order of ``ops.FAMILY_MODULES``.

    Importing the ``ops`` package registers them all: its ``__init__`` imports every family module (for
    its public functions), and each module registers the family of its own name when it runs."""
    from .. import ops

    unlisted = sorted(set(_FAMILIES) - set(ops.FAMILY_MODULES))
    if unlisted:
        raise ValueError(f"op families {unlisted} are registered but not listed in ops.FAMILY_MODULES")
    missing = [m for m in ops.FAMILY_MODULES if m not in _FAMILIES]
    if missing:
        raise ValueError(f"ops.FAMILY_MODULES lists {missing}, but no family of that name is registered: "
                         f"ops/__init__.py imports each family module, and the module registers its family")
    return {name: _FAMILIES[name] for name in ops.FAMILY_MODULES}


def references() -> dict[str, Callable]:
    """Public op name -> its FP64 oracle, over every family."""
    return {name: fn for family in all_families().values() for name, fn in family.reference.items()}

"""The op registry (ops/registry.py) is complete and consistent: whatever a family declares exists, and every
op module, public op, custom op, kernel and matched-mode overload belongs to exactly one family."""

import pkgutil

import families
import pytest
import torch
from families import Raises
from torch._library.custom_ops import OPDEFS

import precision_kernels as pk
from precision_kernels import ops, reference
from precision_kernels.compile_check import kernel_specs
from precision_kernels.ops.registry import OpFamily, all_families, references, register_family

FAMILIES = all_families()


def test_every_op_module_registers_the_family_of_its_name():
    modules = {m.name for m in pkgutil.iter_modules(ops.__path__) if not m.name.startswith("_")} - {"registry"}
    assert modules == set(ops.FAMILY_MODULES), "list every family module in ops.FAMILY_MODULES"
    assert list(FAMILIES) == list(ops.FAMILY_MODULES)


def test_every_public_op_is_exported_as_pk_name():
    for family in FAMILIES.values():
        for name in family.public:
            assert name in pk.__all__, f"{name} is not in pk.__all__"
            assert getattr(pk, name) is getattr(ops, name), name
            assert getattr(pk, name).__module__ == f"{ops.__name__}.{family.name}", f"{name} is not {family.name}'s"
    public = [name for family in FAMILIES.values() for name in family.public]
    assert len(public) == len(set(public)), "a public op is declared by two families"


def test_every_custom_op_is_declared_by_exactly_one_family():
    declared = [name for family in FAMILIES.values() for name in family.custom_ops]
    assert len(declared) == len(set(declared))
    registered = {name for name in OPDEFS if name.startswith("pk::")}
    assert set(declared) == registered, (f"undeclared: {sorted(registered - set(declared))}, "
                                         f"not registered with torch: {sorted(set(declared) - registered)}")


def test_every_registered_kernel_is_in_the_compile_table():
    """Every family kernel is compiled, but the interpreter form of a two-form kernel (its compiled form is)."""
    specs = kernel_specs().values()
    for family in FAMILIES.values():
        compiled = {spec.fn.__name__ for spec in specs if spec.family == family.name}
        assert {k.__name__ for k in family.kernels} - family.interpreter_forms() == compiled, family.name
        assert family.compiled_forms() <= compiled, family.name
    assert {spec.fn.__name__ for spec in specs} == {k.__name__ for f in FAMILIES.values() for k in f.kernels
                                                    if k.__name__ not in f.interpreter_forms()}


def test_every_kernel_leaves_batch_varying_arguments_unspecialised():
    # Which arguments those are is checked kernel by kernel in test_specialization.py's own table.
    for family in FAMILIES.values():
        for kernel, args in family.batch_args().items():
            assert args, f"{family.name}: {kernel} names no batch-varying argument"


def test_aten_overloads_exist_and_belong_to_one_family():
    names = [name for family in FAMILIES.values() for name in family.aten]
    assert len(names) == len(set(names))
    for name in names:
        _, op, overload = name.split(".")
        assert isinstance(getattr(getattr(torch.ops.aten, op), overload), torch._ops.OpOverload), name


def test_references_are_pk_reference_attributes():
    oracles = references()
    assert {"matmul", "softmax", "layer_norm", "token_logprobs", "linear_logprobs"} <= set(oracles)
    for name, fn in oracles.items():
        assert getattr(reference, name) is fn
    assert set(oracles) <= set(dir(reference))
    with pytest.raises(AttributeError, match="no registered op has that FP64 oracle"):
        reference.no_such_op  # noqa: B018


def test_every_family_with_public_ops_gives_test_data():
    files = {m.name for m in pkgutil.iter_modules(families.__path__) if not m.name.startswith("_")}
    assert files == set(families.MODULES), "list every module of tests/families in families.MODULES"
    assert set(families.MODULES) <= set(FAMILIES), "a test data module names no registered family"
    for family in FAMILIES.values():
        if family.public:
            data = families.MODULES.get(family.name)
            missing = [f for f in ("samples", "opcheck", "bad_inputs") if not hasattr(data, f)]
            assert not missing, f"{family.name} gives no {missing} (tests/families/{family.name}.py)"
    rows = {row.id for row in families.bad_input_rows() if isinstance(row, Raises)}
    for name in (n for family in FAMILIES.values() for n in family.public):
        assert any(row.startswith(f"{name}/") for row in rows), f"no bad-input row '{name}/...'"


@pytest.mark.parametrize("family, message", [
    (OpFamily(name="matmul"), "registered twice"),
    (OpFamily(name="x", custom_ops=("aten::mm",)), "not in namespace pk"),
    (OpFamily(name="x", aten=("aten.mm",)), "not an 'aten.<op>.<overload>' name"),
    (OpFamily(name="x", public=("f",), reference={"g": abs}), "references for \\['g'\\]"),
])
def test_register_family_refuses_bad_declarations(family, message):
    with pytest.raises(ValueError, match=message):
        register_family(family)
    assert "x" not in all_families()

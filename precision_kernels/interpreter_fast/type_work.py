"""Fast paths that do the frontend's type work once per distinct type, not once per tile operation.

The interpreter runs Triton's frontend for every operation of every program: it builds
a ``block_type`` (validating its shape), a ``tensor`` (wrapping each dimension in a
``constexpr``), works out the operands' common type and broadcast, and maps the type to
a numpy dtype. All of that depends only on the operand types and shapes, and a kernel
has few of them; in an RL step it was ~70% of the time. Each installer below removes
one share of it, takes a :class:`Patches` and records every attribute it replaces
there; each works with any subset of the others installed. A cache miss, and any
operand a fast path does not know, takes Triton's own path, so errors are raised
exactly as before.

Triton is imported inside the functions: this module is imported before the backend
sets ``TRITON_INTERPRET``.
"""

from __future__ import annotations

import functools

from .patches import Patches

# Interned block types, by (element type key, shape). Module-level, so an interned type lives
# as long as the process: caches key types by id(), which must never be reused.
_INTERNED_BLOCK_TYPES: dict[tuple, object] = {}


class _Interning:
    on = False  # whether block_type.__new__ interns (only while interned_block_types is installed)


@functools.cache
def _type_keys():
    """(element_key, type_key): hashable keys equal for equal types, or None where caching is not safe."""
    from triton.language import core

    block_type, dtype, pointer_type = core.block_type, core.dtype, core.pointer_type

    def element_key(ty):
        cls = type(ty)
        if cls is dtype:
            return ty.name
        if cls is pointer_type:
            return ("ptr", ty.name, ty.address_space)  # the name says const-ness and pointee
        return None

    def type_key(ty):
        cls = type(ty)
        if cls is dtype:
            return ty.name
        if cls is block_type:
            return id(ty) if "_pk_interned" in ty.__dict__ else None  # interned types live forever
        if cls is pointer_type:
            return ("ptr", ty.name, ty.address_space)
        return None

    return element_key, type_key


def intern_block_types(patches: Patches) -> None:
    """Equal (element type, shape) pairs give one ``block_type`` object, validated once.

    Types are never mutated after construction. ``with_element_ty`` (same shape, another
    element type) returns the interned type too, remembered on the type it was asked of.
    """
    from triton.language import core

    block_type, constexpr = core.block_type, core.constexpr
    element_key, _ = _type_keys()
    original_block_init = block_type.__init__
    interned = _INTERNED_BLOCK_TYPES
    shape_types = (list, tuple, core.tuple)  # core.tuple: Triton's own tuple, which block_type.shape is

    def block_new(cls, *args, **kwargs):
        if _Interning.on and cls is block_type and len(args) == 2 and not kwargs and type(args[1]) in shape_types:
            elem_key = element_key(args[0])
            shape = tuple(s.value if type(s) is constexpr else s for s in args[1])
            if elem_key is not None and all(type(s) is int for s in shape):
                key = (elem_key, shape)
                found = interned.get(key)
                if found is None:
                    found = object.__new__(cls)
                    original_block_init(found, *args)  # validates; raises as before
                    found._pk_interned = True
                    interned[key] = found
                return found
        return object.__new__(cls)

    def block_init(self, *args, **kwargs):
        if "_pk_interned" not in self.__dict__:
            original_block_init(self, *args, **kwargs)

    # CPython cannot take a __new__ back off a class (object.__new__ then rejects the arguments),
    # so this one stays once set, and while not installed it only makes a plain object.
    if "__new__" not in vars(block_type):
        block_type.__new__ = block_new
    original_with_element_ty = block_type.with_element_ty

    def with_element_ty(self, scalar_ty):
        key = element_key(scalar_ty)
        if key is None or "_pk_interned" not in self.__dict__:
            return original_with_element_ty(self, scalar_ty)
        siblings = self.__dict__.setdefault("_pk_siblings", {})
        found = siblings.get(key)
        if found is None:
            found = siblings[key] = original_with_element_ty(self, scalar_ty)
        return found

    patches.set(_Interning, "on", True)
    patches.set(block_type, "__init__", block_init)
    patches.set(block_type, "with_element_ty", with_element_ty)


def share_tensor_shapes(patches: Patches) -> None:
    """A ``tensor`` of an interned type (or of a scalar type) reuses that type's shape and numel constants."""
    from triton.language import core

    tensor = core.tensor
    original_tensor_init = tensor.__init__
    scalar_meta: list = []

    def tensor_meta(handle, type):
        # the shape and numel objects Triton's own __init__ makes for this type (made once, then shared)
        probe = object.__new__(tensor)
        original_tensor_init(probe, handle, type)
        return probe.shape, probe.numel

    def tensor_init(self, handle, type):
        if not type.is_block():
            if not scalar_meta:
                scalar_meta.append(tensor_meta(handle, type))
            meta = scalar_meta[0]
        else:
            meta = type.__dict__.get("_pk_tensor_meta")
            if meta is None:
                if "_pk_interned" not in type.__dict__:
                    original_tensor_init(self, handle, type)
                    return
                meta = type._pk_tensor_meta = tensor_meta(handle, type)
        self.handle = handle
        self.type = type
        self.dtype = type.scalar
        self.shape, self.numel = meta

    patches.set(tensor, "__init__", tensor_init)


def remember_broadcasts(patches: Patches) -> None:
    """``broadcast_impl_value`` remembers, per operand type pair, the broadcast each operand needs.

    A hit replays it with the same builder calls (the same numpy operations on the same data).
    """
    from triton.language import core
    from triton.runtime import interpreter

    semantic, builder, tensor = interpreter.interpreter_semantic, interpreter.interpreter_builder, core.tensor
    _, type_key = _type_keys()
    original_broadcast = semantic.broadcast_impl_value
    broadcast_plans: dict[tuple, tuple] = {}

    def plan_for(before, after):
        if after is before:
            return None
        if not before.type.is_block():
            return ("splat", after.type)
        after_shape, before_shape = list(after.type.shape), list(before.type.shape)
        expand = len(after_shape) - len(before_shape)
        reshape = after_shape if after_shape != [1] * expand + before_shape else None
        return ("broadcast", after.type, expand, reshape)

    def replay(value, plan):
        if plan is None:
            return value
        if plan[0] == "splat":
            return tensor(builder.create_splat(plan[1], value.handle), plan[1])
        _, out_type, expand, shape = plan
        handle = value.handle
        for _ in range(expand):
            handle = builder.create_expand_dims(handle, 0)
        if shape is not None:
            handle = builder.create_broadcast(handle, shape)
        return tensor(handle, out_type)

    def broadcast_impl_value(lhs, rhs):
        key = (type_key(lhs.type), type_key(rhs.type))
        plans = broadcast_plans.get(key)
        if plans is not None:
            return replay(lhs, plans[0]), replay(rhs, plans[1])
        out_lhs, out_rhs = original_broadcast(lhs, rhs)
        if key[0] is not None and key[1] is not None:
            broadcast_plans[key] = (plan_for(lhs, out_lhs), plan_for(rhs, out_rhs))
        return out_lhs, out_rhs

    patches.set(semantic, "broadcast_impl_value", broadcast_impl_value)


def remember_common_types(patches: Patches) -> None:
    """``binary_op_type_checking_impl`` remembers the common type per (lhs type, rhs type, flags).

    Operands that are neither a tensor nor a number take the original path. The broadcast at
    the end goes through ``semantic.broadcast_impl_value``, as Triton's own does, so it is
    remembered too where ``remember_broadcasts`` is installed.
    """
    import numbers

    from triton.language import core
    from triton.runtime import interpreter

    semantic, tensor = interpreter.interpreter_semantic, core.tensor
    _, type_key = _type_keys()
    original_type_checking = semantic.binary_op_type_checking_impl
    common_types: dict[tuple, object] = {}
    no_arithmetic = object()

    def operand_key(x):
        if type(x) is tensor:
            return type_key(x.type)
        if isinstance(x, numbers.Number):
            return ("scalar", semantic.to_tensor_type(x).name)
        return None

    def binary_op_type_checking_impl(lhs, rhs, allow_lhs_ptr=False, allow_rhs_ptr=False, arithmetic_check=True,
                                     div_or_mod=False):
        lhs_key, rhs_key = operand_key(lhs), operand_key(rhs)
        if lhs_key is None or rhs_key is None:
            return original_type_checking(lhs, rhs, allow_lhs_ptr, allow_rhs_ptr, arithmetic_check, div_or_mod)
        key = (lhs_key, rhs_key, allow_lhs_ptr, allow_rhs_ptr, arithmetic_check, div_or_mod)
        common = common_types.get(key)
        if common is None:
            # Triton's own checks, in its order (they raise for bad operand types)
            lhs_is_scalar, rhs_is_scalar = type(lhs) is not tensor, type(rhs) is not tensor
            lhs_sca_ty = semantic.to_tensor_type(lhs) if lhs_is_scalar else lhs.dtype
            rhs_sca_ty = semantic.to_tensor_type(rhs) if rhs_is_scalar else rhs.dtype
            semantic.check_ptr_type_impl(lhs_sca_ty, rhs_sca_ty, allow_lhs_ptr)
            semantic.check_ptr_type_impl(rhs_sca_ty, lhs_sca_ty, allow_rhs_ptr)
            if arithmetic_check and not lhs_sca_ty.is_ptr() and not rhs_sca_ty.is_ptr():
                common = semantic.computation_type_impl(lhs_sca_ty, lhs_is_scalar, rhs_sca_ty, rhs_is_scalar,
                                                        div_or_mod)
            else:
                common = no_arithmetic
            common_types[key] = common
        if common is no_arithmetic:
            lhs, rhs = semantic.to_tensor(lhs), semantic.to_tensor(rhs)
        else:
            # (a tensor already of the common type is what the cast would return)
            if type(lhs) is not tensor or lhs.dtype is not common:
                lhs = semantic._cast_to_computation_type(lhs, common)
            if type(rhs) is not tensor or rhs.dtype is not common:
                rhs = semantic._cast_to_computation_type(rhs, common)
        return semantic.broadcast_impl_value(lhs, rhs)

    patches.set(semantic, "binary_op_type_checking_impl", binary_op_type_checking_impl)


def remember_numpy_dtypes(patches: Patches) -> None:
    """``_get_np_dtype`` answers pointers and scalar dtypes from a table, the rest through the original."""
    import numpy as np
    from triton.language import core
    from triton.runtime import interpreter

    block_type, dtype, pointer_type = core.block_type, core.dtype, core.pointer_type
    original_np_dtype = interpreter._get_np_dtype
    np_dtypes: dict[str, np.dtype] = {}
    pointer_np = np.dtype(np.uint64)

    def get_np_dtype(tt_dtype):
        cls = type(tt_dtype)
        if cls is block_type:
            tt_dtype = tt_dtype.element_ty
            cls = type(tt_dtype)
        if cls is pointer_type:
            return pointer_np
        if cls is dtype:
            found = np_dtypes.get(tt_dtype.name)
            if found is None:
                found = np_dtypes[tt_dtype.name] = original_np_dtype(tt_dtype)
            return found
        return original_np_dtype(tt_dtype)

    patches.set(interpreter, "_get_np_dtype", get_np_dtype)


def unwrap_constexpr_fast(patches: Patches) -> None:
    """``_unwrap_if_constexpr`` (called ~1M times an RL step) answers its common cases by exact type."""
    from triton.language import core

    original_unwrap = core._unwrap_if_constexpr
    constexpr = core.constexpr
    passthrough = (core.tensor, core.dtype, core.block_type, int, float, bool, str, type(None))

    def unwrap_if_constexpr(o):
        cls = type(o)
        if cls is constexpr:
            return o.value
        if cls in passthrough:
            return o
        return original_unwrap(o)

    patches.set(core, "_unwrap_if_constexpr", unwrap_if_constexpr)

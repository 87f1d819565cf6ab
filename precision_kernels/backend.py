"""Which backend runs the kernels, decided once at import, before any kernel is defined.

* ``"cuda"``: kernels are compiled by Triton for the local NVIDIA GPU.
* ``"interpreter"``: no CUDA device, so the Triton interpreter runs the kernels on
  CPU tensors (``TRITON_INTERPRET=1``). It costs ~1 ms a launch plus 4-10 ms a
  program, and its bf16 arithmetic is broken (DESIGN.md section 3); the kernels
  work around both.
* ``"compile-only"``: ``PK_COMPILE_ONLY=1`` defines compiled (not interpreted)
  kernels on a CPU-only machine so the ahead-of-time compile check can hand them
  to ``triton.compile``. Nothing can be launched in this mode.

A user's own ``TRITON_INTERPRET`` setting always wins.
"""

from __future__ import annotations

import os

import torch

COMPILE_ONLY_ENV = "PK_COMPILE_ONLY"

# FMA contraction changes rounding, and Triton's default flips in 3.10, so every
# launch passes this explicitly. Off: each multiply and add rounds on its own, as
# the interpreter (numpy) does.
FP_FUSION = False


def _decide() -> str:
    if os.environ.get(COMPILE_ONLY_ENV, "") not in ("", "0"):
        os.environ.pop("TRITON_INTERPRET", None)
        return "compile-only"
    user_setting = os.environ.get("TRITON_INTERPRET")
    if user_setting is not None:
        return "interpreter" if user_setting not in ("", "0") else "cuda"
    if torch.cuda.is_available():
        return "cuda"
    os.environ["TRITON_INTERPRET"] = "1"
    return "interpreter"


BACKEND: str = _decide()
# Triton's process-wide default, kept equal to ours so it does not warn; launches pass it explicitly anyway.
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1" if FP_FUSION else "0")
INTERPRETED: bool = BACKEND == "interpreter"


# ---- interpreter fast paths ---------------------------------------------------------------
# Everything below reads and replaces internals of Triton 3.9's interpreter and frontend, so
# it is pinned to that version; any other version runs the plain interpreter (with a warning).
# Each patch skips work whose result is already known and runs the same numpy operations on
# the same data, so every bit a kernel computes is unchanged; tests/test_interpreter_fast.py
# compares every kernel family with and without them, and PK_INTERPRETER_FAST=0 turns them off.
FAST_ENV = "PK_INTERPRETER_FAST"
PATCHED_TRITON = "3.9."


class _Patches:
    """Attributes replaced by the fast paths, with their originals, so they can be put back."""

    def __init__(self) -> None:
        self._saved: list[tuple[object, str, bool, object]] = []

    def set(self, obj: object, name: str, value: object) -> None:
        had = name in vars(obj)
        self._saved.append((obj, name, had, vars(obj).get(name)))
        setattr(obj, name, value)

    def restore(self) -> None:
        while self._saved:
            obj, name, had, original = self._saved.pop()
            if had:
                setattr(obj, name, original)
            else:
                delattr(obj, name)


_patches = _Patches()
# Interned block types, by (element type key, shape). Module-level, so an interned type lives
# as long as the process: caches key types by id(), which must never be reused.
_INTERNED_BLOCK_TYPES: dict[tuple, object] = {}


class _Interning:
    on = False  # whether block_type.__new__ interns (only while the fast paths are installed)


def _skip_nested_language_patching(patches: _Patches) -> None:
    """Make the Triton interpreter patch ``triton.language`` once per launch, not once per helper call, and cheaper.

    Triton 3.9's interpreter re-patches the whole language (``inspect.getmembers`` over
    ``tl``, ``tl.core``, ``tl.math``; ~0.4 ms) on every call of a nested ``@triton.jit``
    helper, although the launch that contains the call has already patched the same
    modules and keeps them patched until it ends. That redundant work was ~95% of an
    interpreted matmul's time. Inside a launch, a helper whose language modules are
    already patched now gets an empty patch scope. What runs, and every bit it
    computes, is unchanged.
    """
    import inspect

    import triton.language as tl
    from triton.runtime import interpreter

    original_patch = interpreter._patch_lang
    original_launch = interpreter.GridExecutor.__call__
    patched: list[set | None] = []  # language modules patched by each launch in progress
    languages = (tl, tl.core)

    modules_of_globals: dict[int, tuple] = {}  # id(globals dict) -> (dict, its size, language modules in it)

    def lang_modules(fn) -> set:
        # The modules among fn's globals that _patch_lang patches (tl and tl.core, compared by identity),
        # remembered per globals dict and recomputed when the dict's size changes (the interpreter adds
        # its own globals to a kernel module's on first use; modules never rebind tl).
        g = fn.__globals__
        entry = modules_of_globals.get(id(g))
        if entry is None or entry[0] is not g or entry[1] != len(g):
            entry = (g, len(g), {id(v) for v in g.values() if v is languages[0] or v is languages[1]})
            modules_of_globals[id(g)] = entry
        return entry[2]

    def patch_lang(fn):
        if patched and patched[-1] is not None and lang_modules(fn) <= patched[-1]:
            return interpreter._LangPatchScope()
        scope = original_patch(fn)
        if patched:
            # The launch's own patch lasts until the launch ends; a nested helper's (e.g. tl.sum,
            # whose module sees tl.core) is never restored by the interpreter, so it lasts too.
            patched[-1] = lang_modules(fn) | (patched[-1] or set())
        return scope

    def launch(self, *args, **kwargs):
        patched.append(None)
        try:
            return original_launch(self, *args, **kwargs)
        finally:
            patched.pop()

    # _patch_lang patches every builtin among a module's members, found with inspect.getmembers on each
    # call (~0.2 ms). Which members are builtins does not change: the first call lists them (nothing is
    # patched before a module's first patch; the interpreter only ever replaces builtins, never adds
    # them), and every call still checks that each one is a builtin right now, as the original does.
    builtin_names: dict[int, tuple] = {}

    def patch_builtin(pkg, builder, scope):
        entry = builtin_names.get(id(pkg))
        if entry is None or entry[0] is not pkg:
            names = [name for name, member in inspect.getmembers(pkg) if tl.core.is_builtin(member)]
            entry = builtin_names[id(pkg)] = (pkg, names)
        for name in entry[1]:
            member = getattr(pkg, name, None)
            if tl.core.is_builtin(member):
                interpreter._patch_attr(pkg, name, member, builder, scope)

    patches.set(interpreter, "_patch_lang", patch_lang)
    patches.set(interpreter.GridExecutor, "__call__", launch)
    patches.set(interpreter, "_patch_builtin", patch_builtin)


def _skip_integer_overflow_checks(patches: _Patches) -> None:
    """Turn off the interpreter's integer-overflow assertions.

    The interpreter checks every 32-bit integer add/sub/mul by redoing it in int64 and
    asserting the range (``sanitize_overflow``), which compiled kernels only do in debug
    mode. The checks compute nothing the kernel uses, but they were half the time of the
    integer rounding helpers. Our kernels use 64-bit offsets where sizes need them.
    """
    import dataclasses

    from triton.runtime import interpreter

    builder = interpreter.interpreter_builder
    patches.set(builder, "options", dataclasses.replace(builder.options, sanitize_overflow=False))


def _memoise_type_work(patches: _Patches) -> None:
    """Do the frontend's type work once per distinct type, not once per tile operation.

    The interpreter runs Triton's frontend for every operation of every program: it
    builds a ``block_type`` (validating its shape), a ``tensor`` (wrapping each dimension
    in a ``constexpr``), works out the operands' common type and broadcast, and maps the
    type to a numpy dtype. All of that depends only on the operand types and shapes, and
    a kernel has few of them; in an RL step it was ~70% of the time. So:

    * ``block_type`` is interned: equal (element type, shape) pairs give one object,
      validated once. Types are never mutated after construction.
    * a ``tensor`` of an interned type reuses that type's shape and numel constants;
    * ``broadcast_impl_value`` and ``binary_op_type_checking_impl`` remember, per
      (lhs type, rhs type, flags), the common type and the broadcast each operand needs,
      and replay it with the same builder calls (same numpy operations on the same data);
      a miss, and any operand that is neither a tensor nor a number, takes the original path,
      so errors are raised exactly as before;
    * ``_get_np_dtype`` and ``_unwrap_if_constexpr`` get fast paths for their common
      cases and fall back to the originals for the rest.
    """
    import numbers

    import numpy as np
    from triton.language import core
    from triton.runtime import interpreter

    semantic = interpreter.interpreter_semantic
    builder = interpreter.interpreter_builder
    block_type, dtype, pointer_type = core.block_type, core.dtype, core.pointer_type
    tensor, constexpr = core.tensor, core.constexpr

    # -- interned block types ---------------------------------------------------------------
    original_block_init = block_type.__init__
    interned = _INTERNED_BLOCK_TYPES
    shape_types = (list, tuple, core.tuple)  # core.tuple: Triton's own tuple, which block_type.shape is

    def element_key(ty):
        cls = type(ty)
        if cls is dtype:
            return ty.name
        if cls is pointer_type:
            return ("ptr", ty.name, ty.address_space)  # the name says const-ness and pointee
        return None

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
    # so this one stays once set, and outside the fast paths it only makes a plain object.
    if "__new__" not in vars(block_type):
        block_type.__new__ = block_new
    original_with_element_ty = block_type.with_element_ty

    def with_element_ty(self, scalar_ty):
        # same shape, another element type: the interned type, remembered on this one
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

    # -- tensors: shape and numel constants shared per interned type --------------------------
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

    # -- stable keys for types ----------------------------------------------------------------
    def type_key(ty):
        """A hashable key equal for equal types, or None where caching is not safe."""
        cls = type(ty)
        if cls is dtype:
            return ty.name
        if cls is block_type:
            return id(ty) if "_pk_interned" in ty.__dict__ else None  # interned types live forever
        if cls is pointer_type:
            return ("ptr", ty.name, ty.address_space)
        return None

    # -- broadcasting -------------------------------------------------------------------------
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

    # -- implicit casting of binary operands ---------------------------------------------------
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
        return broadcast_impl_value(lhs, rhs)

    patches.set(semantic, "binary_op_type_checking_impl", binary_op_type_checking_impl)

    # -- numpy dtype of a Triton type -----------------------------------------------------------
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

    # -- constexpr unwrapping (called ~1M times an RL step) -------------------------------------
    original_unwrap = core._unwrap_if_constexpr
    passthrough = (tensor, dtype, block_type, int, float, bool, str, type(None))

    def unwrap_if_constexpr(o):
        cls = type(o)
        if cls is constexpr:
            return o.value
        if cls in passthrough:
            return o
        return original_unwrap(o)

    patches.set(core, "_unwrap_if_constexpr", unwrap_if_constexpr)


def _install_interpreter_fast_paths(triton_version: str) -> bool:
    """Apply every interpreter fast path if ``triton_version`` is the one they were written for."""
    if not triton_version.startswith(PATCHED_TRITON):
        import warnings

        warnings.warn(f"precision_kernels: interpreter fast paths are written for Triton {PATCHED_TRITON}x, "
                      f"found {triton_version}; running the plain (slower) interpreter", stacklevel=2)
        return False
    _skip_nested_language_patching(_patches)
    _skip_integer_overflow_checks(_patches)
    _memoise_type_work(_patches)
    return True


def _remove_interpreter_fast_paths() -> None:
    _patches.restore()


def interpreter_fast_paths_active() -> bool:
    """Whether this process runs the interpreter with the fast paths above."""
    return bool(_patches._saved)


if INTERPRETED and os.environ.get(FAST_ENV, "1") != "0":
    import triton

    _install_interpreter_fast_paths(triton.__version__)


def active_backend() -> str:
    """Name of the backend chosen at import: "cuda", "interpreter" or "compile-only"."""
    return BACKEND


def device() -> torch.device:
    """The device whose tensors the kernels accept."""
    return torch.device("cuda") if BACKEND == "cuda" else torch.device("cpu")


def launch_options() -> dict:
    """Options passed to every kernel launch."""
    return {"enable_fp_fusion": FP_FUSION}

"""Fast paths around the interpreter's patching of ``triton.language`` and its overflow checks.

Each installer takes a :class:`Patches` and records every attribute it replaces there.
"""

from __future__ import annotations

from .patches import Patches


def patch_language_once_per_launch(patches: Patches) -> None:
    """Make the Triton interpreter patch ``triton.language`` once per launch, not once per helper call.

    Triton 3.9's interpreter re-patches the whole language (``inspect.getmembers`` over
    ``tl``, ``tl.core``, ``tl.math``; ~0.4 ms) on every call of a nested ``@triton.jit``
    helper, although the launch that contains the call has already patched the same
    modules and keeps them patched until it ends. That redundant work was ~95% of an
    interpreted matmul's time. Inside a launch, a helper whose language modules are
    already patched now gets an empty patch scope. What runs, and every bit it
    computes, is unchanged.
    """
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

    patches.set(interpreter, "_patch_lang", patch_lang)
    patches.set(interpreter.GridExecutor, "__call__", launch)


def list_builtins_once(patches: Patches) -> None:
    """Find each language module's builtins once, not with ``inspect.getmembers`` on every patch.

    ``_patch_lang`` patches every builtin among a module's members, found with
    ``inspect.getmembers`` on each call (~0.2 ms). Which members are builtins does not
    change: the first call lists them (nothing is patched before a module's first patch;
    the interpreter only ever replaces builtins, never adds them), and every call still
    checks that each one is a builtin right now, as the original does.
    """
    import inspect

    import triton.language as tl
    from triton.runtime import interpreter

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

    patches.set(interpreter, "_patch_builtin", patch_builtin)


def skip_integer_overflow_checks(patches: Patches) -> None:
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

"""What Triton may specialise a kernel on, decided per argument (``row_kernel``, ``tile_kernel``).

Triton specialises integer arguments equal to 1 (they become constexprs) and integers and
pointers on divisibility by 16 / 16-byte alignment. Two rules follow from the invariants:

* **Nothing that varies with the batch is specialised** (I2). A batch-1 decode passes
  M = 1, a batch of 16 passes a multiple of 16; either would compile a different kernel
  than the batched pass, with its own layouts and so possibly its own summation trees.
  Every kernel names its batch-varying arguments (row counts, batch sizes) in
  ``batch_args``; they are passed to ``do_not_specialize`` (no ==1, no %16), and the
  decorator refuses a name that is not a runtime argument of the kernel.
* **Row kernels carry no alignment facts** for the arguments that reach a reduction. On GPU
  alignment sets the vector width of the loads, hence the blocked layout the reductions
  run in, hence the fp32 summation tree: a row's bits would depend on whether its length
  (the row stride) is a multiple of 16 and on where its buffer starts. (Seen on an H100:
  padding a 3-token vocabulary with 13 -inf columns changed a log-prob.) The cost is scalar
  loads. Arguments that only feed ``tl.dot`` (``keep_alignment``, and every argument of a
  ``tile_kernel`` but its batch args) keep their facts: the MMA shape fixes the
  accumulation order whatever the load width, and K/N/stride facts give vectorised loads.

``unspecialized_args(kernel)`` reads the set back from the jit object (compiled or
interpreted), so a test can check that every batch-varying argument is in it.
"""

import inspect

import triton


def _runtime_args(f) -> list[str]:
    return [name for name, p in inspect.signature(f).parameters.items() if p.annotation is inspect.Parameter.empty]


def _checked_batch_args(f, batch_args: tuple[str, ...]) -> list[str]:
    if isinstance(batch_args, str) or not all(isinstance(a, str) for a in batch_args):
        raise TypeError(f"batch_args of {f.__name__} must be a tuple of argument names, got {batch_args!r}")
    runtime = _runtime_args(f)
    unknown = [a for a in batch_args if a not in runtime]
    if unknown:
        # triton.jit ignores unknown names: a typo would silently leave the argument specialised
        raise ValueError(f"batch_args of {f.__name__}: {unknown} are not runtime arguments (have {runtime})")
    return list(batch_args)


def row_kernel(fn=None, *, batch_args: tuple[str, ...] = ("n_rows",), keep_alignment: tuple[str, ...] = ()):
    """``@triton.jit`` for kernels that reduce: ``batch_args`` (default: the row count ``n_rows``) not
    specialised at all, and no alignment facts for any runtime argument but ``keep_alignment``.

    Use bare (``@row_kernel``) for the row-reduction kernels, whose every argument can reach a
    reduction; the fused LM-head kernels keep the hidden/weight pointers and strides
    (``@row_kernel(batch_args=("M",), keep_alignment=...)``): they only feed ``tl.dot``.
    """

    def wrap(f):
        batch = _checked_batch_args(f, batch_args)
        no_alignment = [name for name in _runtime_args(f) if name not in keep_alignment]
        return triton.jit(do_not_specialize=batch, do_not_specialize_on_alignment=no_alignment)(f)

    return wrap if fn is None else wrap(fn)


def tile_kernel(*, batch_args: tuple[str, ...]):
    """``@triton.jit`` for the matmul tiles: ``batch_args`` (M, batch sizes) not specialised; every other
    argument keeps Triton's specialisation (K, N and strides feed ``tl.dot`` only)."""

    def wrap(f):
        return triton.jit(do_not_specialize=_checked_batch_args(f, batch_args))(f)

    return wrap


def unspecialized_args(kernel) -> frozenset[str]:
    """Names of the arguments ``kernel`` (a JITFunction or, under the interpreter, an InterpretedFunction)
    is told not to specialise (``do_not_specialize``, by name or position)."""
    params = getattr(kernel, "params", None)
    if params is not None:  # compiled: the JITFunction's KernelParams
        return frozenset(p.name for p in params if p.do_not_specialize)
    names = kernel.arg_names
    listed = getattr(kernel, "kwargs", {}).get("do_not_specialize") or ()
    return frozenset(names[a] if isinstance(a, int) else a for a in listed)

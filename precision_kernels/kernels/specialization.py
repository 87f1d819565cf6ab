"""``row_kernel``: ``@triton.jit`` with alignment specialisation off for the arguments that reach a reduction.

Triton specialises pointers on 16-byte alignment and integers on divisibility by 16. On GPU
that sets the vector width of the loads, hence the blocked layout the reductions run in,
hence the fp32 summation tree: a row's bits would depend on whether its length (the row
stride) is a multiple of 16 and on where its buffer starts. (Seen on an H100: padding a
3-token vocabulary with 13 -inf columns changed a log-prob.) With no alignment facts every
launch gets the same layout, so I2 and I3 hold on GPU too; the cost is scalar loads.
"""

import inspect

import triton


def row_kernel(fn=None, *, keep_alignment: tuple[str, ...] = ()):
    """``@triton.jit`` with alignment specialisation off for every runtime argument but ``keep_alignment``.

    Use bare (``@row_kernel``) for the row-reduction kernels, whose every argument can reach a
    reduction; the fused LM-head kernels keep the hidden/weight pointers and strides
    (``@row_kernel(keep_alignment=...)``): they only feed ``tl.dot``, whose accumulation order
    is fixed by the MMA shape.
    """

    def wrap(f):
        runtime = [name for name, p in inspect.signature(f).parameters.items()
                   if p.annotation is inspect.Parameter.empty and name not in keep_alignment]
        return triton.jit(do_not_specialize_on_alignment=runtime)(f)

    return wrap if fn is None else wrap(fn)

"""Inputs and direct launches for the row-kernel twins' tests (tests/test_cpu_executor_{softmax,norm,
layer_norm,token_logprobs}.py).

* ``rand`` / ``specials`` / ``zero_ties``: inputs, the last with rows whose block maxima are -0 in one
  block and +0 in another (numpy's fmax keeps a zero that depends on the lane: ``_rows.running_max``).
* ``assert_direct_launch_matches``: one kernel launch with any constexprs (BLOCK_ROWS, BLOCK_COLS ...)
  run by the interpreter and by the twin on fresh outputs (NaN-filled, so a lane the twin forgets to
  write shows), every output compared bit for bit.
"""

from __future__ import annotations

import torch
import triton
from executor_helpers import bits

from precision_kernels.cpu_executor import use_cpu_executor
from precision_kernels.ops._common import kernel_view, launch, observe_launches

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
KIND = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def rand(shape, dtype=torch.float32, seed=0, scale=1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale).to(dtype)


def specials(t: torch.Tensor, seed: int, count: int = 6) -> torch.Tensor:
    """t with ``count`` entries replaced by NaN, +inf, -inf, -0, +0 (cycling), at seeded places."""
    t = t.detach().clone()
    flat = t.view(-1)
    g = torch.Generator().manual_seed(seed)
    values = (float("nan"), float("inf"), float("-inf"), -0.0, 0.0)
    for j, i in enumerate(torch.randperm(flat.numel(), generator=g)[:count].tolist()):
        flat[i] = values[j % len(values)]
    return t


def signed_nans(t: torch.Tensor, seed: int, count: int = 8) -> torch.Tensor:
    """t with NaNs of both signs (and an inf) at seeded places: where two meet in an add or a multiply,
    numpy keeps one operand's, chosen by the lane's place in its vector loop (``Rows.op``)."""
    t = t.detach().clone()
    flat = t.view(-1)
    g = torch.Generator().manual_seed(seed)
    values = torch.tensor([float("nan"), -float("nan"), float("inf")]).to(t.dtype)
    for j, i in enumerate(torch.randperm(flat.numel(), generator=g)[:count].tolist()):
        flat[i] = values[j % 3]
    return t


def zero_ties(rows: int, cols: int, dtype, block_cols: int = 128) -> torch.Tensor:
    """Rows of negative numbers and zeros whose zeros are -0 in some blocks and +0 in others (row r: the
    signs alternate with the block and with r), so the running max meets a -0/+0 tie."""
    t = -torch.rand((rows, cols), generator=torch.Generator().manual_seed(rows * 1000 + cols)) - 0.5
    for r in range(rows):
        for c0 in range(0, cols, block_cols):
            t[r, c0 + (r % min(block_cols, cols - c0))] = -0.0 if (r + c0 // block_cols) % 2 else 0.0
    return t.to(dtype)


def out(shape, dtype=torch.float32) -> torch.Tensor:
    """A fresh output buffer filled with NaN (16-bit buffers are passed as their int16 view by the caller)."""
    return torch.full(shape, float("nan"), dtype=dtype)


def assert_direct_launch_matches(make_launch, outputs) -> None:
    """``make_launch()`` -> (kernel, grid, args, constexprs) with fresh output tensors among ``args``;
    ``outputs``: the indices in ``args`` of the outputs. Both executors run it; outputs must be equal bits."""
    results = {}
    for executor in ("interpreter", "twins"):
        kernel, grid, args, constexprs = make_launch()
        with use_cpu_executor(executor), observe_launches() as records:
            launch(kernel, grid, *args, **constexprs)
        assert [r.executor for r in records] == ["twin" if executor == "twins" else "interpreter"]
        results[executor] = [args[i] for i in outputs]
    for i, (got, want) in zip(outputs, zip(results["twins"], results["interpreter"])):
        same = bits(got) == bits(want)
        assert bool(same.all()), (f"argument {i}: {int((~same).sum())} of {same.numel()} elements differ, first at "
                                  f"{(~same).nonzero()[:3].tolist()}")


def row_grid(rows: int, block_rows: int) -> tuple[int]:
    return (triton.cdiv(rows, block_rows),)


def views(*tensors):
    return [kernel_view(t) for t in tensors]

"""Several learner processes under ``torchrun``: who this rank is, and the few reductions the RL step needs.

    torchrun --standalone --nproc_per_node N -m rl.train ...

``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; ``init`` joins the process
group (gloo for CPU tensors, NCCL for CUDA) and returns a ``Dist``. Without ``torchrun``
(or with one process) every reduction is the identity, so a single-process run takes
exactly the code path it always did.

What crosses processes, all through ``torch.distributed`` collectives:

* the flat gradient, summed (``all_reduce_grads``): each rank's loss is its share of the
  global loss (divided by the global token or sequence count), so the sum is the gradient
  of the single-process loss; the order of the sum is the backend's, so the bits can differ
  from a single-process run (same world size: identical, run to run);
* counts and sums for the loss denominators and the metrics (``sum``, ``max``);
* the weights after the warm-up (``broadcast_params``), so every rank starts RL from rank 0's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _reduce(self, values, op) -> list[float]:
        """``values`` (floats) reduced elementwise over ranks with ``op``, as float64 on the run's device."""
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        if self.active:
            dist.all_reduce(t, op=op)
        return t.tolist()

    def sum(self, *values: float) -> list[float]:
        return self._reduce(values, dist.ReduceOp.SUM)

    def max(self, *values: float) -> list[float]:
        return self._reduce(values, dist.ReduceOp.MAX)

    def all_reduce_grads(self, params) -> None:
        """Sum every parameter's gradient over the ranks, through one flat buffer (missing grads count as 0)."""
        if not self.active:
            return
        params = list(params)
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        for p, part in zip(params, flat.split([p.numel() for p in params])):
            p.grad.copy_(part.view_as(p.grad))

    def broadcast_params(self, params) -> None:
        """Every rank takes rank 0's parameter values."""
        if not self.active:
            return
        with torch.no_grad():
            for p in params:
                dist.broadcast(p.data, src=0)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def shard(self, n: int) -> tuple[int, int]:
        """``(start, stop)`` of this rank's contiguous share of ``n`` items (``n`` divisible by the world size)."""
        per = n // self.world_size
        return self.rank * per, (self.rank + 1) * per


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> Dist:
    """Join the process group torchrun describes (gloo on CPU, NCCL on CUDA); a 1-process ``Dist`` otherwise."""
    if not launched_by_torchrun():
        return Dist(device=device)
    if not dist.is_initialized():
        if device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            device = torch.device("cuda", local)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)


def shutdown() -> None:
    if dist.is_initialized():
        # Every rank reaches the barrier before any tears gloo down: a rank that destroys the group while
        # another still closes its connections can abort the other ("terminate called without an active
        # exception"), seen under load on 2 cores.
        dist.barrier()
        dist.destroy_process_group()

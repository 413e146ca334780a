"""Data-parallel training under ``torchrun``: process group set-up, sharding, reductions.

``torchrun --nproc_per_node N -m edgeskip train ...`` starts N processes; each trains on its shard of
every global mini-batch (``--batch-size`` is the global batch, split evenly), gradients are averaged by
DistributedDataParallel (gloo on CPU, NCCL on GPU), and rank 0 writes the checkpoints. Every rank draws
the same shuffling, augmentation and stochastic-depth decisions from the same seed, so a run is
determined by its seed and its world size.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

# Imported before any process group exists, on purpose. Its functions take ``group=group.WORLD`` as a default
# argument, evaluated at import; DistributedDataParallel imports it on first use, and imported after
# ``init_process_group`` it pins the default group forever. A pinned gloo group is never destroyed: its worker
# threads outlive ``destroy_process_group`` and now and then abort the process at exit ("terminate called without
# an active exception"), after a run that trained and wrote its checkpoint. Reproducer: bench/gloo_exit_abort.py.
if dist.is_available():  # builds without torch.distributed have no process groups to pin
    import torch.distributed.nn.functional  # noqa: F401  (see above)

from edgeskip.errors import EdgeskipError


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run."""

    rank: int = 0
    world_size: int = 1
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def sum(self, *values: float) -> list[float]:
        """Element-wise sum of ``values`` over all ranks (identity for one process)."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group (the next :func:`from_environment` joins a new one).

        Call it once nothing refers to the group any more (drop DistributedDataParallel wrappers first): the group
        is destroyed, and its threads joined, only when its last reference goes. A gloo group still alive when the
        interpreter exits can abort the process (bench/gloo_exit_abort.py).
        """
        if self.active and dist.is_initialized():
            gc.collect()  # a wrapper in a reference cycle holds the group too
            dist.destroy_process_group()


def from_environment() -> Distributed:
    """Join the process group torchrun describes in the environment (one process: no group)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise EdgeskipError("WORLD_SIZE/RANK/LOCAL_RANK must be integers (as torchrun sets them)") from None
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if world <= 1:
        return Distributed(device=device)
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Distributed(rank, world, device)

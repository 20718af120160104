"""Data parallelism under `torchrun`: detected from its environment, a no-op without it.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; with WORLD_SIZE > 1 we join the process group
(NCCL on CUDA, gloo on CPU) and wrap the model in DistributedDataParallel. Each rank trains on
its own share of the token batches (batching.epoch_order); gradients are all-reduced.
"""

from __future__ import annotations

import logging
import os
import signal
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as torch_dist

from mt.device import wants_cuda

log = logging.getLogger(__name__)


@dataclass
class Context:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            torch_dist.barrier()

    def sum(self, value: int) -> int:
        """Sum an integer over all ranks (one small all-reduce)."""
        if not self.active:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch_dist.all_reduce(tensor)
        return int(tensor.item())

    def agree_on_stop(self, signal_name: Optional[str], reason: Optional[str]) -> tuple[Optional[str], Optional[str]]:
        """(signal, limit reached) as every rank sees them: a stop one rank was asked for (a signal
        reached it first, a clock ran out first) is every rank's, at the same step. A rank that
        stopped alone would wait in the save's collective while the others wait in the next step's."""
        if not self.active:
            return signal_name, reason
        mine = [signal.Signals[signal_name].value if signal_name else 0, int(reason is not None)]
        both = torch.tensor(mine, dtype=torch.int64, device=self.device)
        torch_dist.all_reduce(both, op=torch_dist.ReduceOp.MAX)
        number, limit = both.tolist()
        if number and not signal_name:
            signal_name = signal.Signals(number).name
            log.warning("%s on another process: stopping here too, then saving", signal_name)
        return signal_name, reason or ("another process reached a limit" if limit else None)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if not self.active:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def no_sync(self, model: torch.nn.Module):
        """Skip the all-reduce on all but the last accumulated batch of an update."""
        return model.no_sync() if self.active else nullcontext()

    def gather_rng(self, states: dict) -> dict | list[dict]:
        """Every rank's RNG states (dropout differs per rank), so each resumes exactly."""
        if not self.active:
            return states
        gathered: list = [None] * self.world
        torch_dist.all_gather_object(gathered, states)
        return gathered

    def close(self) -> None:
        if self.active and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def init(device: str) -> Context:
    """Join torchrun's process group when launched by it; else a single-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = wants_cuda(device)
    if use_cuda:
        torch.cuda.set_device(local_rank)
    torch_dist.init_process_group("nccl" if use_cuda else "gloo")
    return Context(rank, world, torch.device("cuda", local_rank) if use_cuda else torch.device("cpu"))

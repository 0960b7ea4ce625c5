"""Multi-process data-parallel training with ``torch.distributed`` launched by ``torchrun``.

Every process (rank) holds the whole model and, each step, one equal slice of the same
global minibatch; :class:`~torch.nn.parallel.DistributedDataParallel` averages the
gradients, so ``P`` processes with ``batch_size=B`` take the same steps as one process
with ``B`` (up to float summation order). The backend is gloo on CPU and NCCL on GPUs.
Only rank 0 writes files.

Command line::

    torchrun --standalone --nproc_per_node 2 -m sbi_core.cli.main train \\
        --sims sims.pt --out model.pt --ddp

Python (run the script with torchrun)::

    from sbi_core.distributed import init_distributed, is_main_process
    device = init_distributed()          # "cpu" or "cuda:<local rank>"
    posterior = sbi_core.fit(problem, sims, distributed=True, device=device)
    if is_main_process():
        sbi_core.save(posterior, "model.pt")
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["init_distributed", "is_main_process", "shutdown_distributed", "launched_by_torchrun"]


def launched_by_torchrun() -> bool:
    """True when the ``torchrun`` environment (``RANK``, ``WORLD_SIZE``, ...) is present."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def init_distributed(device: str = "auto") -> str:
    """Join the process group started by ``torchrun`` and return this rank's device.

    Args:
        device: ``"auto"`` (a GPU per local rank when CUDA is available, else CPU), ``"cpu"``
            or ``"cuda"``.

    Returns:
        ``"cpu"`` or ``"cuda:<LOCAL_RANK>"``; the backend is NCCL on GPUs and gloo on CPU.
    """
    if not launched_by_torchrun():
        raise ValueError("Distributed training must be launched with torchrun, e.g. "
                         "`torchrun --standalone --nproc_per_node 2 -m sbi_core.cli.main train "
                         "... --ddp` (RANK/WORLD_SIZE are not set).")
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but no CUDA GPU is available; use 'cpu'.")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return f"cuda:{local_rank}" if use_cuda else "cpu"


def is_main_process() -> bool:
    """Rank 0 (or not distributed at all): the process that saves models and prints."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def shutdown_distributed() -> None:
    """Leave the process group (call once at the end of a torchrun script)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()

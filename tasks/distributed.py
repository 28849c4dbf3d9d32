"""One model on many processes: `torch.distributed` DDP, launched by `torchrun`.

`zooflow train --arch NAME --nproc N` re-runs itself under `torchrun --standalone --nproc-per-node N`;
every process then trains the same model on its shard of each epoch's permutation, DDP all-reduces the
gradients, and only rank 0 writes (weights, checkpoint, history) and logs to MLflow. NCCL on GPUs (one
GPU per process, `LOCAL_RANK`), gloo on CPU. The checkpoint is the single-process one: a plain
state_dict of the unwrapped model, so a run may resume on another number of processes.

The training loop calls the few helpers below; with no process group they are the identity, so a
single-process run is unchanged.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn


def launched() -> bool:
    """Whether torchrun started this process (it sets TORCHELASTIC_RUN_ID), even as the only one: then
    it joins a process group and trains under DDP, so one GPU can check the NCCL path (bench/gpu_check.py)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """A process group is up: DDP (with one process, every collective is the identity)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0 (or a single process): the one that writes files and logs."""
    return rank() == 0


def launch(nproc: int, argv: list[str]) -> int:
    """Run `python -m <argv>` on `nproc` local processes under torchrun; its exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", *argv]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.call(cmd, env=env)


def init(device: torch.device) -> torch.device:
    """Join the process group torchrun set up; the device this rank trains on."""
    if not launched():
        return device
    die_with_parent()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
    return device


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this rank when torchrun dies. torchrun starts each rank in a session of its
    own, so a torchrun killed outright (SIGKILL, the OOM killer, a cancelled run) would otherwise leave
    its ranks blocked in a collective for the whole process-group timeout, holding memory and GPUs."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the parent died before we asked
        os.kill(os.getpid(), signal.SIGTERM)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Full batches per rank: every rank takes the same number of steps (collectives stay in step)."""
    return (n // world_size()) // batch_size


def shard(perm: Tensor) -> Tensor:
    """This rank's part of an epoch's permutation (the same on every rank: it is seeded by the epoch),
    like DistributedSampler: rank r takes positions r, r + world, r + 2·world, ..."""
    return perm[rank() :: world_size()] if active() else perm


def rank_seed(seed: int) -> int:
    """A per-rank seed for augmentation draws (shards must not share crops and flips)."""
    return seed + 7919 * rank() if active() else seed


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """The DDP wrapper that all-reduces gradients in backward; the model itself when single-process."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def all_reduce_sum(*values: Tensor) -> None:
    """In-place sum over ranks (epoch loss and correct counts)."""
    if not active():
        return
    for value in values:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)


def barrier() -> None:
    if active():
        dist.barrier()

"""Preloaded into each worker of zooflow's local Dask cluster (`orchestration.task_runner: dask`).

A `LocalCluster` names its workers 0, 1, ...; worker i trains on GPU i, so the architectures that run at
the same time never share a GPU (`device: auto` then picks the current CUDA device). On a real cluster
(`orchestration.dask_address`) start one `dask worker --nthreads 1` per GPU with CUDA_VISIBLE_DEVICES
set instead."""

from __future__ import annotations


def dask_setup(worker) -> None:
    import torch

    count = torch.cuda.device_count()
    if count and str(worker.name).isdigit():
        torch.cuda.set_device(int(worker.name) % count)

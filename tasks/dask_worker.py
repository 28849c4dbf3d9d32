"""Preloaded (by file path) into each worker of zooflow's local Dask cluster
(`orchestration.task_runner: dask`).

- The worker imports this checkout's `flows`/`tasks`/`models`, the code the flow itself runs: its
  folder goes first on sys.path (a worker process does not inherit the flow's sys.path, and another
  install of zooflow in the environment must not answer instead).
- A `LocalCluster` names its workers 0, 1, ...; worker i trains on GPU i, so the architectures that run
  at the same time never share a GPU (`device: auto` then picks the current CUDA device). On a real
  cluster (`orchestration.dask_address`) start one `dask worker --nthreads 1` per GPU with
  CUDA_VISIBLE_DEVICES set instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
if sys.path[:1] != [ROOT]:
    sys.path.insert(0, ROOT)


def dask_setup(worker) -> None:
    import torch

    count = torch.cuda.device_count()
    if count and str(worker.name).isdigit():
        torch.cuda.set_device(int(worker.name) % count)

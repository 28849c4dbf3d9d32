"""Shared fixtures: every test runs in its own project folder with its own MLflow store."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# Prefect keeps task cache records in one store per user (~/.prefect/storage): a test session gets
# its own, so no record from an earlier session (or another checkout) can make a stage "Cached".
_RESULTS = tempfile.mkdtemp(prefix="zooflow-test-prefect-results-")
os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = _RESULTS
atexit.register(shutil.rmtree, _RESULTS, True)
# Two cores are all CI has; tests must not oversubscribe them (`make test` runs two pytest-xdist
# workers: one thread each).
os.environ.setdefault("OMP_NUM_THREADS", "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2")


# The slowest files, slowest first (seconds on the quiet 2-core box). Under `make test` (`-n 2 --dist
# loadfile --no-loadscope-reorder`) a file is one unit of work, handed to the workers in collection order
# (xdist would otherwise order files by their number of tests): started first, the long ones run beside
# the short ones instead of alone at the end (test_dvc, last and alone, cost 7 minutes).
SLOW_FILES = ["test_dvc.py",             # ~480: two `dvc repro` of 13 stages, a flow run
              "test_deployment.py",      # ~160: a Prefect server, worker and scheduled run
              "test_orchestration.py",   # ~160: Dask runner, isolation, failures
              "test_experiment.py",      # ~120: the fifteen experiments at tiny size, the flow
              "test_gpu_check.py",       # ~80: every section of the GPU check, dry
              "test_register_server.py", # ~70: a real `mlflow server`, stopped mid-run
              "test_lock.py",            # ~70: two runs in one folder
              "test_finetune.py",        # ~70
              "test_distributed.py"]     # ~60: DDP over gloo, two processes


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the others keep their order


@pytest.fixture(autouse=True)
def mlflow_globals_restored():
    """`mlflow.set_tracking_uri` / `set_registry_uri` (tasks.tracking.client calls both) also write
    MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI into os.environ: without this, a test that ran a stage
    in-process points every later test, and the servers and workers they start, at its own store."""
    env = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    yield
    import sys

    if "mlflow" in sys.modules:
        import mlflow.tracking._model_registry.utils as registry_utils
        import mlflow.tracking._tracking_service.utils as tracking_utils

        tracking_utils._tracking_uri = None
        registry_utils._registry_uri = None
    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        del os.environ[key]
    os.environ.update(env)


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A fresh project folder (the working directory) with the repo's params.yaml and dvc.yaml."""
    for name in ("params.yaml", "dvc.yaml"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect API and database for the tests that run flows."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield

"""Python source that makes Prefect, MLflow, Great Expectations and DVC unimportable in a process, as on
the GPU machine (torch, numpy, Pillow and a few carried wheels): run it at the top of a script, or install
it as `sitecustomize.py` so that every child process (torchrun and its ranks) is blocked too."""

from __future__ import annotations

from pathlib import Path

BLOCKED = ("prefect", "prefect_dask", "mlflow", "great_expectations", "dvc")

SOURCE = f'''
import importlib.abc, sys

BLOCKED = {BLOCKED!r}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)")
        return None

sys.meta_path.insert(0, Block())
'''


def sitecustomize(folder: Path) -> Path:
    """`folder` holding a sitecustomize.py that blocks the services; put it first on PYTHONPATH."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(SOURCE)
    return folder

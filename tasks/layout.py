"""Where each stage reads and writes, relative to the project folder (the working directory)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    """`root` holds a run's outputs; `data_root` (default: root) its data: `data/prepared`,
    `data/augment`, `reports/validation`. An experiment's runs each have their own root and share
    one data_root, so the dataset is prepared once (tasks/experiment.py)."""

    root: Path = Path(".")
    data_root: Path | None = None

    def __post_init__(self) -> None:
        # Absolute, so stages behave the same in threads, Dask workers and tools that need it (GX).
        object.__setattr__(self, "root", Path(self.root).resolve())
        object.__setattr__(self, "data_root", Path(self.data_root or self.root).resolve())

    @property
    def prepared(self) -> Path:
        return self.data_root / "data" / "prepared"

    @property
    def augment(self) -> Path:
        return self.data_root / "data" / "augment"

    @property
    def validation(self) -> Path:
        return self.data_root / "reports" / "validation"

    def train(self, arch: str) -> Path:
        return self.root / "outputs" / "train" / arch

    def eval(self, arch: str) -> Path:
        return self.root / "outputs" / "eval" / arch

    def explain(self, arch: str) -> Path:
        return self.root / "outputs" / "explain" / arch

    @property
    def ensemble(self) -> Path:
        return self.root / "outputs" / "ensemble"

    @property
    def register(self) -> Path:
        return self.root / "outputs" / "register"

    @property
    def leaderboard(self) -> Path:
        return self.root / "outputs" / "leaderboard"

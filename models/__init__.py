"""The architecture zoo: `models.build(name, num_classes, ...)`, `models.available()`.

Importing this package imports every family module, so each registers itself.
"""

from models.registry import FittedClassifier, ModelInfo, available, build, register

# Every family registers its builders on import (order: the history of the lecture notes).
from models import baselines, lenet, resnet  # noqa: E402,F401  isort: skip

__all__ = ["FittedClassifier", "ModelInfo", "available", "build", "register"]

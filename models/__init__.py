"""The architecture zoo: `models.build(name, num_classes, ...)`, `models.available()`.

Importing this package imports every family module, so each registers itself.
"""

from models.registry import FittedClassifier, ModelInfo, available, build, register

__all__ = ["FittedClassifier", "ModelInfo", "available", "build", "register"]

"""The architecture zoo: `models.build(name, num_classes, ...)`, `models.available()`,
`models.catalogue()`.

Importing this package imports every family module, so each registers itself.
"""

from models.registry import FittedClassifier, ModelInfo, available, build, register

# Every family registers its builders on import, in the order of the lecture notes' history.
from models import (  # noqa: E402,F401  isort: skip
    baselines, lenet, alexnet, zfnet, vgg, googlenet, resnet, preact, wrn, resnext, stochastic_depth, senet,
    densenet, mobilenet, efficientnet, deformable, vit, coatnet,
)
from models import resnet9  # noqa: E402,F401  isort: skip  (Page's DAWNBench ResNet-9, 2018)
from models.blocks import count_params  # noqa: E402  isort: skip
from models.catalogue import catalogue  # noqa: E402  isort: skip

__all__ = ["FittedClassifier", "ModelInfo", "available", "build", "catalogue", "count_params", "register"]

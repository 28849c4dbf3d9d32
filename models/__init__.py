"""The architecture zoo: `models.build(name, num_classes, ...)`, `models.available()`; the
catalogue of parameters and FLOPs is `models.catalogue` (`python -m models.catalogue --write`).

Every model shows timm's faces (`models.classifier.Classifier`): `forward_features`,
`forward_head(x, pre_logits=False)`, `num_features`, `get_classifier()`, `reset_classifier(num_classes)`.

Importing this package imports every family module, so each registers itself.
"""

from models.classifier import Classifier, FittedClassifier
from models.registry import ModelInfo, available, build, register, temporary_registrations

# Every family registers its builders on import, in the order of the lecture notes' history.
from models import (  # noqa: E402,F401  isort: skip
    baselines, concept_learning, lenet, alexnet, zfnet, nin, vgg, googlenet, resnet, preact, wrn, resnext,
    stochastic_depth, senet, densenet, mobilenet, efficientnet, deformable, vit, coatnet,
)
from models import resnet9  # noqa: E402,F401  isort: skip  (Page's DAWNBench ResNet-9, 2018)
from models.blocks import count_params  # noqa: E402  isort: skip

__all__ = ["Classifier", "FittedClassifier", "ModelInfo", "available", "build", "count_params", "register",
           "temporary_registrations"]

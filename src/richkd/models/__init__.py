"""The CIFAR model zoo of CRD / mdistiller and its ImageNet models (`*_imagenet`), behind one registry:
`create_model(name, num_classes)`.

Every model is a `ZooModel` returning `ModelOutput(logits, pooled, stages)`, so any of them can be a
teacher or a student. Importing this package registers all families (the only import side effect).
"""

from __future__ import annotations

from richkd.errors import RichKDError
from richkd.models import (  # noqa: F401  (imported to register their models)
    cifar_resnet,
    cifar_resnet50,
    imagenet,
    mobilenetv2,
    shufflenet_v1,
    shufflenet_v2,
    vgg,
    wrn,
)
from richkd.models.base import MODELS, FeatureShapes, ModelFactory, ZooModel, feature_shapes
from richkd.models.output import ModelOutput

__all__ = [
    "MODELS",
    "FeatureShapes",
    "ModelFactory",
    "ModelOutput",
    "ZooModel",
    "create_model",
    "feature_shapes",
    "model_names",
]


def create_model(name: str, num_classes: int) -> ZooModel:
    """Build a freshly initialised model. Names are matched case-insensitively, so mdistiller's spellings
    ("MobileNetV2", "ShuffleV1", "ResNet50") work too."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise RichKDError(f"num_classes must be a positive integer, got {num_classes!r}")
    return MODELS.get(name.lower())(num_classes)


def model_names() -> list[str]:
    """Registered model names, sorted."""
    return MODELS.names()

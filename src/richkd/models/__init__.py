"""The CIFAR model zoo of CRD / mdistiller and its ImageNet models (`*_imagenet`), behind one registry:
`create_model(name, num_classes)`.

Every model is a `ZooModel` returning `ModelOutput(logits, pooled, stages)`, so any of them can be a
teacher or a student. Importing this package registers all families (the only import side effect). Networks
from outside the zoo (`timm:NAME`, `torchvision:NAME`, `efficientnet_lite0`, a user's `module:PKG.MOD:FACTORY`)
come through `richkd.models.external`, which imports timm / torchvision / user code only when such a name is built.
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
from richkd.models.external import is_external, module_name
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
    "module_name",
]


def create_model(name: str, num_classes: int, *, allow_code: bool = False) -> ZooModel:
    """Build a freshly initialised model. Zoo names are matched case-insensitively, so mdistiller's spellings
    ("MobileNetV2", "ShuffleV1", "ResNet50") work too. `allow_code`: the explicit opt-in that a `module:` name
    (a user's factory) may be imported and run."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise RichKDError(f"num_classes must be a positive integer, got {num_classes!r}")
    if is_external(name):
        from richkd.models.external import create_external

        return create_external(name, num_classes, allow_code=allow_code)
    return MODELS.get(name.lower())(num_classes)


def model_names() -> list[str]:
    """Registered model names, sorted."""
    return MODELS.names()

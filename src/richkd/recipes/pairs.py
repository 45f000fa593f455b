"""The standard teacher -> student pairs (METHOD.md §8) and the per-pair recipe details: CIFAR-100's and ImageNet's.

One table per dataset: everything that differs between pairs lives here, nowhere else. Sources: mdistiller's
per-pair configs (`configs/cifar100/dkd/*.yaml` and `configs/imagenet/{r34_r18,r50_mv1}/dkd.yaml`: lr and DKD β)
and its README (lr 0.01 for MobileNetV2 / ShuffleNet students); pairs without an mdistiller config say where
their value comes from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from richkd.errors import RichKDError

__all__ = ["Pair", "PAIRS", "IMAGENET_PAIRS", "get_pair", "MDISTILLER_TEACHERS", "LIGHT_STUDENT_LR"]

# mdistiller trains MobileNetV2, ShuffleV1 and ShuffleV2 students with lr 0.01 (the others 0.05).
LIGHT_STUDENT_LR = 0.01


@dataclass(frozen=True)
class Pair:
    teacher: str  # zoo name
    student: str  # zoo name
    family: str  # "same" | "cross"
    teacher_dim: int  # pooled penultimate width (METHOD.md §8)
    student_dim: int
    lr: float | None  # student learning rate when it differs from the recipe's (None = the recipe's)
    dkd_beta: float  # DKD's β for this pair
    source: str  # where lr and β come from
    teacher_checkpoint: str | None = None  # default teacher weights (None: the pair's `--method teacher` run)
    alias: str | None = None  # short name accepted by `--pair` (ImageNet: resnet34-resnet18)
    # per-method settings of this pair, over the method's and the dataset's layers: {method: {section: {key: value}}}
    method_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.teacher}-{self.student}"


def _pair(
    teacher: str, student: str, family: str, dims: tuple[int, int], beta: float, source: str = "mdistiller"
) -> Pair:
    light = student in ("mobilenetv2", "shufflev1", "shufflev2")
    return Pair(teacher, student, family, dims[0], dims[1], LIGHT_STUDENT_LR if light else None, beta, source)


_ANALOGY = "not in mdistiller; β by analogy with"
PAIRS: dict[str, Pair] = {
    p.name: p
    for p in (
        _pair("resnet56", "resnet20", "same", (64, 64), 2.0),
        _pair("resnet110", "resnet32", "same", (64, 64), 2.0),
        _pair("resnet110", "resnet20", "same", (64, 64), 2.0, f"{_ANALOGY} resnet110-resnet32"),
        _pair("resnet32x4", "resnet8x4", "same", (256, 256), 8.0),
        _pair("wrn_40_2", "wrn_16_2", "same", (128, 128), 6.0),
        _pair("wrn_40_2", "wrn_40_1", "same", (128, 64), 6.0),
        _pair("vgg13", "vgg8", "same", (512, 512), 6.0),
        _pair("resnet32x4", "shufflev1", "cross", (256, 960), 8.0),
        _pair("resnet32x4", "shufflev2", "cross", (256, 1024), 8.0),
        _pair("vgg13", "mobilenetv2", "cross", (512, 1280), 6.0),
        _pair("resnet50", "mobilenetv2", "cross", (2048, 1280), 8.0),
        _pair("wrn_40_2", "shufflev1", "cross", (128, 960), 8.0),
        _pair("resnet32x4", "wrn_16_2", "cross", (256, 128), 8.0, f"{_ANALOGY} the other resnet32x4 pairs"),
        _pair("resnet32x4", "vgg8", "cross", (256, 512), 8.0, f"{_ANALOGY} the other resnet32x4 pairs"),
    )
}

# ImageNet (METHOD.md §8): the teachers are torchvision's IMAGENET1K_V1 weights, loaded as they are
# (https://download.pytorch.org/models/<file>; resnet34 73.31 % and resnet50 76.13 % top-1 by torchvision's card),
# which is what mdistiller's ImageNet teachers are. β: mdistiller configs/imagenet/r34_r18 and r50_mv1 dkd.yaml.
# ReviewKD: mdistiller configs/imagenet/r34_r18/reviewkd.yaml REVIEWKD_WEIGHT 1.0 (the dataset layer's
# imagenet.reviewkd.yaml) and r50_mv1/reviewkd.yaml REVIEWKD_WEIGHT 8.0 with MAX_MID_CHANNEL 256 (here, per pair).
IMAGENET_PAIRS: dict[str, Pair] = {
    p.name: p
    for p in (
        Pair("resnet34_imagenet", "resnet18_imagenet", "same", 512, 512, None, 0.5, "mdistiller",
             "teachers/resnet34-b627a593.pth", "resnet34-resnet18"),
        Pair("resnet50_imagenet", "mobilenetv1_imagenet", "cross", 2048, 1024, None, 2.0, "mdistiller",
             "teachers/resnet50-0676ba61.pth", "resnet50-mobilenetv1",
             {"reviewkd": {"feature": {"weight": 8.0, "reviewkd_max_mid_channel": 256}}}),
    )
}
PAIR_TABLES: dict[str, dict[str, Pair]] = {"imagenet": IMAGENET_PAIRS}

# mdistiller's released CIFAR-100 teachers: download_ckpts/cifar_teachers/<dir>/ckpt_epoch_240.pth
# (they load as they are: `model.teacher_checkpoint=.../ckpt_epoch_240.pth`).
MDISTILLER_TEACHERS: dict[str, str] = {
    "resnet56": "resnet56_vanilla",
    "resnet110": "resnet110_vanilla",
    "resnet32x4": "resnet32x4_vanilla",
    "wrn_40_2": "wrn_40_2_vanilla",
    "vgg13": "vgg13_vanilla",
    "resnet50": "ResNet50_vanilla",
}


def get_pair(name: str, dataset: str | None = None) -> Pair:
    """A pair by `teacher-student` name (case-insensitive, mdistiller spellings such as ShuffleV1 work), from the
    table of `dataset` (ImageNet's also by its short alias, e.g. resnet34-resnet18); CIFAR-100's by default."""
    table = PAIR_TABLES.get(dataset or "", PAIRS)
    key = name.lower()
    pair = table.get(key) or next((p for p in table.values() if p.alias == key), None)
    if pair is None:
        names = [p.alias or p.name for p in table.values()]
        where = f" for --dataset {dataset}" if table is not PAIRS else ""
        raise RichKDError(f"unknown pair {name!r}{where}; `richkd recipes` lists them: {', '.join(names)}")
    return pair

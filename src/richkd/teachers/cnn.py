"""The task-trained CNN teacher, loaded frozen from its file: the one loader behind an online run
(`build.build_teacher`) and the teacher-logit cache (`richkd teacher cache`), so a cache holds exactly what the
online teacher would give (the same weights, BatchNorm folding and input adapter)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from richkd.engine.checkpoint import load_model_file, read_model_file
from richkd.engine.fold import fold_batchnorm
from richkd.models import create_model
from richkd.models.base import keep_bn_statistics
from richkd.models.external import NativeInput, TeacherInput, is_external, load_init_weights, same_input, teacher_input

log = logging.getLogger("richkd")


def load_frozen_teacher(
    arch: str, checkpoint: str | Path, classes: tuple[str, ...], device: torch.device, *,
    student_input: NativeInput | None = None, allow_code: bool = False,
) -> nn.Module:
    """`arch` with the weights of `checkpoint` (a richkd model file, or a bare timm/torchvision/Lite0 state
    dict), BatchNorm folded, on `device`. When `student_input` (the batch's size and normalisation) differs from
    the teacher's own (recorded in its model file, or the bare network's pretrained convention), the teacher is
    wrapped so it is fed as it was trained: resized and renormalised. `allow_code`: the opt-in that a
    `module:PKG.MOD:FACTORY` name may import and run user code."""
    model = create_model(arch, len(classes), allow_code=allow_code)
    path = Path(checkpoint)
    recorded = read_model_file(path)[1]
    if not recorded and is_external(arch):  # a bare timm / torchvision / Lite0 state dict
        load_init_weights(model, str(path), arch=arch, replace_head=False)
    else:
        load_model_file(path, model, arch=arch, num_classes=len(classes), classes=classes)
    teacher = fold_batchnorm(model.to(device))  # frozen: the same function, one memory pass less per layer
    keep_bn_statistics(model, teacher)  # folding removes the BNs; OFD's margin reads their statistics
    own = teacher_input(recorded, model) if student_input is not None else None
    if own is not None and student_input is not None and not same_input(own, student_input):
        log.info("teacher input: resized to %s and renormalised (its own), the student's is %s",
                 own.size, student_input.size)
        teacher = TeacherInput(teacher, source=student_input, target=own).to(device)
    return teacher.eval()

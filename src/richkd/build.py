"""Composition root: RunConfig -> data, student, teacher targets, distiller, optimizer. The only reader of cfg."""

from __future__ import annotations

import dataclasses
import logging
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from richkd import __version__
from richkd.config import CRDConfig, DKDConfig, KDConfig, RichKDConfig, RunConfig, VanillaConfig
from richkd.data import ArrayDataset, load_dataset
from richkd.data.loader import DeviceData
from richkd.data.subset import subset
from richkd.distill import CRD, DKD, KD, Distiller, RichKD, Vanilla, build_crd_loss
from richkd.engine import dist
from richkd.engine.batches import BatchMaker
from richkd.engine.checkpoint import load_model_file
from richkd.engine.device import bf16_is_fast
from richkd.engine.fold import fold_batchnorm
from richkd.engine.optim import build_optimizer
from richkd.engine.trainer import FitParts, Schedule
from richkd.errors import RichKDError
from richkd.models import create_model
from richkd.teachers.frozen import FusedTargets, OnlineTeacher, TargetSource
from richkd.teachers.target_cache import TargetCache

log = logging.getLogger(__name__)


def load_data(cfg: RunConfig) -> tuple[ArrayDataset, ArrayDataset]:
    d = cfg.data
    cache_dir = Path(d.cache_dir) if d.cache_dir else None
    train = load_dataset(d.name, d.root, d.train_split, download=d.download, cache_dir=cache_dir)
    test = load_dataset(d.name, d.root, d.test_split, download=d.download, cache_dir=cache_dir)
    if train.classes != test.classes:
        raise RichKDError(f"train and test splits of {d.name} have different classes")
    return train, test


def build_teacher(cfg: RunConfig, classes: tuple[str, ...], device: torch.device) -> nn.Module:
    assert cfg.model.teacher is not None and cfg.model.teacher_checkpoint is not None
    model = create_model(cfg.model.teacher, len(classes))
    load_model_file(
        Path(cfg.model.teacher_checkpoint),
        model,
        arch=cfg.model.teacher,
        num_classes=len(classes),
        classes=classes,
    )
    teacher = fold_batchnorm(model.to(device))  # frozen: the same function, one memory pass less per layer
    if cfg.train.channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if cfg.train.compile:  # frozen forward: compiling fuses its BatchNorm/ReLU/add into the convolutions
        teacher = torch.compile(teacher)  # type: ignore[assignment]
    return teacher


def open_cache(cfg: RunConfig, train: ArrayDataset, device: torch.device) -> TargetCache:
    assert cfg.vlm.cache is not None
    cache = TargetCache.open(Path(cfg.vlm.cache))
    cache.validate(dataset=train.name, split=train.split, n_rows=len(train), class_names=train.classes)
    if cfg.vlm.view_mode == "matched" and cache.n_views < 2:
        raise RichKDError(
            f"vlm.view_mode=matched needs a cache with augmented views, but {cfg.vlm.cache} has "
            f"{cache.n_views}: rebuild it with `richkd vlm cache --views K` or use vlm.view_mode=plain"
        )
    if cfg.vlm.view_mode == "matched" and cache.meta.pad != cfg.data.pad:
        raise RichKDError(
            f"target cache {cfg.vlm.cache} crops with pad {cache.meta.pad} but data.pad is {cfg.data.pad}: "
            f"set data.pad={cache.meta.pad} or rebuild the cache"
        )
    cache.to_device(device)
    return cache


def build_distiller(
    cfg: RunConfig, *, student_dim: int, teacher_dim: int, clip_dim: int | None, train: ArrayDataset
) -> Distiller:
    d = cfg.distill
    if isinstance(d, VanillaConfig):
        return Vanilla(ce_weight=d.ce_weight)
    if isinstance(d, KDConfig):
        return KD(temperature=d.temperature, kd_weight=d.kd_weight, ce_weight=d.ce_weight)
    if isinstance(d, DKDConfig):
        warmup = d.warmup_epochs / cfg.train.epochs
        return DKD(
            ce_weight=d.ce_weight, alpha=d.alpha, beta=d.beta, temperature=d.temperature, warmup=warmup
        )

    def crd_loss(clip: int | None, lam: float | None) -> Any:
        assert isinstance(d, (CRDConfig, RichKDConfig))
        return build_crd_loss(
            student_dim=student_dim,
            teacher_dim=teacher_dim,
            clip_dim=clip,
            feature_lambda=lam,
            embed_dim=d.embed_dim,
            n_data=len(train),
            labels=train.labels,
            nce_k=d.nce_k,
            nce_t=d.nce_t,
            momentum=d.momentum,
        )

    if isinstance(d, CRDConfig):
        return CRD(
            ce_weight=d.ce_weight,
            crd_weight=d.crd_weight,
            crd=crd_loss(None, None),
            kd_weight=d.kd_weight,
            temperature=d.temperature,
        )
    assert isinstance(d, RichKDConfig)
    crd = None
    if d.feat_weight > 0:
        # The teacher-only control fuses nothing: the contrastive target is the projected teacher feature.
        crd = crd_loss(clip_dim, cfg.feature_lambda) if cfg.fusion.use_vlm else crd_loss(None, None)
    return RichKD(
        ce_weight=d.ce_weight,
        kd_weight=d.kd_weight,
        feat_weight=d.feat_weight,
        temperature=d.temperature,
        crd=crd,
    )


def build_targets(
    cfg: RunConfig, train: ArrayDataset, run_rows: Tensor | None, device: torch.device
) -> tuple[TargetSource | None, nn.Module | None, TargetCache | None, Tensor | None]:
    """(targets, teacher, cache, cache_row_map); `train` is the whole split, `run_rows` the subset trained on.

    cache_row_map[i] is the cache row of training row i (None: the same row), so a cache of the whole split and a
    cache built for exactly the run's subset (`richkd vlm cache --limit N`) both serve a subset run.
    """
    if isinstance(cfg.distill, VanillaConfig):
        return None, None, None, None
    teacher = build_teacher(cfg, train.classes, device)
    online = OnlineTeacher(teacher)
    if not isinstance(cfg.distill, RichKDConfig):
        return online, teacher, None, None
    cache = open_cache(cfg, train, device) if cfg.fusion.use_vlm else None
    row_map = cache.cache_rows(train.labels, run_rows) if cache is not None else None
    if row_map is not None:
        row_map = row_map.to(device)
    fused = FusedTargets(
        online,
        cache,
        logit_alpha=cfg.fusion.logit_alpha,
        vlm_logit_scale=cfg.vlm.logit_scale,
        use_vlm=cfg.fusion.use_vlm,
        row_map=row_map,
    )
    return fused, teacher, cache, row_map


def build_fit(cfg: RunConfig, device: torch.device) -> tuple[FitParts, dict[str, Any]]:
    """Build everything a run needs, failing before any file is written. Returns (parts, provenance)."""
    full_train, test = load_data(cfg)
    train, row_map = subset(full_train, cfg.data.train_limit)
    test, _ = subset(test, cfg.data.test_limit)
    targets, teacher, cache, cache_row_map = build_targets(cfg, full_train, row_map, device)
    student = create_model(cfg.model.student, len(train.classes)).to(device)
    if cfg.train.sync_bn:
        dist.convert_sync_bn(student, device)  # in place; a no-op with one process
    if cfg.train.channels_last:
        student = student.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    clip_dim = cache.meta.embed_dim if cache is not None else None
    distiller = build_distiller(
        cfg,
        student_dim=int(student.feature_dim),
        teacher_dim=int(getattr(teacher, "feature_dim", 0)),
        clip_dim=clip_dim,
        train=train,
    ).to(device)
    if cfg.train.compile:
        student = torch.compile(student)  # type: ignore[assignment]
    o = cfg.optim
    params = [p for p in list(student.parameters()) + list(distiller.parameters()) if p.requires_grad]
    optimizer = build_optimizer(
        params,
        lr=o.lr,
        momentum=o.momentum,
        weight_decay=o.weight_decay,
        nesterov=o.nesterov,
        foreach=o.foreach,
        fused=o.fused,
    )
    schedule = Schedule(
        epochs=cfg.train.epochs,
        base_lr=o.lr,
        schedule=o.schedule,
        milestones=o.milestones,
        gamma=o.gamma,
        warmup_epochs=o.warmup_epochs,
    )
    matched = cache is not None and cfg.vlm.view_mode == "matched"
    batches = BatchMaker(
        DeviceData(train, device),
        mean=train.mean,
        std=train.std,
        augment=cfg.data.augment,
        pad=cfg.data.pad,
        channels_last=cfg.train.channels_last,
        n_views=cache.n_views if matched and cache else 1,
        view_aug=cache.aug_params if matched and cache else None,
        row_map=cache_row_map,
    )
    t = cfg.train
    parts = FitParts(
        student=student,
        arch=cfg.model.student,
        distiller=distiller,
        targets=targets,
        optimizer=optimizer,
        schedule=schedule,
        train_batches=batches,
        test_data=DeviceData(test, device),
        test_mean=train.mean,
        test_std=train.std,
        classes=train.classes,
        batch_size=t.batch_size,
        eval_batch_size=t.eval_batch_size,
        seed=cfg.seed,
        bf16=resolve_bf16(t.bf16, device),
        channels_last=t.channels_last,
        progress=t.progress,
        eval_every=t.eval_every,
        max_steps_per_epoch=t.max_steps_per_epoch,
        stop_after=t.stop_after,
        find_unused_parameters=leaves_parameter_unused(cfg),
    )
    provenance = {
        "richkd_version": __version__,
        "git_sha": git_sha(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "bf16": resolve_bf16(cfg.train.bf16, device),
        "loss": distiller.describe(),
        "train_rows": len(train),
        "test_rows": len(test),
        "dataset_source": full_train.source,
        "target_cache": dataclasses.asdict(cache.meta) if cache is not None else None,
    }
    return parts, provenance


def resolve_bf16(setting: bool | str, device: torch.device) -> bool:
    """train.bf16=auto: bf16 only where it is faster (on an AMD EPYC without AMX a resnet56 step took 9x longer)."""
    return bf16_is_fast(device) if setting == "auto" else bool(setting)


def leaves_parameter_unused(cfg: RunConfig) -> bool:
    """Feature fusion with lambda = 0 or 1 never evaluates one of its projections (DDP must be told)."""
    d = cfg.distill
    fuses = isinstance(d, RichKDConfig) and d.feat_weight > 0 and cfg.fusion.use_vlm
    return fuses and cfg.feature_lambda in (0.0, 1.0)


def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None

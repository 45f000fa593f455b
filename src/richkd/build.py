"""Composition root: RunConfig -> data, student, teacher targets, distiller, optimizer. The only reader of cfg."""

from __future__ import annotations

import dataclasses
import logging
import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from richkd import __version__
from richkd.caches.target import TargetCache
from richkd.caches.teacher import CachedTeacher, TeacherCache
from richkd.config import (
    CRDConfig,
    DISTConfig,
    DKDConfig,
    KDConfig,
    MLKDConfig,
    RichKDConfig,
    RunConfig,
    VanillaConfig,
    config_to_dict,
)
from richkd.data import ArrayDataset, FolderOptions, default_cache_dir, load_dataset
from richkd.data.folder import folder_report
from richkd.data.loader import DeviceData
from richkd.data.stream import StreamDataset
from richkd.data.stream.splits import StreamSplit, open_stream_splits
from richkd.data.subset import SUBSET_RULE, check_recorded_subset, rows_sha256, subset
from richkd.data.valsplit import ValSplit, split_validation
from richkd.distill import (
    CRD,
    DIST,
    DKD,
    KD,
    MLKD,
    CurriculumTemperature,
    Distiller,
    RichKD,
    Vanilla,
    build_crd_loss,
)
from richkd.distill.features import FEATURE_TERMS, FeatureOptions, WithFeature, build_feature_term
from richkd.engine import dist
from richkd.engine.batches import BatchMaker, StreamBatches, StreamEval
from richkd.engine.device import bf16_is_fast
from richkd.engine.io import file_sha256
from richkd.engine.optim import build_optimizer, milestones_beyond, resolve_milestones
from richkd.engine.trainer import FitParts, Schedule
from richkd.errors import RichKDError
from richkd.models import FeatureShapes, create_model, feature_shapes
from richkd.models.external import NativeInput, load_init_weights
from richkd.teachers.cnn import load_frozen_teacher
from richkd.teachers.frozen import FusedTargets, OnlineTeacher, TargetSource
from richkd.tracking import (
    CsvLogger,
    Logger,
    MlflowLogger,
    MlflowOptions,
    TensorBoardLogger,
    Tracker,
    WandbLogger,
    WandbOptions,
)
from richkd.tracking.mlflow_run import MLFLOW_ARTIFACTS, default_uri

log = logging.getLogger(__name__)

Split = ArrayDataset | StreamSplit  # in memory, or streamed from disk (data.name: imagenet)


def folder_options(cfg: RunConfig) -> FolderOptions | None:
    """The image-folder policy of the run's data.* keys (None for the other datasets)."""
    d = cfg.data
    if d.name != "imagefolder":
        return None
    return FolderOptions(
        image_size=d.image_size, resize=d.resize, split_fraction=d.split_fraction, split_seed=d.split_seed,
        skip_bad=d.skip_bad, class_names=d.class_names,
    )


def load_data(cfg: RunConfig) -> tuple[ArrayDataset, ArrayDataset]:
    d = cfg.data
    cache_dir = Path(d.cache_dir) if d.cache_dir else None
    kw: dict[str, Any] = {"download": d.download, "cache_dir": cache_dir, "test_split": d.test_split}
    folder = folder_options(cfg)
    if folder is None and (d.skip_bad or d.split_fraction is not None or d.class_names or d.image_size is not None):
        raise RichKDError(
            f"data.image_size, split_fraction, skip_bad and class_names are for data.name=imagefolder, not {d.name}"
        )
    train = load_dataset(d.name, d.root, d.train_split, folder=folder, **kw)
    test = load_dataset(d.name, d.root, d.test_split, folder=folder, **kw)
    if train.classes != test.classes:
        raise RichKDError(f"train and test splits of {d.name} have different classes")
    return train, test


def folder_record(cfg: RunConfig) -> dict[str, Any] | None:
    """run.json's account of an image folder: size and resize policy, split rule, unreadable files skipped."""
    folder, d = folder_options(cfg), cfg.data
    if folder is None or d.root is None:
        return None
    cache_dir = Path(d.cache_dir).expanduser() if d.cache_dir else default_cache_dir()
    return folder_report(d.root, cache_dir=cache_dir, options=folder, test_split=d.test_split)


def build_teacher(
    cfg: RunConfig, classes: tuple[str, ...], device: torch.device, *,
    student_input: NativeInput | None = None, allow_code: bool = False,
) -> nn.Module:
    """The frozen teacher; fed with its own input size and normalisation (recorded in its model file, or a bare
    timm/torchvision/Lite0 network's pretrained convention) when they differ from the student's `student_input`."""
    assert cfg.model.teacher is not None and cfg.model.teacher_checkpoint is not None
    teacher = load_frozen_teacher(cfg.model.teacher, cfg.model.teacher_checkpoint, classes, device,
                                  student_input=student_input, allow_code=allow_code)
    if cfg.train.channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if cfg.train.compile:  # frozen forward: compiling fuses its BatchNorm/ReLU/add into the convolutions
        teacher = torch.compile(teacher)  # type: ignore[assignment]
    return teacher


def open_cache(cfg: RunConfig, train: Split, device: torch.device) -> TargetCache:
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
    if isinstance(train, StreamSplit):  # ImageNet: 1.28 M x 1000 cosines stay memory-mapped, read per batch
        return cache
    if cache.fits(device):
        cache.to_device(device)
    else:
        log.warning("target cache %s (%.1f GiB) exceeds half the free memory: serving it from disk",
                    cfg.vlm.cache, cache.meta.nbytes / 2**30)
    return cache


def build_distiller(
    cfg: RunConfig,
    *,
    student_dim: int,
    teacher_dim: int,
    clip_dim: int | None,
    train: Split,
    shapes: tuple[FeatureShapes, FeatureShapes] | None = None,
) -> Distiller:
    """The method's loss, plus `feature.method`'s term when one is set (its connectors sized from `shapes`, the
    student's and the teacher's shape tables)."""
    logit = build_logit_distiller(cfg, student_dim=student_dim, teacher_dim=teacher_dim, clip_dim=clip_dim, train=train)
    f = cfg.feature
    if f.method is None:
        return logit
    if shapes is None:
        raise ValueError("feature.method needs the student's and the teacher's shape tables")
    options = FeatureOptions(
        hint_layer=f.hint_layer,
        at_p=f.at_p,
        rkd_distance_weight=f.rkd_distance_weight,
        rkd_angle_weight=f.rkd_angle_weight,
        vid_init_pred_var=f.vid_init_pred_var,
        kdsvd_k=f.kdsvd_k,
        reviewkd_warmup=f.reviewkd_warmup_epochs / cfg.train.epochs,  # a fraction of training, as DKD's warm-up
        reviewkd_student_preact=f.reviewkd_student_preact,
        reviewkd_max_mid_channel=f.reviewkd_max_mid_channel,
    )
    term = build_feature_term(f.method, shapes[0], shapes[1], options)
    weight = FEATURE_TERMS.get(f.method).default_weight if f.weight is None else f.weight
    return WithFeature(logit, term, weight=weight, key=f.method)


def build_logit_distiller(
    cfg: RunConfig, *, student_dim: int, teacher_dim: int, clip_dim: int | None, train: Split
) -> Distiller:
    """The `distill` section's loss. Fusion is the teacher side's business: logits arrive fused from the target
    source, and a feature term's teacher embedding is a FeatureFusion when fusion.mode=vlm (clip_dim given). With
    distill.ctkd, the logit term's temperature is CTKD's learnable one."""
    distiller = _build_loss(cfg, student_dim=student_dim, teacher_dim=teacher_dim, clip_dim=clip_dim, train=train)
    d = cfg.distill
    if isinstance(d, (KDConfig, DKDConfig, RichKDConfig)) and d.ctkd:
        distiller.set_curriculum_temperature(CurriculumTemperature(
            t_start=d.ctkd_t_start, t_range=d.ctkd_t_range, period=d.ctkd_loops / cfg.train.epochs,
        ))
    return distiller


def _build_loss(
    cfg: RunConfig, *, student_dim: int, teacher_dim: int, clip_dim: int | None, train: Split
) -> Distiller:
    d = cfg.distill
    if isinstance(d, MLKDConfig):
        return MLKD(
            ce_weight=d.ce_weight, kd_weight=d.kd_weight, temperature=d.temperature, standardize=d.logit_standardize
        )
    if isinstance(d, DISTConfig):
        return DIST(
            ce_weight=d.ce_weight, dist_weight=d.dist_weight, beta=d.beta, gamma=d.gamma, temperature=d.temperature,
            standardize=d.logit_standardize,
        )
    if isinstance(d, VanillaConfig):
        return Vanilla(ce_weight=d.ce_weight)
    if isinstance(d, KDConfig):
        return KD(
            temperature=d.temperature,
            kd_weight=d.kd_weight,
            ce_weight=d.ce_weight,
            standardize=d.logit_standardize,
        )
    if isinstance(d, DKDConfig):
        warmup = d.warmup_epochs / cfg.train.epochs
        if warmup > 1:
            log.warning("distill.warmup_epochs=%g exceeds train.epochs=%d: DKD's loss never reaches full weight in "
                        "this run (the reference ramps over 20 of 240 epochs; scale it with the run)",
                        d.warmup_epochs, cfg.train.epochs)
        return DKD(
            ce_weight=d.ce_weight,
            alpha=d.alpha,
            beta=d.beta,
            temperature=d.temperature,
            warmup=warmup,
            standardize=d.logit_standardize,
        )
    assert isinstance(d, (CRDConfig, RichKDConfig))
    feature_weight = d.crd_weight if isinstance(d, CRDConfig) else d.feat_weight
    crd = None
    if feature_weight > 0:
        fused = cfg.fusion.mode == "vlm"  # the control fuses nothing: the target is the projected teacher feature
        crd = build_crd_loss(
            student_dim=student_dim,
            teacher_dim=teacher_dim,
            clip_dim=clip_dim if fused else None,
            feature_lambda=cfg.feature_lambda if fused else None,
            embed_dim=d.embed_dim,
            n_data=len(train),
            labels=train.labels,
            nce_k=d.nce_k,
            nce_t=d.nce_t,
            momentum=d.momentum,
            distinct=d.negatives == "distinct",
        )
    if isinstance(d, CRDConfig):
        return CRD(
            ce_weight=d.ce_weight,
            crd_weight=d.crd_weight,
            crd=crd,
            kd_weight=d.kd_weight,
            temperature=d.temperature,
            standardize=d.logit_standardize,
        )
    return RichKD(
        ce_weight=d.ce_weight,
        kd_weight=d.kd_weight,
        feat_weight=d.feat_weight,
        temperature=d.temperature,
        crd=crd,
        standardize=d.logit_standardize,
    )


def open_teacher_cache(
    cfg: RunConfig, train: ArrayDataset, run_rows: Tensor | None, device: torch.device
) -> CachedTeacher:
    """The teacher cache of model.teacher_cache, checked against the run's teacher, data, crops and normalisation."""
    assert cfg.model.teacher_cache and cfg.model.teacher and cfg.model.teacher_checkpoint
    cache = TeacherCache.open(cfg.model.teacher_cache)
    cache.validate(
        arch=cfg.model.teacher, checkpoint_sha256=file_sha256(Path(cfg.model.teacher_checkpoint)),
        dataset=train.name, split=train.split, n_rows=len(train), class_names=train.classes, pad=cfg.data.pad,
        mean=train.mean, std=train.std,
    )
    if cfg.vlm.cache and cfg.fusion.mode == "vlm" and cfg.vlm.view_mode == "matched" and not is_exact(cfg):
        raise RichKDError(
            "model.teacher_cache serves the crop/flip the student drew, which a vlm cache of random views cannot: "
            "rebuild the vlm cache with `richkd vlm cache --views all` or use vlm.view_mode=plain"
        )
    row_map = cache.cache_rows(train.labels, run_rows)
    if cache.fits(device):
        cache.to_device(device)
    elif device.type == "cuda":
        raise RichKDError(
            f"teacher cache {cfg.model.teacher_cache} ({cache.meta.nbytes / 2**30:.1f} GiB) does not fit in free GPU "
            "memory: build it for a subset (--limit) or run without model.teacher_cache"
        )
    else:
        log.warning("teacher cache %s (%.1f GiB) exceeds half the free memory: serving it from disk",
                    cfg.model.teacher_cache, cache.meta.nbytes / 2**30)
    return CachedTeacher(cache, None if row_map is None else row_map.to(device))


def is_exact(cfg: RunConfig) -> bool:
    """Whether vlm.cache holds every view of the exact crop/flip family (`richkd vlm cache --views all`)."""
    if not cfg.vlm.cache:
        return False
    from richkd.caches.target import read_meta

    return read_meta(cfg.vlm.cache).is_exact


def build_targets(
    cfg: RunConfig, train: Split, run_rows: Tensor | None, device: torch.device, *, allow_code: bool = False
) -> tuple[TargetSource | None, nn.Module | CachedTeacher | None, TargetCache | None, Tensor | None]:
    """(targets, teacher, cache, cache_row_map); `train` is the whole split, `run_rows` the subset trained on.

    cache_row_map[i] is the cache row of training row i (None: the same row), so a cache of the whole split and a
    cache built for exactly the run's subset (`richkd vlm cache --limit N`) both serve a subset run. The teacher is
    run online, or looked up in model.teacher_cache (then batches carry exact view ids, see `exact_views`).
    """
    if isinstance(cfg.distill, VanillaConfig) and cfg.feature.method is None:
        return None, None, None, None
    teacher: nn.Module | CachedTeacher
    source: TargetSource
    if cfg.model.teacher_cache:
        assert isinstance(train, ArrayDataset)  # config.validate refuses a teacher cache on streamed data
        teacher = source = open_teacher_cache(cfg, train, run_rows, device)
    else:
        student_input = None
        if isinstance(train, ArrayDataset):
            height, width = (int(v) for v in train.images.shape[-2:])
            student_input = NativeInput((height, width), train.mean, train.std)
        teacher = build_teacher(cfg, train.classes, device, student_input=student_input, allow_code=allow_code)
        source = OnlineTeacher(teacher)
    mode = cfg.fusion.mode
    if mode == "off":
        return source, teacher, None, None
    cache = open_cache(cfg, train, device) if mode == "vlm" else None
    row_map = cache.cache_rows(train.labels, run_rows) if cache is not None else None
    if row_map is not None:
        row_map = row_map.to(device)
    vlm_view = None
    if cache is not None and cfg.vlm.view_mode == "plain":
        vlm_view = cache.meta.plain_view
    fused = FusedTargets(
        source,
        cache,
        logit_alpha=cfg.fusion.logit_alpha,
        vlm_logit_scale=cfg.vlm.logit_scale,
        use_vlm=mode == "vlm",
        row_map=row_map,
        vlm_view=vlm_view,
    )
    return fused, teacher, cache, row_map


def exact_views(cfg: RunConfig, cache: TargetCache | None) -> bool:
    """Batches carry exact view ids (richkd.data.views) when a teacher cache or an all-views vlm cache serves them."""
    matched_exact = cache is not None and cfg.vlm.view_mode == "matched" and is_exact(cfg)
    return (bool(cfg.model.teacher_cache) and not isinstance(cfg.distill, VanillaConfig)) or matched_exact


def build_fit(
    cfg: RunConfig, device: torch.device, previous: Mapping[str, Any] | None = None, *, allow_code: bool = False
) -> tuple[FitParts, dict[str, Any]]:
    """Build everything a run needs, failing before any file is written. Returns (parts, provenance).

    `previous`: the run.json of the run being resumed; refused when its subsets are other rows than today's.
    `allow_code`: the explicit opt-in that a `module:PKG.MOD:FACTORY` model name may import and run user code."""
    tracker = build_tracker(cfg)
    tracker.check()  # a tracker that cannot start fails first: before the data are read, long before any epoch
    streamed = cfg.data.name == STREAMED_DATASET
    full_train: Split
    subsets: dict[str, Any] = {}  # streamed data are never subset
    if streamed:
        full_train, stream_test = open_stream_splits(cfg.data.root, cfg.data.train_split, cfg.data.test_split)
        train: Split = full_train
        row_map = None
    else:
        full_train, full_test = load_data(cfg)
        train, row_map = subset(full_train, cfg.data.train_limit)
        test, test_rows = subset(full_test, cfg.data.test_limit)
        subsets = subset_provenance(row_map, test_rows)
        if previous is not None:
            check_resumed_subsets(cfg, previous, full_train.labels, full_test.labels)
    val: ArrayDataset | None = None
    val_split: ValSplit | None = None
    if cfg.data.val_split > 0:  # config.validate refuses it on streamed data
        assert isinstance(train, ArrayDataset)
        train, val, val_split = split_validation(train, row_map, cfg.data.val_split, cfg.seed)
        row_map = val_split.train_ids  # caches and memory banks stay keyed by the full split's row ids
    targets, teacher, cache, cache_row_map = build_targets(cfg, full_train, row_map, device, allow_code=allow_code)
    student = create_model(cfg.model.student, len(train.classes), allow_code=allow_code)
    student_init = None
    if cfg.model.student_init != "random":
        student_init = load_init_weights(student, cfg.model.student_init, arch=cfg.model.student)
        if cfg.model.student_init != "pretrained":
            student_init += f"; sha256 {file_sha256(Path(cfg.model.student_init).expanduser())}"
    student = student.to(device)
    if cfg.train.sync_bn:
        dist.convert_sync_bn(student, device)  # in place; a no-op with one process
    if cfg.train.channels_last:
        student = student.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    clip_dim = cache.meta.embed_dim if cache is not None else None
    shapes = None
    if cfg.feature.method is not None:
        assert isinstance(teacher, nn.Module)  # config.validate refuses a teacher cache with a feature method
        size = cfg.data.stream_size if streamed else int(train.images.shape[-1])  # type: ignore[union-attr]
        shapes = (feature_shapes(student, size), feature_shapes(teacher, size))
        for role, name, table in (("student", cfg.model.student, shapes[0]), ("teacher", cfg.model.teacher, shapes[1])):
            if not table.stages:
                raise RichKDError(f"feature.method={cfg.feature.method} reads stage maps, which the {role} {name} "
                                  "does not give: use a logit method (kd, dkd, ...) or a model with stages")
    distiller = build_distiller(
        cfg,
        student_dim=int(student.feature_dim),
        teacher_dim=int(getattr(teacher, "feature_dim", 0)),
        clip_dim=clip_dim,
        train=train,
        shapes=shapes,
    ).to(device)
    if cfg.train.compile:
        student = torch.compile(student)  # type: ignore[assignment]
    o = cfg.optim
    lr = effective_lr(cfg)
    params = [p for p in list(student.parameters()) + list(distiller.parameters()) if p.requires_grad]
    optimizer = build_optimizer(
        params,
        lr=lr,
        momentum=o.momentum,
        weight_decay=o.weight_decay,
        nesterov=o.nesterov,
        foreach=o.foreach,
        fused=o.fused,
    )
    milestones = resolve_milestones(o.milestones, cfg.train.epochs)
    schedule_note = describe_schedule(o.schedule, milestones, cfg.train.epochs)
    schedule = Schedule(
        epochs=cfg.train.epochs,
        base_lr=lr,
        schedule=o.schedule,
        milestones=milestones,
        gamma=o.gamma,
        warmup_epochs=o.warmup_epochs,
    )
    batches: BatchMaker | StreamBatches
    test_data: DeviceData | StreamEval
    if streamed:
        assert isinstance(train, StreamSplit)
        batches, test_data = build_stream_data(cfg, train, stream_test, device)
    else:
        assert isinstance(train, ArrayDataset)
        exact = exact_views(cfg, cache)
        matched = cache is not None and cfg.vlm.view_mode == "matched" and not exact
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
            exact_views=exact,
            strong_view=distiller.needs_strong_view,
        )
        test_data = DeviceData(test, device)
    t = cfg.train
    val_data = DeviceData(val, device) if val is not None else None
    val_record = val_split.record() if val_split is not None else None
    parts = FitParts(
        student=student,
        arch=cfg.model.student,
        distiller=distiller,
        targets=targets,
        optimizer=optimizer,
        schedule=schedule,
        train_batches=batches,
        test_data=test_data,
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
        val_data=val_data,
        val_rows_sha256=val_record["val_rows_sha256"] if val_record is not None else None,
        tracker=tracker,
        log_model=t.log_model,
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
        "teacher_targets": describe_targets(cfg, distiller),
        "train_rows": len(train),
        "test_rows": len(test_data),
        "best_selected_on": "val" if val_record is not None else "test",
        "val_split": val_record,
        "dataset_source": describe_source(full_train),
        "image_folder": folder_record(cfg),
        "lr": lr,
        "lr_schedule": schedule_note,
        "student_init": student_init,
        **subsets,
        "target_cache": dataclasses.asdict(cache.meta) if cache is not None else None,
        "teacher_cache": dataclasses.asdict(teacher.cache.meta) if isinstance(teacher, CachedTeacher) else None,
    }
    return parts, provenance


def flatten_config(cfg: RunConfig) -> dict[str, Any]:
    """The resolved config as dotted keys (train.epochs: 240): what trackers record as the run's params."""
    flat: dict[str, Any] = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, Mapping):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(config_to_dict(cfg), "")
    return flat


def build_tracker(cfg: RunConfig) -> Tracker:
    """The loggers of train.loggers (rank 0 only: under DDP the other ranks log nothing). metrics.jsonl is the
    trainer's own record, written whatever the list says; `jsonl` adds no logger."""
    run_dir = Path(cfg.out_dir)
    if not dist.is_main():
        return Tracker(run_dir, [])
    t = cfg.train
    config = flatten_config(cfg)
    group = run_dir.resolve().parent.name or "richkd"  # experiment / project: the folder the run dirs share
    name = run_dir.resolve().name or "run"
    loggers: list[Logger] = []
    for kind in t.loggers:
        if kind == "csv":
            loggers.append(CsvLogger(run_dir))
        elif kind == "tensorboard":
            loggers.append(TensorBoardLogger(run_dir, config))
        elif kind == "mlflow":
            local = t.mlflow_uri is None
            options = MlflowOptions(
                tracking_uri=default_uri(run_dir) if local else str(t.mlflow_uri),
                experiment=t.mlflow_experiment or group,
                run_name=name,
                artifact_dir=run_dir / MLFLOW_ARTIFACTS if local else None,
            )
            loggers.append(MlflowLogger(run_dir, config, options))
        elif kind == "wandb":
            options_w = WandbOptions(project=t.wandb_project or group, run_name=name, mode=t.wandb_mode,
                                     entity=t.wandb_entity)
            loggers.append(WandbLogger(run_dir, config, options_w))
    return Tracker(run_dir, loggers)


STREAMED_DATASET = "imagenet"  # data.name read from disk batch by batch (data/stream), never held in memory


def effective_lr(cfg: RunConfig) -> float:
    """optim.lr, scaled linearly with the global batch when optim.lr_reference_batch says what it is per."""
    ref = cfg.optim.lr_reference_batch
    return cfg.optim.lr if ref is None else cfg.optim.lr * cfg.train.batch_size / ref


def build_stream_data(
    cfg: RunConfig, train: StreamSplit, test: StreamSplit, device: torch.device
) -> tuple[StreamBatches, StreamEval]:
    """This rank's streamed training batches and its share of the evaluation split (each rank reads its rows)."""
    d, t = cfg.data, cfg.train
    rank, world = dist.rank(), dist.world_size()
    if t.batch_size % world:
        raise RichKDError(f"train.batch_size {t.batch_size} (the global batch) is not divisible by {world} processes")
    sizes = {"image_size": d.stream_size, "resize_size": d.resize_size}
    train_data = StreamDataset(train.source, train=True, rank=rank, world_size=world, seed=cfg.seed, **sizes)
    test_data = StreamDataset(test.source, train=False, rank=rank, world_size=world, seed=cfg.seed, **sizes)
    batches = StreamBatches(
        train_data, batch_size=t.batch_size // world, workers=d.workers, device=device,
        channels_last=t.channels_last, world_size=world,
    )
    evaluation = StreamEval(
        test_data, batch_size=t.eval_batch_size, workers=d.workers, device=device,
        input_size=(d.stream_size, d.stream_size),
    )
    return batches, evaluation


def describe_source(split: Split) -> str:
    if isinstance(split, StreamSplit):
        return f"{split.kind} {split.source.root}"
    return split.source


def resolve_bf16(setting: bool | str, device: torch.device) -> bool:
    """train.bf16=auto: bf16 only where it is faster (on an AMD EPYC without AMX a resnet56 step took 9x longer)."""
    return bf16_is_fast(device) if setting == "auto" else bool(setting)


def describe_schedule(schedule: str, milestones: tuple[int, ...], epochs: int) -> str:
    """The learning-rate schedule in one line for run.json; warns (once, before training) when a step milestone lies
    at or beyond the last epoch, so a shortened run whose rate never decays says so instead of passing silently."""
    if schedule == "cosine":
        return f"cosine to 0 over {epochs} epochs"
    note = f"step: lr x gamma after epochs {', '.join(map(str, milestones)) or '(none)'} of {epochs}"
    late = milestones_beyond(milestones, epochs)
    if late:
        note += (f"; milestone(s) {', '.join(map(str, late))} lie beyond the run, so that decay never happens "
                 "(give optim.milestones as fractions of train.epochs, e.g. [0.625, 0.75, 0.875])")
        log.warning("%s", note)
    return note


def subset_provenance(train_rows: Tensor | None, test_rows: Tensor | None) -> dict[str, Any]:
    """run.json's record of which rows data.train_limit / data.test_limit picked (None: the whole split)."""
    return {
        "subset_rule": SUBSET_RULE,
        "train_rows_sha256": None if train_rows is None else rows_sha256(train_rows),
        "test_rows_sha256": None if test_rows is None else rows_sha256(test_rows),
    }


def check_resumed_subsets(
    cfg: RunConfig, previous: Mapping[str, Any], train_labels: Tensor, test_labels: Tensor
) -> None:
    """A resumed run must keep training and testing on the rows it started with (see check_recorded_subset)."""
    where = f"--resume: {cfg.out_dir}"
    rule = previous.get("subset_rule")
    check_recorded_subset(where, "data.train_limit", train_labels, cfg.data.train_limit, rule=rule,
                          sha256=previous.get("train_rows_sha256"))
    check_recorded_subset(where, "data.test_limit", test_labels, cfg.data.test_limit, rule=rule,
                          sha256=previous.get("test_rows_sha256"))


def describe_targets(cfg: RunConfig, distiller: Distiller) -> str | None:
    """What the student is distilled from, in one line: exactly what was fused, and where (provenance)."""
    if not distiller.needs_teacher:
        return None
    alpha, mode = cfg.fusion.logit_alpha, cfg.fusion.mode
    if mode == "off":
        logits, features = "z_T", "f_T"
    elif mode == "control":
        logits, features = f"{alpha}*z_T (control: no vision-language term)", "f_T (control)"
    else:
        s = cfg.vlm.logit_scale
        logits = f"z_F = {alpha}*z_T + {round(1 - alpha, 6)}*{s}*z_C (cache {cfg.vlm.cache}, views {cfg.vlm.view_mode})"
        features = f"f_F = normalize({cfg.feature_lambda}*P_T f_T + {round(1 - cfg.feature_lambda, 6)}*P_C f_C)"
    logit = distiller.base if isinstance(distiller, WithFeature) else distiller
    if logit.needs_strong_view and mode == "vlm":
        logits += "; strong view: the teacher on it, fused with the same row's plain-view z_C (no cache entry)"
    parts = []
    if logit.needs_teacher:
        has_features = getattr(logit, "crd", None) is not None
        parts.append(f"logits: {logits}" + (f"; features: {features}" if has_features else ""))
    if isinstance(distiller, WithFeature):
        parts.append(f"{distiller.term.label}: the teacher's own features (never fused)")
    return "; ".join(parts)


def leaves_parameter_unused(cfg: RunConfig) -> bool:
    """Feature fusion with lambda = 0 or 1 never evaluates one of its projections (DDP must be told)."""
    d = cfg.distill
    weight = d.feat_weight if isinstance(d, RichKDConfig) else d.crd_weight if isinstance(d, CRDConfig) else 0.0
    return weight > 0 and cfg.fusion.mode == "vlm" and cfg.feature_lambda in (0.0, 1.0)


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

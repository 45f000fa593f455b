"""Typed run configuration: frozen dataclasses, loaded from composed YAML layers + `key=value` overrides,
validated once.

This module and `richkd.recipes` (the layers) are the only readers of YAML. Everything below `build.py` takes
plain values.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from richkd.errors import RichKDError

Method = Literal["vanilla", "kd", "dkd", "crd", "richkd", "mlkd", "dist"]
FeatureMethod = Literal["fitnet", "at", "nst", "pkt", "sp", "rkd", "vid", "kdsvd", "ofd", "reviewkd"]
SEED_MAX = 2**63 - 1  # as richkd.cli.args.SEED_MAX: torch seeds are 64-bit, with headroom for small offsets
# The distill.* keys that weight a loss term (DKD's alpha/beta weight TCKD/NCKD, DIST's beta/gamma its inter/intra
# relations); a method trains when one is > 0 (or when a feature term is added).
LOSS_WEIGHTS = ("ce_weight", "kd_weight", "feat_weight", "crd_weight", "alpha", "beta", "gamma", "dist_weight")


@dataclass(frozen=True)
class DataConfig:
    name: str = "cifar100"  # cifar10 | cifar100 | imagefolder | fashion_mnist | imagenet (streamed from disk)
    root: str | None = None  # dataset root (folder or archive); None = the dataset's default location
    download: bool = False  # fetch the official archive when missing (needs internet)
    cache_dir: str | None = None  # where decoded image-folder arrays are kept
    train_split: str = "train"  # split names: folders of an image folder, or train/test
    test_split: str = "test"  # evaluated after every train.eval_every epochs
    train_limit: int | None = None  # keep a stratified subset of this many training rows (reduced-scale runs)
    test_limit: int | None = None  # evaluate on a stratified subset of this many test rows
    val_split: float = 0.0  # hold out this seeded (run seed), stratified fraction of the training rows (after
    # train_limit) and choose the best epoch on it instead of on the test set; 0 = off (reference protocol)
    augment: bool = True  # random crop (pad 4) + horizontal flip on the training set
    pad: int = 4  # random-crop padding in pixels
    workers: int = 4  # imagenet: decode/augment processes per training process (0 = in-process); data.root
    # holds <train_split>/ and <test_split>/, each <wnid>/*.JPEG folders or *.tar shards
    image_size: int | None = None  # imagefolder: resize every image to this square side (None: all images must
    # share one size, kept as is); imagenet: the RandomResizedCrop / centre-crop size (None: the protocol's 224)
    resize_size: int = 256  # imagenet evaluation: shorter side resized to this, then the centre image_size crop
    resize: Literal["shorter", "squash"] = "shorter"  # imagefolder with image_size: shorter side to image_size
    # then a centre crop, or squash the whole image to image_size x image_size (aspect ratio not kept)
    split_fraction: float | None = None  # imagefolder without a <test_split>/ folder: hold out this seeded,
    # stratified fraction of train/ (or of a folder of class folders) as the test split
    split_seed: int = 0  # seed of that hold-out (not the run seed: eval and caches rebuild the same rows)
    skip_bad: bool = False  # imagefolder: use the decodable images instead of refusing unreadable files
    class_names: str | None = None  # imagefolder: TSV/CSV or YAML file, folder name -> display name (prompts,
    # reports); read as data, never executed

    @property
    def stream_size(self) -> int:
        """imagenet's crop side: data.image_size, or the protocol's 224."""
        return self.image_size if self.image_size is not None else 224


@dataclass(frozen=True)
class ModelConfig:
    student: str = "resnet8x4"  # zoo name of the student (`richkd models` lists them), or timm:NAME,
    # torchvision:NAME, efficientnet_lite0 (docs/own_models.md)
    teacher: str | None = None  # model name of the frozen teacher (as model.student)
    teacher_checkpoint: str | None = None  # weights file written by `richkd train` (model_last.pt) or mdistiller
    student_init: str = "random"  # initial weights of model.student: random | pretrained (the ImageNet weights an
    # installed package ships: efficientnet_lite0) | a local weights file (safetensors or torch state dict, loaded
    # without pickle; a classifier head of another size is replaced)
    teacher_cache: str | None = None  # `richkd teacher cache` output: look the teacher's outputs up per (row, crop,
    # flip) instead of running it (same augmentation draws; needs the same checkpoint, data, pad)


@dataclass(frozen=True)
class VLMConfig:
    cache: str | None = None  # target cache directory built by `richkd vlm cache`
    logit_scale: float = 1.0  # s in z_C = s * cos(v, w_c); reference code uses 1, standard CLIP 100
    view_mode: Literal["plain", "matched"] = "plain"  # plain = reference; matched = serve the cached view
    # whose crop/flip the student sees (needs a cache with augmented views)


FusionMode = Literal["off", "vlm", "control"]
LoggerName = Literal["jsonl", "csv", "tensorboard", "mlflow", "wandb"]  # train.loggers (richkd.tracking)


@dataclass(frozen=True)
class FusionConfig:
    mode: FusionMode = "off"  # teacher side of any distiller: off = the teacher; vlm = fused with vlm.cache
    # (z_F for logits, f_F for a feature term); control = alpha * z_T and teacher-only features (no VLM term)
    logit_alpha: float = 0.7  # alpha in z_F = alpha * z_T + (1 - alpha) * s * z_C
    feature_lambda: float | None = None  # lambda of feature fusion; None = logit_alpha (reference ties them)


@dataclass(frozen=True)
class VanillaConfig:
    method: Literal["vanilla"] = "vanilla"
    ce_weight: float = 1.0  # weight of the cross-entropy on labels


@dataclass(frozen=True)
class KDConfig:
    method: Literal["kd"] = "kd"
    ce_weight: float = 0.1  # mdistiller's CIFAR weights: 0.1 CE + 0.9 KD
    kd_weight: float = 0.9  # weight of T^2 * KL(teacher || student)
    temperature: float = 4.0  # T of the softened softmax (the base temperature under logit_standardize)
    logit_standardize: bool = False  # z-score student and teacher logits before T (Sun et al., CVPR 2024)
    ctkd: bool = False  # learn the logit term's T with CTKD's gradient-reversal curriculum (Li et al., AAAI 2023);
    # T = ctkd_t_start + ctkd_t_range * sigmoid(theta), logged per epoch; distill.temperature is then unused
    ctkd_t_start: float = 1.0  # CTKD: lowest temperature (reference 1)
    ctkd_t_range: float = 20.0  # CTKD: temperature range above ctkd_t_start (reference 20)
    ctkd_loops: float = 10.0  # CTKD: epochs over which the reversal strength ramps 0 -> 1 (cosine; reference 10)


@dataclass(frozen=True)
class DKDConfig:
    method: Literal["dkd"] = "dkd"
    ce_weight: float = 1.0  # weight of the cross-entropy on labels
    alpha: float = 1.0  # weight of TCKD (target-class KD), Zhao et al. CVPR 2022
    beta: float = 8.0  # weight of NCKD (non-target-class KD); per pair: `richkd recipes`
    temperature: float = 4.0  # T of the softened softmax (the base temperature under logit_standardize)
    warmup_epochs: float = 20.0  # DKD's loss ramps up linearly over these epochs
    logit_standardize: bool = False  # z-score student and teacher logits before T (Sun et al., CVPR 2024)
    ctkd: bool = False  # learn the logit term's T with CTKD's gradient-reversal curriculum (Li et al., AAAI 2023);
    # T = ctkd_t_start + ctkd_t_range * sigmoid(theta), logged per epoch; distill.temperature is then unused
    ctkd_t_start: float = 1.0  # CTKD: lowest temperature (reference 1)
    ctkd_t_range: float = 20.0  # CTKD: temperature range above ctkd_t_start (reference 20)
    ctkd_loops: float = 10.0  # CTKD: epochs over which the reversal strength ramps 0 -> 1 (cosine; reference 10)


@dataclass(frozen=True)
class CRDConfig:
    method: Literal["crd"] = "crd"
    ce_weight: float = 1.0  # weight of the cross-entropy on labels
    crd_weight: float = 0.8  # weight of the contrastive (CRD) loss
    kd_weight: float = 0.0  # optional KD term beside CRD (0 = CRD alone)
    temperature: float = 4.0  # T of the softened softmax
    logit_standardize: bool = False  # z-score the KD term's logits before T (Sun et al., CVPR 2024)
    embed_dim: int = 128  # width of the contrastive embedding
    nce_k: int = 16384  # negatives per sample (from other classes)
    nce_t: float = 0.07  # NCE temperature
    momentum: float = 0.5  # memory-bank momentum
    negatives: Literal["distinct", "replacement"] = "distinct"  # K distinct rows (reference) or drawn with
    # replacement (cheaper at ImageNet scale, where duplicates are rare)


@dataclass(frozen=True)
class RichKDConfig:
    method: Literal["richkd"] = "richkd"
    ce_weight: float = 1.0  # weight of the cross-entropy on labels
    kd_weight: float = 3.0  # w_logit; 0 = RichKD(F)
    feat_weight: float = 0.8  # w_feat; 0 = RichKD(L)
    temperature: float = 3.0  # T of the softened softmax
    logit_standardize: bool = False  # z-score the KD term's logits before T (Sun et al., CVPR 2024)
    ctkd: bool = False  # learn the logit term's T with CTKD's gradient-reversal curriculum (Li et al., AAAI 2023);
    # T = ctkd_t_start + ctkd_t_range * sigmoid(theta), logged per epoch; distill.temperature is then unused
    ctkd_t_start: float = 1.0  # CTKD: lowest temperature (reference 1)
    ctkd_t_range: float = 20.0  # CTKD: temperature range above ctkd_t_start (reference 20)
    ctkd_loops: float = 10.0  # CTKD: epochs over which the reversal strength ramps 0 -> 1 (cosine; reference 10)
    embed_dim: int = 128  # width of the contrastive embedding
    nce_k: int = 16384  # negatives per sample (from other classes)
    nce_t: float = 0.07  # NCE temperature
    momentum: float = 0.5  # memory-bank momentum
    negatives: Literal["distinct", "replacement"] = "distinct"  # as distill.negatives of CRD


@dataclass(frozen=True)
class MLKDConfig:
    method: Literal["mlkd"] = "mlkd"
    ce_weight: float = 0.1  # weight of CE on each of the weak and strong views (mdistiller KD defaults)
    kd_weight: float = 0.9  # weight of MLKD's instance, class and batch terms (LS-KD recipe: 9 with T = 2)
    temperature: float = 4.0  # base T; MLKD adds the levels 3, 5, 2, 6 (Jin et al., CVPR 2023)
    logit_standardize: bool = False  # z-score the KD terms' logits before T (Sun et al., CVPR 2024)


@dataclass(frozen=True)
class DISTConfig:
    method: Literal["dist"] = "dist"
    ce_weight: float = 1.0  # weight of the cross-entropy on labels (DIST's CIFAR setting)
    dist_weight: float = 1.0  # weight of the DIST term
    beta: float = 2.0  # weight of the inter-class (per-sample) Pearson relation (Huang et al., NeurIPS 2022)
    gamma: float = 2.0  # weight of the intra-class (per-class over the batch) Pearson relation
    temperature: float = 4.0  # tau of softmax(z / tau) (the base temperature under logit_standardize)
    logit_standardize: bool = False  # z-score student and teacher logits before tau (Sun et al., CVPR 2024)


DistillConfig = VanillaConfig | KDConfig | DKDConfig | CRDConfig | RichKDConfig | MLKDConfig | DISTConfig
DISTILL_CONFIGS: dict[str, type] = {
    "vanilla": VanillaConfig,
    "kd": KDConfig,
    "dkd": DKDConfig,
    "crd": CRDConfig,
    "richkd": RichKDConfig,
    "mlkd": MLKDConfig,
    "dist": DISTConfig,
}


@dataclass(frozen=True)
class FeatureConfig:
    method: FeatureMethod | None = None  # a feature distiller added to distill's loss (None = none); any logit method
    weight: float | None = None  # its loss weight; None = the method's mdistiller weight (`richkd recipes`)
    hint_layer: int = 2  # fitnet: stage map index of the hint (mdistiller: 2)
    at_p: float = 2.0  # at: attention map = mean over channels of |A|^p
    rkd_distance_weight: float = 25.0  # rkd: weight of the distance term
    rkd_angle_weight: float = 50.0  # rkd: weight of the angle term
    vid_init_pred_var: float = 5.0  # vid: initial predicted variance
    kdsvd_k: int = 1  # kdsvd: teacher singular vectors kept
    reviewkd_warmup_epochs: float = 20.0  # reviewkd: linear ramp of the term over these epochs (mdistiller: 20)
    reviewkd_student_preact: bool = False  # reviewkd: fuse the student's pre-ReLU maps (mdistiller ImageNet: true)
    reviewkd_max_mid_channel: int = 512  # reviewkd: ABF width = min(this, the student's pooled width)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 0.05  # 0.01 for MobileNetV2/ShuffleNet students (reference recipe)
    momentum: float = 0.9  # SGD momentum, in [0, 1)
    weight_decay: float = 5e-4  # L2 penalty of SGD
    nesterov: bool = False  # Nesterov momentum
    schedule: Literal["step", "cosine"] = "step"  # step = lr * gamma after each milestone (reference)
    milestones: tuple[float, ...] = (0.625, 0.75, 0.875)  # lr *= gamma after each: fraction of epochs, or epoch
    gamma: float = 0.1  # lr factor at each milestone
    warmup_epochs: int = 0  # linear warm-up (0 = reference)
    foreach: bool = True  # multi-tensor SGD kernel
    fused: bool = False  # fused SGD kernel (CUDA and CPU); takes precedence over foreach
    lr_reference_batch: int | None = None  # lr is per this many images: the run uses lr * train.batch_size / this
    # (linear scaling with the global batch, Goyal et al. 2017); None = lr as given


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 240  # reference CIFAR-100 recipe
    batch_size: int = 64  # training batch (per process under torchrun)
    eval_batch_size: int = 512  # batch of the per-epoch test evaluation
    device: str = "cpu"  # cpu | cuda | cuda:N (checked before the run starts)
    bf16: bool | Literal["auto"] = False  # bfloat16 autocast; auto = on for CUDA and AMX/AVX512-BF16 CPUs only
    channels_last: bool = False  # NHWC memory format (faster convolutions on CPU with bf16 and on GPU)
    compile: bool = False  # torch.compile the student and the frozen teacher
    sync_bn: bool = False  # torchrun/DDP: BatchNorm over the global batch (parity with 1 process)
    threads: int | None = None  # torch intra-op threads (CPU); None = torch default
    eval_every: int = 1  # epochs
    progress: bool = True  # tqdm progress bar (auto-off when stderr is not a terminal)
    max_steps_per_epoch: int | None = None  # cap steps per epoch (smoke tests, benchmarks)
    stop_after: int | None = None  # end this invocation after N epochs (time-boxed jobs); finish with --resume
    loggers: tuple[LoggerName, ...] = ("jsonl",)  # experiment trackers, several at once: jsonl csv tensorboard
    # mlflow wandb (docs/tracking.md); metrics.jsonl is always written (resume and reports read it)
    log_model: bool = False  # trackers also keep the last model (model_last.pt) as an artifact (mlflow, wandb)
    mlflow_uri: str | None = None  # MLflow store; None = sqlite:///<out_dir>/mlflow.db (local, offline)
    mlflow_experiment: str | None = None  # MLflow experiment; None = the name of out_dir's parent folder
    wandb_project: str | None = None  # W&B project; None = the name of out_dir's parent folder
    wandb_entity: str | None = None  # W&B entity (team or user); None = the account's default
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"  # offline: written under out_dir/wandb,
    # nothing leaves the machine (`wandb sync` uploads it later)


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    vlm: VLMConfig = field(default_factory=VLMConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    distill: DistillConfig = field(default_factory=VanillaConfig)
    feature: FeatureConfig = field(default_factory=FeatureConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0  # seeds initialisation, shuffling and augmentation
    out_dir: str = "runs/default"  # run directory: config, checkpoints, metrics, summary

    def validate(self) -> None:
        """Cross-field checks; each failure is one line naming the key and the fix."""
        d, t, o = self.distill, self.train, self.optim
        checks: list[tuple[bool, str]] = [
            (0.0 <= self.fusion.logit_alpha <= 1.0, "fusion.logit_alpha must be in [0, 1]"),
            (
                self.fusion.feature_lambda is None or 0.0 <= self.fusion.feature_lambda <= 1.0,
                "fusion.feature_lambda must be in [0, 1]",
            ),
            (self.vlm.logit_scale > 0, "vlm.logit_scale must be > 0"),
            (t.epochs >= 1, "train.epochs must be >= 1"),
            (t.batch_size >= 1 and t.eval_batch_size >= 1, "train.batch_size must be >= 1"),
            (o.lr > 0, "optim.lr must be > 0"),
            (0.0 <= o.momentum < 1.0, "optim.momentum must be in [0, 1)"),
            (o.weight_decay >= 0, "optim.weight_decay must be >= 0"),
            (o.gamma > 0, "optim.gamma must be > 0"),
            (o.warmup_epochs >= 0, "optim.warmup_epochs must be >= 0"),
            (all(0 < m < 1 or (m >= 1 and float(m).is_integer()) for m in o.milestones),
             "optim.milestones must be fractions of train.epochs in (0, 1) or whole epochs >= 1, e.g. [0.5, 0.75] "
             f"or [150, 180, 210]; got {list(o.milestones)}"),
            (t.threads is None or 1 <= t.threads <= 4096, "train.threads must be in [1, 4096]"),
            (0 <= self.seed <= SEED_MAX, f"seed must be in [0, 2**63 - 1] (torch takes 64-bit seeds), got {self.seed}"),
            (t.eval_every >= 1, "train.eval_every must be >= 1"),
            (t.max_steps_per_epoch is None or t.max_steps_per_epoch >= 1, "train.max_steps_per_epoch must be >= 1"),
            (t.stop_after is None or t.stop_after >= 1, "train.stop_after must be >= 1"),
            (len(set(t.loggers)) == len(t.loggers), f"train.loggers names a logger twice: {list(t.loggers)}"),
            (t.mlflow_uri is None or _is_mlflow_uri(t.mlflow_uri),
             f"train.mlflow_uri={t.mlflow_uri!r} is not a store URI: use sqlite:///PATH/mlflow.db, file:///PATH, "
             "http(s)://HOST or databricks"),
            (all(v is None or v.strip() for v in (t.mlflow_experiment, t.wandb_project, t.wandb_entity)),
             "train.mlflow_experiment, train.wandb_project and train.wandb_entity must not be empty"),
            (self.data.pad >= 0, "data.pad must be >= 0"),
            (self.data.train_limit is None or self.data.train_limit >= 1, "data.train_limit must be >= 1"),
            (self.data.test_limit is None or self.data.test_limit >= 1, "data.test_limit must be >= 1"),
            (0.0 <= self.data.val_split < 1.0,
             f"data.val_split must be a fraction in (0, 1), or 0 for none (got {self.data.val_split})"),
            (o.lr_reference_batch is None or o.lr_reference_batch >= 1, "optim.lr_reference_batch must be >= 1"),
        ]
        temperature = getattr(d, "temperature", 1.0)
        checks.append((temperature > 0, f"distill.temperature must be > 0 (got {temperature})"))
        for name in (*LOSS_WEIGHTS, "ctkd_t_range", "ctkd_loops"):
            value = getattr(d, name, 0.0)
            checks.append((value >= 0, f"distill.{name} must be >= 0 (got {value})"))
        weights = [name for name in LOSS_WEIGHTS if hasattr(d, name)]
        feature = self.feature.method is not None and (self.feature.weight is None or self.feature.weight > 0)
        checks.append((
            feature or any(getattr(d, name) > 0 for name in weights),
            f"every loss weight of distill.method={d.method} is zero ({', '.join(f'distill.{w}' for w in weights)}): "
            "nothing to train; set one > 0",
        ))
        checks += self._feature_checks()
        for ok, message in checks:
            if not ok:
                raise RichKDError(f"invalid config: {message}")
        _check_ranges(self, "")
        needs_teacher = d.method != "vanilla" or self.feature.method is not None
        if needs_teacher and (self.model.teacher is None or self.model.teacher_checkpoint is None):
            method = d.method if self.feature.method is None else f"{d.method} + feature.method={self.feature.method}"
            raise RichKDError(
                f"invalid config: method {method!r} needs model.teacher and model.teacher_checkpoint"
            )
        mode = self.fusion.mode
        if isinstance(d, RichKDConfig) and mode == "off":
            raise RichKDError(
                "invalid config: richkd distils fused targets: set fusion.mode=vlm (with vlm.cache) or "
                "fusion.mode=control (alpha*z_T); for the plain teacher use distill.method=kd or crd"
            )
        if mode != "off" and d.method == "vanilla":
            raise RichKDError(f"invalid config: fusion.mode={mode} needs a teacher, but distill.method is vanilla")
        if mode == "vlm" and self.vlm.cache is None:
            where = f" --root {self.data.root}" if self.data.root else ""
            raise RichKDError(
                "invalid config: fusion.mode=vlm needs vlm.cache: pass vlm.cache=<your cache>, built by `richkd "
                f"vlm cache --dataset {self.data.name}{where} --teacher surrogate --out caches/<name>` (the same "
                "data.* options as this run), or use fusion.mode=control for the teacher-only control"
            )
        if isinstance(d, (CRDConfig, RichKDConfig)) and (d.nce_k < 1 or d.embed_dim < 1):
            raise RichKDError("invalid config: distill.nce_k and distill.embed_dim must be >= 1")
        if isinstance(d, (CRDConfig, RichKDConfig)) and not (d.nce_t > 0 and 0.0 <= d.momentum <= 1.0):
            raise RichKDError("invalid config: distill.nce_t must be > 0 and distill.momentum in [0, 1]")
        if isinstance(d, DKDConfig) and d.warmup_epochs < 0:
            raise RichKDError("invalid config: distill.warmup_epochs must be >= 0")
        if isinstance(d, (KDConfig, DKDConfig, RichKDConfig)) and d.ctkd and not d.ctkd_t_start > 0:
            raise RichKDError("invalid config: distill.ctkd_t_start must be > 0")
        if isinstance(d, MLKDConfig) and self.model.teacher_cache is not None:
            raise RichKDError(
                "invalid config: mlkd runs the teacher on its strongly augmented view, which model.teacher_cache "
                "cannot serve: run the teacher online (drop model.teacher_cache)"
            )
        if isinstance(d, MLKDConfig) and self.data.name == "imagenet":
            raise RichKDError("invalid config: mlkd's strong view is built on the in-memory batch path; "
                              "data.name=imagenet (streamed) does not support it yet")
        self._validate_streamed()

    def _feature_checks(self) -> list[tuple[bool, str]]:
        f = self.feature
        return [
            (f.weight is None or f.weight >= 0, f"feature.weight must be >= 0 (got {f.weight})"),
            (f.hint_layer >= 0, "feature.hint_layer must be >= 0"),
            (f.at_p > 0, "feature.at_p must be > 0"),
            (f.rkd_distance_weight >= 0 and f.rkd_angle_weight >= 0, "feature.rkd_*_weight must be >= 0"),
            (f.vid_init_pred_var > 0, "feature.vid_init_pred_var must be > 0"),
            (f.kdsvd_k >= 1, "feature.kdsvd_k must be >= 1"),
            (f.reviewkd_warmup_epochs >= 0, "feature.reviewkd_warmup_epochs must be >= 0"),
            (f.reviewkd_max_mid_channel >= 1, "feature.reviewkd_max_mid_channel must be >= 1"),
            (
                f.method is None or self.model.teacher_cache is None,
                f"feature.method={f.method} reads the teacher's feature maps, which a teacher cache does not hold: "
                "drop model.teacher_cache",
            ),
        ]

    def _validate_streamed(self) -> None:
        """data.name=imagenet: what streamed data supports (RandomResizedCrop views are not a finite family)."""
        data = self.data
        if data.split_fraction is not None and not 0.0 < data.split_fraction < 1.0:
            raise RichKDError(f"invalid config: data.split_fraction must be in (0, 1) (got {data.split_fraction})")
        if data.image_size is not None and data.image_size < 1:
            raise RichKDError(f"invalid config: data.image_size must be >= 1 (got {data.image_size})")
        if data.workers < 0 or (data.name == "imagenet" and not 1 <= data.stream_size <= data.resize_size):
            raise RichKDError("invalid config: need data.workers >= 0 and 1 <= data.image_size <= data.resize_size")
        if data.name != "imagenet":
            return
        refused = [
            (self.fusion.mode == "vlm" and self.vlm.view_mode == "matched",
             "vlm.view_mode=matched needs the cached crop of each view, but a RandomResizedCrop is not one of "
             "finitely many views: use vlm.view_mode=plain"),
            (self.model.teacher_cache is not None,
             "model.teacher_cache serves finitely many crops; run the teacher online (drop model.teacher_cache)"),
            (data.train_limit is not None or data.test_limit is not None,
             "data.train_limit/test_limit are not supported: make a smaller folder or shard set instead"),
            (not data.augment, "data.augment=false is not supported (training always uses RandomResizedCrop + flip)"),
            (data.val_split > 0,
             "data.val_split is not supported (the streamed split cannot hold rows out yet): hold out a folder of "
             "images as its own split instead, or drop data.val_split"),
        ]
        for bad, message in refused:
            if bad:
                raise RichKDError(f"invalid config for data.name=imagenet: {message}")

    @property
    def feature_lambda(self) -> float:
        lam = self.fusion.feature_lambda
        return self.fusion.logit_alpha if lam is None else lam


FLOAT32_MAX = 3.4028234663852886e38  # tensors hold these values in float32: a larger one is inf there
INT64_MAX = 2**63 - 1  # torch sizes and indices are int64: a larger int raises "Overflow when unpacking long"
_MLFLOW_SCHEMES = ("sqlite:///", "file:", "http://", "https://", "databricks", "postgresql", "mysql", "mssql")


def _is_mlflow_uri(uri: str) -> bool:
    """A store URI MLflow opens (a bare path would make MLflow pick a store kind by itself: say which one)."""
    return uri.startswith(_MLFLOW_SCHEMES) and len(uri) > len("file:")


WIDTH_MAX = 65536  # distill.embed_dim: an embedding wider than this is a typo (and gigabytes per bank row)


def _check_ranges(node: Any, prefix: str) -> None:
    """Every number of the config fits the types it ends up in (float32 tensors, int64 sizes), so an absurd value
    is one line here, not an overflow inside torch."""
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            _check_ranges(value, f"{key}.")
            continue
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, bool):
                continue
            if isinstance(item, float) and abs(item) > FLOAT32_MAX:
                raise RichKDError(f"invalid config: {key}={item!r} is beyond float32 (|x| <= 3.4e38)")
            if isinstance(item, int) and abs(item) > INT64_MAX:
                raise RichKDError(f"invalid config: {key}={item} is beyond a 64-bit integer")
    if isinstance(node, (CRDConfig, RichKDConfig)) and node.embed_dim > WIDTH_MAX:
        raise RichKDError(f"invalid config: distill.embed_dim must be <= {WIDTH_MAX}, got {node.embed_dim}")


# --------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against annotation `tp` (the small subset of typing our configs use)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except RichKDError as err:
                errors.append(str(err))
        if len(errors) == 1:
            raise RichKDError(errors[0])
        options = " or ".join(
            " or ".join(repr(a) for a in typing.get_args(arg)) if typing.get_origin(arg) is Literal else _type_name(arg)
            for arg in args
            if arg is not type(None)
        )
        raise RichKDError(f"invalid value for {key}: expected {options}, got {value!r}")
    if origin is Literal:
        if isinstance(value, bool) and ("on" if value else "off") in args:
            value = "on" if value else "off"  # YAML 1.1 reads a bare off/on as a bool
        if value not in args:
            raise RichKDError(f"invalid value for {key}: {value!r}; choose one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise RichKDError(f"invalid value for {key}: expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{key}[]") for v in value)
    if tp is float:
        number = _as_float(value)
        if number is not None:
            if not math.isfinite(number):
                raise RichKDError(f"invalid value for {key}: {value!r}; it must be a finite number")
            return number
    if tp is str and isinstance(value, datetime.date):
        return value.isoformat()  # YAML reads 2026-01-01 as a date
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(tp, type) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise RichKDError(f"invalid value for {key}: expected {_type_name(tp)}, got {value!r}")


def _as_float(value: Any) -> float | None:
    """A float from an int or a numeric string (YAML 1.1 reads `5e-4` as a string); None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:
            return math.inf
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _build_dataclass(cls: type, raw: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(raw, Mapping):
        raise RichKDError(f"invalid config: {prefix.rstrip('.') or 'top level'} must be a mapping")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(str(k) for k in set(raw) - set(names))
    if cls is FusionConfig and "use_vlm" in unknown:
        raise RichKDError(
            "fusion.use_vlm was replaced by fusion.mode: use_vlm=true -> fusion.mode=vlm, "
            "use_vlm=false -> fusion.mode=control"
        )
    if unknown:
        where = prefix.rstrip(".") or "top level"
        raise RichKDError(
            f"unknown config key {prefix}{unknown[0]} in {where}; valid keys: {', '.join(names)}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build_dataclass(tp, value or {}, f"{prefix}{name}.")  # type: ignore[arg-type]
        elif name == "distill" and cls is RunConfig:
            kwargs[name] = _build_distill(value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, tp, f"{prefix}{name}")
    return cls(**kwargs)


def _build_distill(raw: Any, prefix: str) -> DistillConfig:
    if not isinstance(raw, Mapping) or "method" not in raw:
        raise RichKDError(f"invalid config: {prefix}method is required; one of {sorted(DISTILL_CONFIGS)}")
    method = raw["method"]
    if not isinstance(method, str) or method not in DISTILL_CONFIGS:
        raise RichKDError(f"unknown distill.method {method!r}; choose one of {sorted(DISTILL_CONFIGS)}")
    result: DistillConfig = _build_dataclass(DISTILL_CONFIGS[method], raw, prefix)
    return result


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise RichKDError(f"invalid override {dotted!r}: {key} is not a section")
        node = child
    node[keys[-1]] = value


def parse_overrides(overrides: Sequence[str]) -> list[tuple[str, str]]:
    """`a.b=value` pairs as (key, value text); the text is typed later by the key's declared field type."""
    parsed = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise RichKDError(f"invalid override {item!r}: expected key=value, e.g. train.epochs=2")
        parsed.append((key.strip(), text))
    return parsed


_NULLS = frozenset({"null", "Null", "NULL", "~"})  # YAML's spellings of null
_TRUE, _FALSE = frozenset({"true", "yes", "on"}), frozenset({"false", "no", "off"})
_INT = re.compile(r"[+-]?[0-9](?:_?[0-9])*")


def override_field_type(key: str, tree: Mapping[str, Any]) -> Any | None:
    """The declared type of the config field `key` names (``distill.*`` by the method in `tree`); None when `key`
    is not a leaf field (an unknown key, a section, or a distill key while the method is unknown)."""
    cls: Any = RunConfig
    node: Any = tree
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = {f.name for f in dataclasses.fields(cls)}
        if part not in fields:
            return None
        if cls is RunConfig and part == "distill":
            method = node.get("distill", {}).get("method") if isinstance(node.get("distill"), Mapping) else None
            if not isinstance(method, str) or method not in DISTILL_CONFIGS:
                return None
            cls, node = DISTILL_CONFIGS[method], node["distill"]
            continue
        tp = typing.get_type_hints(cls)[part]
        if dataclasses.is_dataclass(tp):
            cls = tp
            node = node.get(part) if isinstance(node.get(part), Mapping) else {}
            continue
        return tp if i == len(parts) - 1 else None
    return None


def _describe(tp: Any) -> str:
    """The expected type of an override, in words (for the one-line error)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        return f"a list of {_describe(args[0])} ([a, b] or a,b)"
    return {bool: "bool (true/false)", int: "int", float: "float (finite)", str: "str"}.get(tp, _type_name(tp))


def coerce_override(key: str, text: str, tp: Any) -> Any:
    """The value of `key=text` as the field's declared type `tp`: str stays the text, int must parse as an int,
    float as a finite float, bool as true/false/yes/no/on/off, Optional takes null or ~, a tuple takes [a, b] or
    a,b. One-line RichKDError naming key, value and expected type otherwise.

    Why by type: YAML-parsing the text first turned `out_dir=1e3` into the folder `1000.0/` and `out_dir=010`
    into `8/`.
    """
    value = _parse_typed(text.strip(), tp)
    if value is _BAD:
        what = _describe(tp)
        raise RichKDError(f"invalid override {key}={text}: {'choose' if what.startswith('one of') else 'expected'} "
                          f"{what}")
    return value


_BAD: Any = object()


def _parse_typed(text: str, tp: Any) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if type(None) in args and text in _NULLS:
            return None
        for arg in args:
            if arg is not type(None) and (value := _parse_typed(text, arg)) is not _BAD:
                return value
        return _BAD
    if origin is Literal:
        return text if text in args else _BAD
    if origin is tuple:
        inner = text[1:-1] if text.startswith("[") and text.endswith("]") else text
        items = [t.strip() for t in inner.split(",")] if inner.strip() else []
        values = [_parse_typed(t, args[0]) for t in items]
        return _BAD if any(v is _BAD for v in values) else tuple(values)
    if tp is str:
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            return text[1:-1]  # a quoted value: the quotes are not part of it
        return text
    if tp is bool:
        return True if text.lower() in _TRUE else False if text.lower() in _FALSE else _BAD
    if tp is int:
        return int(text) if _INT.fullmatch(text) else _BAD
    if tp is float:
        try:
            number = float(text)
        except ValueError:
            return _BAD
        return number if math.isfinite(number) else _BAD
    return _BAD


def _yaml_value(text: str) -> Any:
    """A value for a key that names no leaf field (it fails later with the key named), parsed as YAML."""
    try:
        return yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        return text


def config_from_dict(raw: Mapping[str, Any]) -> RunConfig:
    cfg: RunConfig = _build_dataclass(RunConfig, raw, "")
    cfg.validate()
    return cfg


def load_config(
    path: str | Path | None,
    overrides: Sequence[str] = (),
    *,
    dataset: str | None = None,
    pair: str | None = None,
    method: str | None = None,
) -> RunConfig:
    """Compose the layers (built-in dataset/method/pair, then the YAML file), apply overrides, validate once."""
    return load_config_with_layers(path, overrides, dataset=dataset, pair=pair, method=method)[0]


def load_config_with_layers(
    path: str | Path | None,
    overrides: Sequence[str] = (),
    *,
    dataset: str | None = None,
    pair: str | None = None,
    method: str | None = None,
) -> tuple[RunConfig, list[str]]:
    """`load_config` plus the names of the layers it stacked, in order (a run records them in run.json)."""
    from richkd.recipes.compose import compose

    raw, layers = compose(path, dataset=dataset, pair=pair, method=method)
    for key, text in parse_overrides(overrides):
        if key == "distill.method":
            if isinstance(raw.get("distill"), dict):
                # switching method drops the previous method's keys rather than failing on them
                raw["distill"] = {}
            value: Any = text.strip()  # checked against DISTILL_CONFIGS by _build_distill
        else:
            tp = override_field_type(key, raw)
            value = _yaml_value(text) if tp is None else coerce_override(key, text, tp)
        _set_dotted(raw, key, value)
    if overrides:
        layers = [*layers, "overrides: " + " ".join(overrides)]
    return config_from_dict(raw), layers


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    def convert(obj: Any) -> Any:
        if isinstance(obj, tuple):
            return [convert(v) for v in obj]
        if isinstance(obj, dict):
            return {k: convert(v) for k, v in obj.items()}
        return obj

    result: dict[str, Any] = convert(dataclasses.asdict(cfg))
    return result


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)

"""Exact teacher caches: the view enumeration, the builder (resume, size check), provenance refusals, and a
cached-teacher run that sees the same batches, the same teacher targets and trains the same student as an
online-teacher run, on real CIFAR-10 images."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from numerics import float16_spacing
from richkd.build import build_fit
from richkd.caches import chunked
from richkd.caches.build_teacher import build_teacher_cache, plan_teacher_cache
from richkd.caches.teacher import CachedTeacher, TeacherCache
from richkd.cli import main
from richkd.config import load_config
from richkd.data import load_dataset
from richkd.data.augment import apply_crop_flip, identity_crop_flip, sample_crop_flip
from richkd.data.batch import Batch
from richkd.data.loader import epoch_batches
from richkd.data.subset import limited
from richkd.data.views import exact_view_names, exact_view_params, n_exact_views, plain_view_id, view_ids
from richkd.engine.checkpoint import save_model
from richkd.engine.fold import fold_batchnorm
from richkd.engine.trainer import FitParts, StepModule, train_step
from richkd.errors import RichKDError
from richkd.models import create_model
from richkd.targets import TeacherTargets
from richkd.teachers.frozen import FusedTargets, OnlineTeacher, TargetSource

pytestmark = pytest.mark.shared_data
LIMIT = 20  # rows of the stratified subset the caches cover (2 per class): 3,240 teacher forwards


def test_view_enumeration_round_trips() -> None:
    for pad in (0, 2, 4):
        params = exact_view_params(pad)
        assert len(params.dx) == n_exact_views(pad) == 2 * (2 * pad + 1) ** 2
        assert torch.equal(view_ids(params, pad), torch.arange(n_exact_views(pad)))
        assert len(set(exact_view_names(pad))) == n_exact_views(pad)
    assert n_exact_views(4) == 162 and plain_view_id(4) == 40 and exact_view_names(4)[40] == "dx4dy4"
    drawn = sample_crop_flip(1000, pad=4, generator=torch.Generator().manual_seed(0), device="cpu")
    ids = view_ids(drawn, 4)
    back = exact_view_params(4)
    assert torch.equal(back.dx[ids], drawn.dx) and torch.equal(back.dy[ids], drawn.dy)
    assert torch.equal(back.flip[ids], drawn.flip)
    assert int(view_ids(identity_crop_flip(1, pad=4), 4)) == plain_view_id(4)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, tiny_cifar10: Path) -> dict[str, Path]:
    """A resnet8 teacher (seeded init, BN statistics perturbed so folding matters) and its cache via the CLI."""
    base = tmp_path_factory.mktemp("tcache")
    torch.set_num_threads(1)
    full = load_dataset("imagefolder", tiny_cifar10, "train", cache_dir=base / "dc")
    paths = {"base": base, "archive": tiny_cifar10, "dc": base / "dc"}
    for name, seed in (("teacher", 0), ("other", 1)):
        torch.manual_seed(seed)
        model = create_model("resnet8", len(full.classes))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d) and m.running_mean is not None and m.running_var is not None:
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
        paths[name] = base / f"{name}.pt"
        save_model(paths[name], model, arch="resnet8", num_classes=len(full.classes), classes=full.classes)
    paths["cache"] = base / "cache"
    assert cli("teacher", "cache", "--checkpoint", str(paths["teacher"]), "--arch", "resnet8", "--dataset",
               "imagefolder", "--root", str(tiny_cifar10), "--cache-dir", str(base / "dc"), "--limit", str(LIMIT),
               "--out", str(paths["cache"]), "--threads", "1", "--batch-size", "648") == 0
    return paths


def cli(*args: str) -> int:
    return main(list(args))


def overrides(work: dict[str, Path], *extra: str) -> list[str]:
    return [
        "data.name=imagefolder", f"data.root={work['archive']}", f"data.cache_dir={work['dc']}",
        f"data.train_limit={LIMIT}", "data.test_limit=20", "model.student=resnet8", "model.teacher=resnet8",
        f"model.teacher_checkpoint={work['teacher']}", "train.batch_size=8", "train.threads=1", "train.bf16=false",
        "train.progress=false", "train.channels_last=false", "train.epochs=1", "optim.lr=0.05", "seed=3", *extra,
    ]


def test_cache_holds_the_teacher_on_every_view(work: dict[str, Path]) -> None:
    cache = TeacherCache.open(work["cache"])
    m = cache.meta
    assert (m.n_rows, m.n_views, m.n_classes, m.feature_dim, m.subset_limit) == (LIMIT, 162, 10, 64, LIMIT)
    ds, _ = limited(load_dataset("imagefolder", work["archive"], "train", cache_dir=work["dc"]), LIMIT)
    model = create_model("resnet8", 10)
    model.load_state_dict(torch.load(work["teacher"], weights_only=False)["model"])
    model.eval()
    rows = torch.tensor([0, 7, 19, 19])
    views = torch.tensor([0, 40, 161, 100])
    p = exact_view_params(4)
    crops = p._replace(dx=p.dx[views], dy=p.dy[views], flip=p.flip[views])
    x = apply_crop_flip(ds.images[rows], crops, pad=4).float() / 255
    x = (x - torch.tensor(ds.mean).view(1, 3, 1, 1)) / torch.tensor(ds.std).view(1, 3, 1, 1)
    logits, pooled = cache.lookup(rows, views)
    truth = teacher_truth(work["teacher"], x)
    assert_float16_of(logits, truth.logits, truth.fp32_error)
    assert_float16_of(pooled, truth.pooled, truth.fp32_error)


@pytest.mark.parametrize("method,mode", [("kd", "off"), ("richkd", "control")])
def test_cached_and_online_runs_match_step_by_step(work: dict[str, Path], method: str, mode: str) -> None:
    """The cached run sees the same batches as the online run, its teacher outputs are the float16 rounding of the
    teacher (checked against a float64 evaluation, to a bound derived below), and given those outputs it trains
    the very same student, bit for bit.

    The two halves are checked apart because their composition is machine luck: an fp32 teacher output within
    fp32 round-off of a float16 rounding boundary rounds either way depending on the kernel oneDNN picks (the
    online teacher runs batches of 8, the builder batches of 648), and such 1-ulp float16 flips of targets moved
    the student by 4.5e-5 after 4 steps on an Intel AMX Xeon (the bound, tuned on AMD, was 2e-5). So the online
    run here is served the cached run's teacher outputs (`Served`), after each step's outputs were checked against
    the float64 truth.
    """
    extra = [f"distill.method={method}", f"fusion.mode={mode}"]
    if method == "richkd":
        extra += ["distill.nce_k=16"]
    device = torch.device("cpu")
    online, _ = build_fit(load_config(None, overrides(work, *extra)), device)
    cached, prov = build_fit(load_config(None, overrides(work, *extra, f"model.teacher_cache={work['cache']}")),
                             device)
    assert prov["teacher_cache"]["checkpoint_sha256"]
    cached_teacher = inner_teacher(cached)
    assert isinstance(cached_teacher, CachedTeacher) and isinstance(inner_teacher(online), OnlineTeacher)
    served_to_online = serve_cached_teacher(online, cached_teacher)
    cached.student.load_state_dict(online.student.state_dict())
    cached.distiller.load_state_dict(online.distiller.state_dict())
    start = copy.deepcopy(online.student.state_dict())
    modules = [StepModule(p.student, p.distiller).train() for p in (online, cached)]
    gens = [torch.Generator().manual_seed(5) for _ in range(2)]
    for step in range(4):
        rows = [epoch_batches(LIMIT, 8, shuffle=True, drop_last=True, generator=g)[step % 2] for g in gens]
        assert torch.equal(rows[0], rows[1])
        batches = [p.train_batches(r, g) for p, r, g in zip((online, cached), rows, gens, strict=True)]
        assert torch.equal(batches[0].images, batches[1].images)  # the same random crops and flips
        assert torch.equal(batches[0].labels, batches[1].labels)
        served_to_online.views = batches[1].views
        served = cached_teacher(batches[1])  # what the cache serves for this batch's (row, view) pairs
        truth = teacher_truth(work["teacher"], batches[0].images)  # the teacher on the online batch, float64
        assert served.pooled is not None
        assert_float16_of(served.logits, truth.logits, truth.fp32_error)
        assert_float16_of(served.pooled, truth.pooled, truth.fp32_error)
        for module, parts, batch in zip(modules, (online, cached), batches, strict=True):
            torch.manual_seed(step)  # CRD negatives come from the global RNG: the same draws for both runs
            train_step(module, parts.targets, parts.optimizer, batch, 0.5, bf16=False)
    # the same arithmetic on the same inputs in one process (1 thread): bitwise equal, no tolerance to choose
    for (name, a), b in zip(modules[0].state_dict().items(), modules[1].state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    moved = [not torch.equal(a, b) for a, b in zip(online.student.state_dict().values(), start.values(), strict=True)]
    assert any(moved)  # the 4 steps did train the student


class Served:
    """The online run's teacher, replaced by the cached run's outputs for the same batch (see the test above).

    An online batch carries no view ids (the online teacher needs none), so the test hands over the exact view ids
    the cached run drew for the same crops and flips."""

    def __init__(self, cached: CachedTeacher) -> None:
        self.cached = cached
        self.views: torch.Tensor | None = None

    def __call__(self, batch: Batch) -> TeacherTargets:
        assert self.views is not None
        return self.cached(batch._replace(views=self.views))


def inner_teacher(parts: FitParts) -> TargetSource:
    """z_T's source: inside FusedTargets when fusion is on, else the targets themselves."""
    assert parts.targets is not None
    return parts.targets.teacher if isinstance(parts.targets, FusedTargets) else parts.targets


def serve_cached_teacher(parts: FitParts, cached: CachedTeacher) -> Served:
    served = Served(cached)
    if isinstance(parts.targets, FusedTargets):
        parts.targets.teacher = served
    else:
        parts.targets = served
    return served


@dataclasses.dataclass
class Truth:
    logits: torch.Tensor  # float64
    pooled: torch.Tensor  # float64
    fp32_error: float  # the largest |fp32 - float64| over several fp32 evaluation orders, times 2


def teacher_truth(checkpoint: Path, x: torch.Tensor) -> Truth:
    """The checkpoint's teacher on `x` in float64, and the fp32 round-off bound the cache's fp32 forward obeys.

    The bound is measured, not assumed: the same function is evaluated in fp32 in three reduction orders (the
    unfolded model on the batch, the BN-folded model on the batch, the folded model a row at a time: other
    kernels, other blockings) and the largest deviation from float64 is taken. The builder's own order (folded,
    batches of 648) is a fourth one whose error is of the same size, hence the factor 2.
    """
    model = create_model("resnet8", 10)
    model.load_state_dict(torch.load(checkpoint, weights_only=False)["model"])
    model.eval()
    folded = fold_batchnorm(model).eval()
    with torch.no_grad():
        exact = copy.deepcopy(model).double()(x.double())
        runs = [(out.logits, out.pooled) for out in (model(x), folded(x))]
        one_by_one = [folded(x[i : i + 1]) for i in range(x.shape[0])]
        runs.append((torch.cat([o.logits for o in one_by_one]), torch.cat([o.pooled for o in one_by_one])))
    err = max(max(float((lg.double() - exact.logits).abs().max()), float((pl.double() - exact.pooled).abs().max()))
              for lg, pl in runs)
    return Truth(exact.logits, exact.pooled, 2.0 * err)


def assert_float16_of(cached: torch.Tensor, exact: torch.Tensor, fp32_error: float) -> None:
    """`cached` is the float16 rounding of an fp32 evaluation of `exact`: round-to-nearest moves a value by at most
    half the float16 gap (at the larger of the two magnitudes, in case the value crossed a power of 2), the fp32
    evaluation by at most `fp32_error`."""
    exact = exact.to(cached.device)
    bound = 0.5 * float16_spacing(torch.maximum(cached.abs().double(), exact.abs())) + fp32_error
    excess = (cached.double() - exact).abs() - bound
    worst = float(excess.max())
    assert worst <= 0, f"{int((excess > 0).sum())} values beyond float16 rounding, the worst by {worst:.3g}"


def test_cached_teacher_with_an_all_views_vlm_cache(work: dict[str, Path]) -> None:
    vlm = work["base"] / "vlm_all"
    assert cli("vlm", "cache", "--teacher", "random:1", "--dataset", "imagefolder", "--root", str(work["archive"]),
               "--limit", str(LIMIT), "--views", "all", "--out", str(vlm), "--threads", "1", "--batch-size", "1620",
               "--no-bf16") == 0
    ds = load_dataset("imagefolder", work["archive"], "train", cache_dir=work["dc"])
    extra = ["distill.method=richkd", "fusion.mode=vlm", f"vlm.cache={vlm}", "distill.nce_k=16",
             f"model.teacher_cache={work['cache']}"]
    for view_mode in ("matched", "plain"):
        parts, _ = build_fit(load_config(None, overrides(work, *extra, f"vlm.view_mode={view_mode}")),
                             torch.device("cpu"))
        g = torch.Generator().manual_seed(1)
        batch = parts.train_batches(torch.arange(8), g)
        g = torch.Generator().manual_seed(1)
        drawn = sample_crop_flip(8, pad=4, generator=g, device="cpu")
        assert torch.equal(batch.views, view_ids(drawn, 4))  # the views the student drew, same RNG stream
        assert parts.targets is not None
        served = parts.targets(batch).clip
        assert served is not None
        from richkd.caches.target import TargetCache

        full = TargetCache.open(vlm)
        want_views = batch.views if view_mode == "matched" else torch.full_like(batch.views, 40)
        rows = parts.train_batches.row_map[batch.indices] if parts.train_batches.row_map is not None else None
        rows = batch.indices if rows is None else rows
        torch.testing.assert_close(served.cosines, full.lookup(rows, want_views).cosines)
        aug = full.aug_params(rows, want_views)
        if view_mode == "matched":
            assert torch.equal(aug.dx, drawn.dx) and torch.equal(aug.flip, drawn.flip)
    assert len(ds) == 160


def test_refuses_another_teacher_split_pad_or_class_list(
    work: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    base = overrides(work, "distill.method=kd", f"model.teacher_cache={work['cache']}", "out_dir=" + str(
        work["base"] / "refused"))
    assert cli("train", *[o for o in base if "teacher_checkpoint" not in o],
               f"model.teacher_checkpoint={work['other']}") == 2
    err = capsys.readouterr().err.strip()
    assert "checkpoint sha256" in err and "\n" not in err and "richkd teacher cache" in err
    assert not (work["base"] / "refused" / "checkpoint.pt").exists()
    cache = TeacherCache.open(work["cache"])
    m = cache.meta
    good = dict(arch="resnet8", checkpoint_sha256=m.checkpoint_sha256, dataset=m.dataset, split=m.split,
                n_rows=160, class_names=m.class_names, pad=4, mean=m.mean, std=m.std)
    cache.validate(**good)  # type: ignore[arg-type]
    swapped = (m.class_names[1], m.class_names[0], *m.class_names[2:])
    for change, message in (({"split": "test"}, "dataset/split"), ({"pad": 2}, "crop pad"),
                            ({"class_names": swapped}, "class list"), ({"arch": "resnet20"}, "architecture"),
                            ({"n_rows": 170}, "split rows"), ({"std": (0.2, 0.2, 0.2)}, "normalisation")):
        with pytest.raises(RichKDError, match=message):
            cache.validate(**{**good, **change})  # type: ignore[arg-type]


class Killed(Exception):
    pass


class Dying(torch.nn.Module):
    """The teacher, raising on forward number `after` (a build killed mid-way)."""

    def __init__(self, model: torch.nn.Module, after: int) -> None:
        super().__init__()
        self.model, self.after, self.calls = model, after, 0

    def forward(self, x: torch.Tensor) -> object:
        self.calls += 1
        if self.calls > self.after:
            raise Killed
        return self.model(x)


def test_resume_of_a_killed_build_gives_identical_arrays(work: dict[str, Path], tmp_path: Path) -> None:
    ds, rows = limited(load_dataset("imagefolder", work["archive"], "train", cache_dir=work["dc"]), 12)
    model = create_model("resnet8", 10)
    model.load_state_dict(torch.load(work["teacher"], weights_only=False)["model"])
    teacher = fold_batchnorm(model).eval()
    meta = plan_teacher_cache(ds, arch="resnet8", checkpoint_sha256="a" * 64, feature_dim=64, pad=4, bf16=False,
                              subset=rows)
    kw = dict(batch_size=324, checkpoint_seconds=0.0, progress=False)  # 2 rows per forward, 8 rows per chunk
    whole = build_teacher_cache(teacher, ds, tmp_path / "whole", meta, **kw)  # type: ignore[arg-type]
    out = tmp_path / "resumed"
    with pytest.raises(Killed):
        build_teacher_cache(Dying(teacher, after=4).eval(), ds, out, meta, **kw)  # type: ignore[arg-type]
    with pytest.raises(RichKDError, match="unfinished build"):
        TeacherCache.open(out)
    with pytest.raises(RichKDError, match="different recipe"):
        build_teacher_cache(teacher, ds, out, dataclasses.replace(meta, pad=2, n_views=50), **kw)  # type: ignore[arg-type]
    counting = Dying(teacher, after=10**6).eval()
    build_teacher_cache(counting, ds, out, meta, **kw)  # type: ignore[arg-type]
    assert counting.calls == 2  # rows 8..11 (4 rows x 162 views at 324 a forward): done rows are not redone
    a, b = TeacherCache.open(whole), TeacherCache.open(out)
    for name in ("logits.npy", "pooled.npy"):
        assert np.array_equal(a._np[name], b._np[name])
    assert dataclasses.replace(a.meta, created="") == dataclasses.replace(b.meta, created="")
    with pytest.raises(RichKDError, match="built differently"):
        build_teacher_cache(teacher, ds, out, dataclasses.replace(meta, checkpoint_sha256="b" * 64), **kw)  # type: ignore[arg-type]


def test_size_is_checked_before_starting(tmp_path: Path) -> None:
    with pytest.raises(RichKDError, match=r"needs .* GiB but .* free"):
        chunked.check_space(tmp_path / "big", 1 << 60, what="teacher cache")
    assert not (tmp_path / "big").exists()


def test_cache_feeds_a_teacher_its_own_input_as_an_online_run_does(work: dict[str, Path]) -> None:
    """A teacher trained at another resolution and normalisation (recorded in its model file) is cached as the
    online run feeds it: the crop un-normalised to pixels, resized bilinearly to its 40 x 40 (upsampling: no
    antialias) and normalised with its own statistics, not fed the dataset's 32 x 32 batch as is."""
    from richkd.api import build_teacher_cache as api_build

    base, own_mean, own_std = work["base"], (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    torch.manual_seed(5)
    model = create_model("resnet8", 10).eval()
    checkpoint = base / "teacher40.pt"
    ds, _ = limited(load_dataset("imagefolder", work["archive"], "train", cache_dir=work["dc"]), LIMIT)
    save_model(checkpoint, model, arch="resnet8", num_classes=10, classes=ds.classes, mean=own_mean, std=own_std,
               input_size=(40, 40))
    out = base / "cache40"
    api_build(out, checkpoint=checkpoint, arch="resnet8", dataset="imagefolder", root=str(work["archive"]),
              cache_dir=work["dc"], limit=LIMIT, batch_size=648, channels_last=False)
    cache = TeacherCache.open(out)
    rows, views = torch.tensor([3, 11]), torch.tensor([40, 7])
    p = exact_view_params(4)
    pixels = apply_crop_flip(ds.images[rows], p._replace(dx=p.dx[views], dy=p.dy[views], flip=p.flip[views]),
                             pad=4).double() / 255
    resized = torch.nn.functional.interpolate(pixels, size=(40, 40), mode="bilinear", align_corners=False)
    x = (resized - torch.tensor(own_mean).view(1, 3, 1, 1)) / torch.tensor(own_std).view(1, 3, 1, 1)
    with torch.no_grad():
        exact = copy.deepcopy(model).double()(x)
        unadapted = model((pixels.float() - torch.tensor(ds.mean).view(1, 3, 1, 1))
                          / torch.tensor(ds.std).view(1, 3, 1, 1))
    logits, _ = cache.lookup(rows, views)
    # float16 storage moves a value by at most 2^-11 (4.9e-4) of its size, the fp32 resize and forward by ~1e-6
    # of it: 2e-3 of the largest logit bounds both; the unresized batch must be at least 5x that far off
    torch.testing.assert_close(logits.double(), exact.logits, rtol=0, atol=2e-3 * float(exact.logits.abs().max()))
    assert float((logits.float() - unadapted.logits).abs().max()) > 1e-2 * float(exact.logits.abs().max())

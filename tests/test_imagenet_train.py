"""`richkd train` on ImageNet-layout data (issue 14, part 2): a tiny JPEG folder and the same rows as tar shards,
KD and RichKD-L+F with a torchvision-format teacher and a target cache by row id, 2 processes under torchrun, peak
memory against folder size, the recipe table, and one-line errors for bad input.

Images are generated here (tests/imagenet_layout.py, 240-351 px). Runs use resnet18_imagenet at 32 px crops
(`data.image_size`, `data.resize_size`: the transforms are the protocol's, only smaller) to stay fast on 2 cores.
The target cache is built by `richkd vlm cache --dataset imagenet` in 2 parts from a deterministic random VLM
(not CLIP), as a user would build it, and served by row id.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from imagenet_layout import CLASSES, make_split
from richkd.build import effective_lr
from richkd.cli import main
from richkd.config import CRDConfig, DKDConfig, KDConfig, load_config
from richkd.data.stream import FolderSource, StreamDataset
from richkd.distill import crd as crd_module
from richkd.engine.batches import StreamBatches
from richkd.engine.optim import resolve_milestones
from richkd.models import create_model
from richkd.recipes.pairs import IMAGENET_PAIRS, get_pair

SMALL = ["data.image_size=32", "data.resize_size=37"]  # 224/256 scaled down: same transforms, 49x fewer pixels
COMMON = [*SMALL, "train.threads=1", "train.progress=false", "train.eval_batch_size=8", "optim.lr=0.05"]
METHODS = ("kd", "dkd", "crd", "richkd-l", "richkd-f", "richkd-lf", "control")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """root/{train,val}: 3 classes x 4 (train) / 2 (val) JPEGs; root/shards/{train,val}: the same rows as tars;
    a torchvision-format teacher (a bare state dict) and a target cache of the train rows, built in 2 parts."""
    base = tmp_path_factory.mktemp("imagenet_train")
    root = base / "data"
    make_split(root, "train", per_class=4, n_shards=2)
    make_split(root, "val", per_class=2, seed=1, n_shards=1)
    torch.manual_seed(0)
    teacher = create_model("resnet18_imagenet", 3)
    torch.save(teacher.state_dict(), base / "resnet18-teacher.pth")  # keys exactly torchvision's, no wrapper
    _build_vlm_cache(base / "cache", root / "shards" / "train")
    return {"root": root, "shards": root / "shards", "teacher": base / "resnet18-teacher.pth",
            "cache": base / "cache", "base": base}


def _build_vlm_cache(out: Path, shards: Path) -> None:
    """`richkd vlm cache --dataset imagenet` in 2 parts over the train shards (the second part merges), with the
    deterministic random VLM (not CLIP): the cache a user builds, served to training by row id."""
    for part in ("0/2", "1/2"):
        assert main(["vlm", "cache", "--dataset", "imagenet", "--root", str(shards), "--teacher", "random",
                     "--shard", part, "--classes", ",".join(CLASSES), "--workers", "0", "--threads", "1",
                     "--out", str(out)]) == 0


def _args(tree: dict[str, Path], kind: str, method: str, out: Path, *extra: str, workers: int = 0) -> list[str]:
    root = tree["root"] if kind == "folder" else tree["shards"]
    return [
        "train", "--dataset", "imagenet", "--pair", "resnet34-resnet18", "--method", method,
        f"data.root={root}", f"data.workers={workers}", "model.teacher=resnet18_imagenet",
        f"model.teacher_checkpoint={tree['teacher']}", f"vlm.cache={tree['cache']}",
        *(["distill.nce_k=4"] if method.startswith(("richkd", "crd", "control")) else []),
        "train.epochs=1", "train.batch_size=4", *COMMON, f"out_dir={out}", *extra,
    ]


@pytest.mark.parametrize(("kind", "method"), [("folder", "kd"), ("shards", "kd"), ("folder", "richkd-lf"),
                                              ("shards", "richkd-lf")])
def test_train_end_to_end_on_folder_and_shards(tree: dict[str, Path], tmp_path: Path, kind: str, method: str) -> None:
    out = tmp_path / "run"
    assert main(_args(tree, kind, method, out, workers=int(kind == "shards" and method == "kd"))) == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    run = json.loads((out / "run.json").read_text())
    assert (run["train_rows"], run["test_rows"]) == (12, 6)
    assert run["dataset_source"].startswith(f"{kind} ")
    assert record["epoch"] == 1 and 0.0 <= record["test/top1"] <= 100.0
    expected = {"kd": {"ce", "kd"}, "richkd-lf": {"ce", "kd", "feat"}}[method]
    assert {k.removeprefix("train/loss_") for k in record if k.startswith("train/loss_")} == expected
    assert all(np.isfinite(v) for k, v in record.items() if k.startswith(("train/", "test/")))
    if method == "richkd-lf":
        assert run["target_cache"]["dataset"] == "imagenet" and "views plain" in run["teacher_targets"]
    else:
        assert run["loss"] == "Loss = 0.5*CE + 0.5*KD(T=1.0)"  # ImageNet's KD weights (mdistiller)
    saved = torch.load(out / "model_last.pt", map_location="cpu", weights_only=False)
    assert tuple(saved["input_size"]) == (32, 32)


def test_two_processes_train_richkd_lf_and_ranks_split_every_row(tree: dict[str, Path], tmp_path: Path) -> None:
    # the training batch path of 2 ranks (no process group needed): together every row once per epoch
    source = FolderSource(tree["root"] / "train")
    for epoch in range(2):
        seen: list[int] = []
        for rank in range(2):
            data = StreamDataset(source, train=True, rank=rank, world_size=2, seed=0, image_size=32, resize_size=36)
            # 2 workers each end on a partial batch (3 rows each, batches of 2): re-cut into equal batches
            maker = StreamBatches(data, batch_size=2, workers=2, device=torch.device("cpu"), world_size=2)
            batches = list(maker.epoch(epoch))
            assert len(batches) == maker.steps() == 3 and all(b.indices.numel() == 2 for b in batches)
            seen += [int(i) for b in batches for i in b.indices]
        assert sorted(seen) == list(range(12)), epoch
    # a real torchrun job: RichKD-L+F, 2 processes, global batch 6 (3 a rank), 2 steps on the shards
    out = tmp_path / "ddp"
    # the student is CIFAR's resnet8 (32 px input, 0.08 M parameters): the data path is under test, and two
    # resnet18 processes would triple this test's time on 2 cores
    args = _args(tree, "shards", "richkd-lf", out, "train.batch_size=6", "model.student=resnet8")[1:]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run([*launcher, "-m", "richkd", "train", *args], capture_output=True, text=True, env=env,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "terminate called" not in proc.stderr, proc.stderr[-3000:]  # no rank aborted on the way out
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1] and np.isfinite(records[0]["train/loss_feat"])
    # the CRD banks start as uniform noise (row norms 1 +- 0.04) and a row updated from a batch is renormalised
    # to 1: all 12 rows of both banks at norm 1 +- 1e-4 means the ranks' batches covered every row
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)["student_and_distiller"]
    for name in ("memory_student", "memory_teacher"):
        bank = next(v for k, v in state.items() if k.endswith(name))
        assert bank.shape == (12, 128)
        torch.testing.assert_close(bank.norm(dim=1), torch.ones(12), rtol=1e-4, atol=1e-4)
    # the chain's last link: the 2-process student on an -R/-A-style shift set holding 2 of its 3 classes, scored
    # over those 2 columns of its head (the 200-class protocol in miniature)
    make_split(tmp_path / "shift", "r", classes=CLASSES[:2], per_class=2, seed=2)
    assert main(["shift", "--set", f"r={tmp_path / 'shift' / 'r'}", "--checkpoint", f"student={out / 'model_last.pt'}",
                 "--image-size", "32", "--resize-size", "37", "--threads", "1", "--batch-size", "4",
                 "--out", str(tmp_path / "shift_out")]) == 0
    scored = json.loads((tmp_path / "shift_out" / "shift.json").read_text())["sets"]["r"]
    assert (scored["layout"], scored["images"], scored["classes_scored"]) == ("subset", 4, 2)


def test_train_leaves_the_process_group_on_success_and_on_error(tree: dict[str, Path], tmp_path: Path) -> None:
    """The DDP abort at exit (issue 20): a gloo group still alive when the interpreter finalises takes the rank
    down with SIGABRT. `richkd train` must leave the group itself, on success and on a failing run. A 1-process
    gloo group (what torchrun sets up, minus the second process) is enough to see whether it is left."""
    import torch.distributed as torch_dist

    def joined() -> None:
        torch_dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
        (tmp_path / "store").unlink(missing_ok=True)

    joined()
    try:
        bad = _args(tree, "folder", "kd", tmp_path / "bad", f"vlm.cache={tmp_path / 'missing'}")
        bad[bad.index("--method") + 1] = "richkd-lf"  # needs the target cache: fails while building the run
        assert main(bad) == 2
        assert not torch_dist.is_initialized()  # left on the error path
        assert not (tmp_path / "bad").exists()  # and the unstarted run removed by rank 0 after leaving
        joined()
        assert main(_args(tree, "folder", "kd", tmp_path / "ok", "model.student=resnet8")) == 0
        assert not torch_dist.is_initialized()  # left on success
        assert json.loads((tmp_path / "ok" / "summary.json").read_text())["epochs"] == 1
    finally:
        if torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def test_an_epoch_that_fails_mid_way_joins_its_decode_workers(
    tree: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step that raises in a streamed epoch: the loader's worker processes are gone when the error reaches the
    caller, not when the traceback (which holds the epoch's frames) is finally dropped."""
    import multiprocessing

    from richkd.build import build_fit
    from richkd.config import load_config_with_layers
    from richkd.engine import trainer
    from richkd.engine.trainer import StepModule

    args = _args(tree, "shards", "kd", tmp_path / "run", workers=2)
    cfg, _ = load_config_with_layers(None, args[7:], dataset="imagenet", pair="resnet34-resnet18", method="kd")
    parts, _ = build_fit(cfg, torch.device("cpu"))
    workers: list[multiprocessing.process.BaseProcess] = []

    def failing_step(*_: object, **__: object) -> None:
        workers.extend(multiprocessing.active_children())
        raise RuntimeError("a step failed")

    monkeypatch.setattr(trainer, "train_step", failing_step)
    with pytest.raises(RuntimeError, match="a step failed") as caught:
        trainer._train_epoch(parts, StepModule(parts.student, parts.distiller), 0, torch.Generator())
    assert caught.traceback  # still held here
    assert len(workers) == 2 and not any(w.is_alive() for w in workers)


# Imports torch and richkd once, then trains in a forked child per folder: wait4 gives each child's own RSS
# high-water mark (its decode workers included), without paying the import twice.
_FORKED_RUNS = """
import json, os, sys
import torch
from richkd.cli import main
torch.set_num_threads(1)
peaks = []
for args in json.loads(sys.argv[1]):
    pid = os.fork()
    if pid == 0:
        os._exit(main(args))
    _, status, usage = os.wait4(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, args
    peaks.append(usage.ru_maxrss / 1024)
print(json.dumps(peaks))
"""


def test_peak_memory_does_not_grow_with_the_number_of_images(tmp_path: Path) -> None:
    """A full epoch plus evaluation over 12 vs 96 train images (8x), each in a fresh child of one parent.

    Were the decoded images kept (about 295 x 285 x 3 B = 250 kB each), the larger run would hold 21 MB more. The
    bar is 8 MB: repeated runs here spread by up to 5.5 MB (an occasional +3.5 MB step in either size; allocator
    state, not images), docs/imagenet.md. What grows by design is the path list (about 40 B a row) and, for CRD,
    its N x 128 banks (not used here)."""
    runs = []
    for n in (4, 32):
        root = tmp_path / f"n{n}"
        make_split(root, "train", per_class=n)
        make_split(root, "val", per_class=2, seed=1)
        runs.append([
            "train", "--dataset", "imagenet", "--method", "vanilla", f"data.root={root}", "data.workers=0",
            "model.student=resnet8", "train.epochs=1", "train.batch_size=8", *COMMON,
            f"out_dir={tmp_path / f'run{n}'}",
        ])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _FORKED_RUNS, json.dumps(runs)], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    peaks = json.loads(proc.stdout.strip().splitlines()[-1])
    assert peaks[1] - peaks[0] < 8.0, peaks


def test_recipe_table_resolves_every_method_on_both_pairs() -> None:
    for pair in IMAGENET_PAIRS.values():
        assert get_pair(pair.name, "imagenet") is get_pair(str(pair.alias), "imagenet") is pair
        assert create_model(pair.teacher, 10).feature_dim == pair.teacher_dim
        assert create_model(pair.student, 10).feature_dim == pair.student_dim
        for method in METHODS:
            cfg = load_config(None, dataset="imagenet", pair=str(pair.alias), method=method)
            assert (cfg.model.teacher, cfg.model.student) == (pair.teacher, pair.student)
            assert cfg.data.name == "imagenet" and cfg.train.epochs == 100
            assert resolve_milestones(cfg.optim.milestones, cfg.train.epochs) == (30, 60, 90)
            assert cfg.optim.weight_decay == 1e-4 and cfg.train.batch_size == 256 and cfg.data.image_size == 224
            d = cfg.distill
            if isinstance(d, DKDConfig):
                assert (d.ce_weight, d.alpha, d.temperature, d.warmup_epochs, d.beta) == (1, 1, 1, 1, pair.dkd_beta)
            if isinstance(d, KDConfig):
                assert (d.ce_weight, d.kd_weight, d.temperature) == (0.5, 0.5, 1.0)
    cfg = load_config(None, ["train.batch_size=512"], dataset="imagenet", pair="resnet34-resnet18", method="kd")
    assert effective_lr(cfg) == pytest.approx(0.2)  # 0.1 per 256 images, scaled with the global batch
    assert effective_lr(load_config(None, dataset="cifar100", pair="resnet56-resnet20", method="kd")) == 0.05
    # CRD's memory at ImageNet's N scores by gathering the K + 1 rows, never all N rows (docs/imagenet.md)
    crd = load_config(None, dataset="imagenet", pair="resnet34-resnet18", method="crd").distill
    assert isinstance(crd, CRDConfig) and crd.negatives == "replacement"
    assert 1_281_167 > crd_module._FULL_SCORE_RATIO * (crd.nce_k + 1)


def test_feature_methods_take_mdistillers_imagenet_settings() -> None:
    """Transcribed from mdistiller configs/imagenet/{r34_r18,r50_mv1}/{at,ofd,reviewkd}.yaml (fetched 2026-12-06)."""
    r18, mv1 = "resnet34-resnet18", "resnet50-mobilenetv1"
    for pair in (r18, mv1):  # AT: BATCH_SIZE 512, LR 0.2; FEAT_WEIGHT 1000 (cfg.py default)
        at = load_config(None, dataset="imagenet", pair=pair, method="at")
        assert (at.train.batch_size, effective_lr(at), at.feature.method) == (512, pytest.approx(0.2), "at")
        assert at.feature.weight is None  # the registered mdistiller weight, 1000
    ofd = load_config(None, dataset="imagenet", pair=mv1, method="ofd")  # BATCH_SIZE 128, LR 0.05, FEAT 0.0001
    assert (ofd.train.batch_size, effective_lr(ofd), ofd.feature.weight) == (128, pytest.approx(0.05), 1e-4)
    # ReviewKD: r34_r18 weight 1.0, r50_mv1 weight 8.0 + MAX_MID_CHANNEL 256; both WARMUP 1, STU_PREACT, batch 256
    for pair, weight, mid in ((r18, 1.0, 512), (mv1, 8.0, 256)):
        f = load_config(None, dataset="imagenet", pair=pair, method="reviewkd")
        assert (f.feature.method, f.feature.weight, f.feature.reviewkd_max_mid_channel) == ("reviewkd", weight, mid)
        assert (f.feature.reviewkd_warmup_epochs, f.feature.reviewkd_student_preact) == (1, True)
        assert (f.train.batch_size, effective_lr(f)) == (256, pytest.approx(0.1))
    # the per-pair override belongs to ReviewKD alone, and CIFAR-100's ReviewKD keeps its own settings
    assert load_config(None, dataset="imagenet", pair=mv1, method="at").feature.reviewkd_max_mid_channel == 512
    cifar = load_config(None, dataset="cifar100", pair="resnet32x4-resnet8x4", method="reviewkd").feature
    assert (cifar.weight, cifar.reviewkd_warmup_epochs, cifar.reviewkd_student_preact) == (None, 20, False)


def test_recipes_lists_the_per_pair_and_per_dataset_method_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out.splitlines()
    mv1 = next(i for i, line in enumerate(out) if line.strip().startswith("resnet50-mobilenetv1"))
    assert "--method reviewkd: feature.weight=8.0, feature.reviewkd_max_mid_channel=256" in out[mv1 + 1]
    assert "  imagenet: at, crd, dkd, kd, ofd, reviewkd, richkd-lf" in out


def _error(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_bad_input_gives_one_line_errors(tree: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    def run(root: Path, *extra: str) -> str:
        return _error(capsys, ["train", "--dataset", "imagenet", "--method", "vanilla", f"data.root={root}",
                               "model.student=resnet18_imagenet", "data.workers=0", *COMMON,
                               f"out_dir={tmp_path / 'out'}", *extra])

    no_val = tmp_path / "no_val"
    make_split(no_val, "train", per_class=1)
    assert "'val' not found" in run(no_val)
    assert "'train' not found" in run(tmp_path / "no_val" / "train")
    extra_class = tmp_path / "extra"
    make_split(extra_class, "train", per_class=1)
    make_split(extra_class, "val", classes=("n01440764", "n09999999"), per_class=1)
    assert "not in the class list" in run(extra_class)
    shards_extra = tmp_path / "shards_extra"
    make_split(shards_extra, "train", classes=("n01440764", "n01443537"), per_class=1, n_shards=1)
    make_split(shards_extra, "val", per_class=1, n_shards=1)
    assert "train split has 2 classes" in run(shards_extra / "shards")
    # the teacher's head (1000 classes, torchvision's layout) against a 3-class folder
    big = tmp_path / "resnet18-1000.pth"
    torch.save(create_model("resnet18_imagenet", 1000).state_dict(), big)
    err = _error(capsys, _args(tree, "folder", "kd", tmp_path / "k", f"model.teacher_checkpoint={big}"))
    assert "fc" in err or "1000" in err, err
    matched = _args(tree, "folder", "richkd-lf", tmp_path / "m", "vlm.view_mode=matched")
    assert "RandomResizedCrop" in _error(capsys, matched)

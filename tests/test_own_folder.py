"""Your own photo folder (issue 26): a messy folder built here with PIL (mixed sizes, modes and formats, EXIF
orientation, a truncated JPEG, a text file named .jpg, hidden files, a tiny class, no train/test split) goes through
the real CLI: refusals are one line with exit 2 and write nothing; with data.skip_bad=true a teacher trains, a
vision-language cache is built, a RichKD-L student distils, exports and classifies. Expected values come from PIL
(what it decodes) or are worked by hand (the split counts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from richkd.data import FolderOptions, load_dataset
from richkd.errors import RichKDError

COLOURS = {"cat": (200, 60, 40), "dog": (40, 160, 60), "fish": (40, 60, 200), "bird": (220, 220, 40)}
SIZES = [(64, 64), (120, 90), (90, 120), (48, 64)]  # (w, h)
FAST = ["train.epochs=1", "train.batch_size=16", "train.threads=1", "train.progress=false", "data.image_size=24"]


def make_messy(root: Path, per_class: int = 12, tiny: int = 3) -> dict[str, int]:
    """Class -> decodable image count. Every 6th file of a class is of each format/mode; bird is the tiny class."""
    rng = np.random.default_rng(0)
    counts = {}
    for name, rgb in COLOURS.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        n = tiny if name == "bird" else per_class
        for i in range(n):
            w, h = SIZES[i % 4]
            im = Image.fromarray(np.clip(np.array(rgb) + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8))
            kind = i % 6
            if kind == 0:
                im.save(folder / f"{i}.jpg", quality=90)
            elif kind == 1:
                im.convert("RGBA").save(folder / f"{i}.png")
            elif kind == 2:
                im.convert("L").save(folder / f"{i}.webp")
            elif kind == 3:
                im.convert("P").save(folder / f"{i}.bmp")
            elif kind == 4:
                im.convert("CMYK").save(folder / f"{i}.jpeg")
            else:
                exif = Image.Exif()
                exif[0x0112] = 6  # rotate 90 degrees on display
                im.save(folder / f"{i}.JPG", exif=exif)
        counts[name] = n
    (root / "cat" / "truncated.jpg").write_bytes((root / "cat" / "0.jpg").read_bytes()[:300])
    (root / "dog" / "notes.jpg").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"\0\1junk")
    (root / "cat" / "._0.jpg").write_bytes(b"\0\5\26\7resource fork")  # macOS resource fork
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.jpg").write_text("hidden folder")
    (root / "fish" / "readme.txt").write_text("not an image extension: ignored")
    return counts


def richkd(*args: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RICHKD_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "richkd", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600, check=False)


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def refused(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 2 with one `richkd: error:` line (log lines aside) and no traceback."""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("richkd: error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def messy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("own") / "photos"
    make_messy(root)
    return root


def test_messy_folder_through_the_cli(messy: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    teacher = [
        "train", "--dataset", "imagefolder", "--pair", "resnet8", "--method", "teacher", f"data.root={messy}", *FAST,
    ]
    # no size given: the sizes found and the fix, in one line; nothing written
    line = refused(richkd(*teacher[:-1], "out_dir=t0", cwd=tmp_path, cache=cache), "64x64", "120x90", "image_size")
    assert "2 unreadable" in line
    # sized: every unreadable file named in one pass (and listed in a file), nothing written
    line = refused(richkd(*teacher, "out_dir=t0", cwd=tmp_path, cache=cache), "2 unreadable", "skip_bad")
    assert "cat/truncated.jpg" in line and "dog/notes.jpg" in line and "._0" not in line and ".hidden" not in line
    listing = Path(line.split("all listed in ")[1].split(")")[0])
    assert sorted(row.split("\t")[0] for row in listing.read_text().splitlines()) == [
        "cat/truncated.jpg", "dog/notes.jpg"
    ]
    assert not (tmp_path / "t0").exists()

    # data.skip_bad=true: trains on the rest; run.json lists what was skipped and how the folder was split
    ok(richkd(*teacher, "data.skip_bad=true", "out_dir=teacher", cwd=tmp_path, cache=cache))
    run = json.loads((tmp_path / "teacher" / "run.json").read_text())
    folder = run["image_folder"]
    assert [f["path"] for f in folder["skipped_bad_files"]] == ["cat/truncated.jpg", "dog/notes.jpg"]
    assert folder["image_size"] == 24 and folder["resize"] == "shorter"
    assert folder["split"]["fraction"] == 0.2 and folder["split"]["seed"] == 0
    # 12, 12, 12 and 3 images: round-half-up(0.2 n) = 2, 2, 2, 1 held out (hand-worked)
    assert (run["train_rows"], run["test_rows"]) == (39 - 7, 7)

    # a fusion method without vlm.cache: the fix names the command that builds one
    student = [
        "train", "--dataset", "imagefolder", "--method", "richkd-l", f"data.root={messy}", *FAST, "data.skip_bad=true",
        "model.student=resnet8", "model.teacher=resnet8", "model.teacher_checkpoint=teacher/model_last.pt",
    ]
    refused(richkd(*student, "out_dir=s0", cwd=tmp_path, cache=cache), "vlm.cache=<your cache>", "richkd vlm cache")
    assert not (tmp_path / "s0").exists()

    # the vision-language cache of the same rows: the folder options on the command line
    folder_args = ["--dataset", "imagefolder", "--root", str(messy), "--image-size", "24", "--skip-bad",
                   "--split-fraction", "0.2"]
    ok(richkd("vlm", "cache", *folder_args, "--teacher", "random:0", "--out", "vlm", cwd=tmp_path, cache=cache))
    ok(richkd(*student, "vlm.cache=vlm", "out_dir=student", cwd=tmp_path, cache=cache))
    # eval takes the folder policy from the checkpoint's run
    result = json.loads(ok(richkd("eval", "--checkpoint", "student/model_last.pt", "--dataset", "imagefolder",
                                  "--root", str(messy), cwd=tmp_path, cache=cache)).stdout)
    assert result["rows"] == 7
    ok(richkd("export", "student/model_last.pt", "--out", "exported", cwd=tmp_path, cache=cache))
    card = json.loads((tmp_path / "exported" / "model_card.json").read_text())
    assert card["classes"] == ["bird", "cat", "dog", "fish"] and card["input"]["size"] == [24, 24]
    assert card["data"]["image_size"] == 24 and card["data"]["resize"] == "shorter"
    # cost measures at the size the model file records (24 px here), not CIFAR's 32
    ok(richkd("cost", "--checkpoint", "s=student/model_last.pt", "--repeats", "1", "--warmup", "0", "--out", "cost",
              cwd=tmp_path, cache=cache))
    assert json.loads((tmp_path / "cost" / "cost.json").read_text())["input"] == [3, 24, 24]
    proc = ok(richkd("classify", "exported/model.safetensors", str(messy / "fish" / "1.png"), "--format", "jsonl",
                     cwd=tmp_path, cache=cache))
    assert json.loads(proc.stdout.splitlines()[0])["top"][0]["class"] in COLOURS


def test_empty_class_folder_is_one_line(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    make_messy(root, per_class=4, tiny=2)
    (root / "empty").mkdir()
    proc = richkd("train", "--dataset", "imagefolder", "--pair", "resnet8", "--method", "teacher", f"data.root={root}",
                  *FAST, "data.skip_bad=true", "out_dir=t", cwd=tmp_path, cache=tmp_path / "cache")
    refused(proc, "class folder empty", "has no readable images")
    assert not (tmp_path / "t").exists()


def test_split_is_stratified_and_reproducible(messy: Path, tmp_path: Path) -> None:
    def load(split: str, seed: int = 0) -> torch.Tensor:
        opts = FolderOptions(image_size=16, skip_bad=True, split_fraction=0.25, split_seed=seed)
        return load_dataset("imagefolder", messy, split, cache_dir=tmp_path, folder=opts).images

    train = load_dataset("imagefolder", messy, "train", cache_dir=tmp_path,
                         folder=FolderOptions(image_size=16, skip_bad=True, split_fraction=0.25))
    test = load_dataset("imagefolder", messy, "test", cache_dir=tmp_path,
                        folder=FolderOptions(image_size=16, skip_bad=True, split_fraction=0.25))
    # decodable per class (alphabetical labels): bird 3, cat 12, dog 12, fish 12; held out round-half-up(n/4)
    assert torch.bincount(test.labels, minlength=4).tolist() == [1, 3, 3, 3]
    assert torch.bincount(train.labels, minlength=4).tolist() == [2, 9, 9, 9]
    assert torch.equal(load("test"), test.images) and torch.equal(load("train"), train.images)
    assert not torch.equal(load("test", seed=1), test.images)
    # disjoint: no test image is among the training images
    flat_train = {bytes(img.numpy().tobytes()) for img in train.images}
    assert not any(bytes(img.numpy().tobytes()) in flat_train for img in test.images)
    with pytest.raises(RichKDError, match="one folder of class folders.*split_fraction=0.2"):
        load_dataset("imagefolder", messy, "train", cache_dir=tmp_path, folder=FolderOptions(image_size=16,
                                                                                            skip_bad=True))


def test_modes_exif_alpha_and_squash(tmp_path: Path) -> None:
    root = tmp_path / "f"
    for cls in ("a", "b"):
        (root / "train" / cls).mkdir(parents=True)
        (root / "test" / cls).mkdir(parents=True)
    # transparent red over nothing: white once composited, as a viewer shows it (not the hidden red)
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(root / "train" / "a" / "clear.png")
    # 16 wide x 8 high with EXIF "rotate 90": displayed 8 wide x 16 high, left half red, right half blue before
    im = Image.new("RGB", (16, 8), (255, 0, 0))
    im.paste((0, 0, 255), (8, 0, 16, 8))
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(root / "train" / "b" / "rot.png", exif=exif)
    Image.new("P", (8, 8)).save(root / "test" / "a" / "p.bmp")
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(root / "test" / "b" / "c.jpg")
    with pytest.raises(RichKDError, match="2 sizes"):
        load_dataset("imagefolder", root, "train", cache_dir=tmp_path / "c")
    squash = load_dataset("imagefolder", root, "train", cache_dir=tmp_path / "c",
                          folder=FolderOptions(image_size=8, resize="squash"))
    assert squash.images[0].tolist() == torch.full((3, 8, 8), 255, dtype=torch.uint8).tolist()
    rotated = squash.images[1]  # squashed, so both colours survive; rotation puts them top and bottom
    expected = np.asarray(Image.open(root / "train" / "b" / "rot.png").transpose(Image.Transpose.ROTATE_270)
                          .resize((8, 8), Image.Resampling.BILINEAR, reducing_gap=3.0)).transpose(2, 0, 1)
    assert rotated.numpy().tolist() == expected.tolist()
    crop = load_dataset("imagefolder", root, "train", cache_dir=tmp_path / "c", folder=FolderOptions(image_size=8))
    assert not torch.equal(crop.images[1], rotated)  # the centre crop of a tall image is not the whole of it
    # classify feeds a photo exactly as the run saw it, by the recorded resize policy
    from richkd.export.images import InputSpec, decode_image

    for resize, ds in (("squash", squash), ("shorter", crop)):
        spec = InputSpec(size=(8, 8), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize=resize)
        decoded = decode_image(root / "train" / "b" / "rot.png", spec)
        assert isinstance(decoded, np.ndarray) and decoded.tolist() == ds.images[1].tolist()


def test_class_names_and_zip_without_split(messy: Path, tmp_path: Path) -> None:
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(messy.rglob("*")):
            if path.is_file():
                zf.write(path, f"wrapped/{path.relative_to(messy)}")
        zf.writestr("__MACOSX/wrapped/cat/._1.png", b"\0\5\26\7")
    names = tmp_path / "names.tsv"
    names.write_text("# folder\tname\ncat\tdomestic cat\nfish\tgoldfish\n")
    opts = FolderOptions(image_size=16, skip_bad=True, split_fraction=0.2, class_names=str(names))
    ds = load_dataset("imagefolder", archive, "train", cache_dir=tmp_path / "c", folder=opts)
    assert ds.classes == ("bird", "domestic cat", "dog", "goldfish")
    from_dir = load_dataset("imagefolder", messy, "train", cache_dir=tmp_path / "c", folder=opts)
    assert torch.equal(ds.images, from_dir.images) and torch.equal(ds.labels, from_dir.labels)
    names.write_text("kat\tcat\n")
    with pytest.raises(RichKDError, match="not classes: kat"):
        load_dataset("imagefolder", archive, "train", cache_dir=tmp_path / "c", folder=opts)

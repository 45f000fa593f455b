"""ImageNet distribution-shift evaluation: layout recognition, the 200-class column protocol, `richkd shift`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from imagenet_layout import make_split
from richkd.cli import main
from richkd.errors import RichKDError
from richkd.robustness.shift import TopK, detect_layout
from richkd.teachers.imagenet_names import imagenet_wnids, subset_wnids

torch.set_num_threads(1)
HEAD = imagenet_wnids()[:10]  # a generated 10-class head over real wnids


def test_standard_layouts_are_recognised() -> None:
    classes = imagenet_wnids()
    index = {w: i for i, w in enumerate(classes)}
    for name in ("imagenet-r", "imagenet-a"):
        members = subset_wnids(name)
        layout = detect_layout(sorted(members), classes)
        assert layout.name == name
        assert layout.columns == tuple(sorted(index[w] for w in members))
        assert all(layout.columns[layout.folder_targets[w]] == index[w] for w in members)
    # a partial download keeps the protocol's 200 columns when the layout is named
    partial = detect_layout(subset_wnids("imagenet-r")[:3], classes, layout="imagenet-r")
    assert len(partial.columns) == 200
    assert detect_layout(subset_wnids("imagenet-r")[:3], classes).name == "subset"
    sketch = detect_layout(classes, classes)
    assert sketch.name == "imagenet-sketch" and sketch.columns == tuple(range(1000))
    v2 = detect_layout(["0", "10", "999"], classes)
    assert v2.name == "imagenet-v2" and v2.folder_targets == {"0": 0, "10": 10, "999": 999}
    assert len(v2.columns) == 1000


def test_bad_layouts_are_refused() -> None:
    with pytest.raises(RichKDError, match="'n99999999' is not a class of the model's head"):
        detect_layout(["n01440764", "n99999999"], imagenet_wnids())
    with pytest.raises(RichKDError, match="'n01440764' is not one of the 200 imagenet-r classes"):
        detect_layout(["n01440764"], imagenet_wnids(), layout="imagenet-r")
    with pytest.raises(RichKDError, match="'10' is no class index of a 10-class head"):
        detect_layout(["0", "10"], HEAD)
    with pytest.raises(RichKDError, match="needs folders named by class index"):
        detect_layout(list(HEAD[:2]), HEAD, layout="imagenet-v2")
    with pytest.raises(RichKDError, match="unknown --layout"):
        detect_layout(list(HEAD[:2]), HEAD, layout="imagenet-c")


def test_subset_scores_only_its_columns_by_hand() -> None:
    layout = detect_layout([HEAD[7], HEAD[2], HEAD[5]], HEAD)
    assert (layout.name, layout.columns) == ("subset", (2, 5, 7))
    assert layout.folder_targets == {HEAD[2]: 0, HEAD[5]: 1, HEAD[7]: 2}
    logits = torch.zeros(3, 10)
    logits[0, [9, 2, 5]] = torch.tensor([5.0, 3.0, 1.0])  # true HEAD[2]: head argmax 9, subset argmax 2 -> right
    logits[1, [5, 7]] = torch.tensor([2.0, 4.0])  # true HEAD[5]: subset argmax 7 -> wrong
    logits[2, [7, 0]] = torch.tensor([1.0, 9.0])  # true HEAD[7]: head argmax 0, subset argmax 7 -> right
    meter = TopK(layout.columns)
    meter.update(logits, layout.target_map([HEAD[2], HEAD[5], HEAD[7]]))
    assert meter.result() == {"top1": pytest.approx(200 / 3)}  # 3 columns: no top-5


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from richkd.engine.checkpoint import save_model
    from richkd.models import create_model

    root = tmp_path_factory.mktemp("shift")
    make_split(root, "r", classes=(HEAD[2], HEAD[5], HEAD[7]), per_class=2)  # an -R/-A style subset
    make_split(root, "v2", classes=("0", "3", "9"), per_class=2, seed=1)  # V2: folders are class indices
    model = create_model("resnet8", len(HEAD))
    fc = model.fc
    assert isinstance(fc, torch.nn.Linear)
    with torch.no_grad():  # the head prefers column 0 (outside the subset), then column 2
        fc.weight.zero_()
        fc.bias.copy_(torch.tensor([100.0, -1, 50, -2, -3, -4, -5, -6, -7, -8]))  # no ties: top-5 0,2,1,3,4
    save_model(root / "student.pt", model, arch="resnet8", num_classes=len(HEAD), classes=HEAD)
    return root


def _zero_shot_top1(folder: Path, columns: list[int]) -> float:
    """The random teacher's top-1 on `folder`, computed here from its pieces."""
    from richkd.caches.stream import vlm_view
    from richkd.data.stream import FolderSource
    from richkd.data.stream.transforms import decode_rgb
    from richkd.teachers.imagenet_names import resolve_templates, wnid_to_name
    from richkd.teachers.vlm import load_vlm
    from richkd.teachers.zero_shot import class_embeddings

    vlm = load_vlm("random:3")
    names = wnid_to_name("clip")
    class_emb = class_embeddings(vlm, [names[w] for w in HEAD], resolve_templates("imagenet80"), clean_names=True)
    source = FolderSource(folder)
    images = torch.stack([vlm_view(decode_rgb(source.read(r).data, ""), 16, "bicubic") for r in range(len(source))])
    cos = vlm.encode_images(images.float() / 255) @ class_emb.t()  # [N, 10]
    folder_cols = [int(c) if c.isdigit() else HEAD.index(c) for c in source.classes]
    truth = torch.tensor([folder_cols[label] for label in source.labels])
    pred = torch.tensor(columns)[cos[:, columns].argmax(dim=1)]
    return 100.0 * float((pred == truth).float().mean())


def test_shift_cli_maps_columns(sets: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = main(["shift", "--set", f"r={sets / 'r'}", "--set", f"v2={sets / 'v2'}", "--checkpoint",
                 f"student={sets / 'student.pt'}", "--teacher", "random:3", "--threads", "1", "--batch-size", "4",
                 "--out", str(out)])
    assert code == 0
    result = json.loads((out / "shift.json").read_text())
    r, v2 = result["sets"]["r"], result["sets"]["v2"]
    assert (r["layout"], r["images"], r["classes_scored"]) == ("subset", 6, 3)
    assert (v2["layout"], v2["images"], v2["classes_scored"]) == ("imagenet-v2", 6, 10)
    # the head's argmax is column 0 (no -R class) and, within the subset, column 2 (HEAD[2], 2 of 6 images);
    # on V2 the whole head counts: column 0 = folder "0", 2 of 6 images; top-5 adds folder "3", not "9"
    assert r["results"]["student"]["top1"] == pytest.approx(100 / 3)
    assert v2["results"]["student"] == {"top1": pytest.approx(100 / 3), "top5": pytest.approx(200 / 3)}
    assert r["results"]["teacher"]["top1"] == pytest.approx(_zero_shot_top1(sets / "r", [2, 5, 7]))
    assert v2["results"]["teacher"]["top1"] == pytest.approx(_zero_shot_top1(sets / "v2", list(range(10))))
    table = (out / "shift.md").read_text()
    assert "| r | subset | 6 | 3 | 33.33 |" in table


def test_shift_cli_refuses_unknown_wnids(sets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad"
    make_split(tmp_path, "bad", classes=(HEAD[1], imagenet_wnids()[500]), per_class=1)
    argv = ["shift", "--set", f"bad={bad}", "--checkpoint", f"s={sets / 'student.pt'}", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(rf"folder '{imagenet_wnids()[500]}' is not a class of the model's head", err[0])
    assert main(["shift", "--set", f"bad={bad}", "--out", str(tmp_path / "o")]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err

"""The pre-activation seam of issue 21 item 2, over every registered model: `ModelOutput.preact_stages` (the maps
before their last ReLU, mdistiller's `preact_feats`) and `ZooModel.bn_before_relu()` (mdistiller's
`get_bn_before_relu()`), checked against mdistiller's choice of BN written out here per family as state-dict keys.

BN affine parameters are randomised first, so a wrong BN (or a default-initialised one) cannot match by accident.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import randomise_bn_affine
from richkd.models import create_model, feature_shapes, model_names
from richkd.models.shufflenet_v1 import channel_shuffle

pytestmark = pytest.mark.usefixtures("one_thread")


def _last(keys: list[str], prefix: str) -> int:
    """Index of the last child under `prefix.` (e.g. the last block of a stage)."""
    return max(int(k[len(prefix) + 1 :].split(".")[0]) for k in keys if k.startswith(prefix + "."))


def _mdistiller_bns(name: str, keys: list[str]) -> list[str]:
    """mdistiller's get_bn_before_relu(), as our state-dict prefixes (one per preact_stages[1:] map)."""
    if name in ("resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4",
                "resnet32x4"):
        return [f"layer{k}.{_last(keys, f'layer{k}')}.bn2" for k in (1, 2, 3)]
    if name in ("resnet50", "resnet50_imagenet"):  # ImageNet: mdistiller lists layer2-4; we add layer1 in front
        return [f"layer{k}.{_last(keys, f'layer{k}')}.bn3" for k in (1, 2, 3, 4)]
    if name in ("resnet18_imagenet", "resnet34_imagenet"):
        return [f"layer{k}.{_last(keys, f'layer{k}')}.bn2" for k in (1, 2, 3, 4)]
    if name.startswith("wrn"):
        return ["block2.layer.0.bn1", "block3.layer.0.bn1", "bn1"]
    if name.startswith("vgg"):
        return [f"block{k}.{_last(keys, f'block{k}')}" for k in (1, 2, 3, 4)]
    if name == "mobilenetv2":
        return [f"blocks.{i}.{_last(keys, f'blocks.{i}')}.conv.7" for i in (1, 2, 4, 6)]
    if name == "mobilenetv1_imagenet":  # its preact_feats have no stem entry: [1:] is blocks 5, 11, 13
        return ["model.5.4", "model.11.4", "model.13.4"]
    if name == "shufflev1":  # mdistiller: none; the stage's last (stride-1) unit's bn3
        return [f"layer{k}.{_last(keys, f'layer{k}')}.bn3" for k in (1, 2, 3)]
    if name == "shufflev2":  # mdistiller: none; bn3 on the branch half, kept half N(0, 0), shuffled
        return [f"layer{k}.{_last(keys, f'layer{k}')}.bn3" for k in (1, 2, 3)]
    raise AssertionError(f"no mdistiller BN table written for {name}")


@pytest.mark.parametrize("name", model_names())
def test_every_model_exposes_preacts_and_the_bn_before_each_relu(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, 10)
    g = torch.Generator().manual_seed(1)
    randomise_bn_affine(model, g)
    model.eval()
    size = 64 if name.endswith("_imagenet") else 32
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size, generator=g))
    assert len(out.preact_stages) == len(out.stages)
    assert [p.shape for p in out.preact_stages] == [f.shape for f in out.stages]
    if name == "mobilenetv1_imagenet":  # mdistiller: no stem entry, map 0 is block 3's, pre-ReLU like the rest
        assert torch.equal(F.relu(out.preact_stages[0]), out.stages[0])
    else:
        assert torch.equal(out.preact_stages[0], out.stages[0])  # mdistiller: preact_feats[0] is the stem map
    sd = model.state_dict()
    for j, (pre, f) in enumerate(zip(out.preact_stages[1:], out.stages[1:], strict=True), start=1):
        assert (pre < 0).any(), (name, j)  # really before a ReLU
        if name == "mobilenetv2":  # linear bottlenecks: no ReLU follows, the map is its own pre-activation
            assert pre is f
        elif name.startswith("wrn"):  # the next block's BN applied to the (pre-activation) stage output
            key = _mdistiller_bns(name, list(sd))[j - 1]
            rm, rv, w, b = (sd[f"{key}.{p}"] for p in ("running_mean", "running_var", "weight", "bias"))
            want = (f - rm.view(1, -1, 1, 1)) / torch.sqrt(rv.view(1, -1, 1, 1) + 1e-5) * w.view(1, -1, 1, 1)
            torch.testing.assert_close(pre, want + b.view(1, -1, 1, 1), rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(F.relu(pre), f), (name, j)
    stats = model.bn_before_relu()
    keys = _mdistiller_bns(name, list(sd))
    assert len(stats) == len(keys) == len(out.stages) - 1
    for got, key in zip(stats, keys, strict=True):
        mean, std = sd[f"{key}.bias"], sd[f"{key}.weight"]
        if name == "shufflev2":
            zeros = torch.zeros_like(mean)
            mean = channel_shuffle(torch.cat([zeros, mean]).view(1, -1, 1, 1), 2).flatten()
            std = channel_shuffle(torch.cat([zeros, std]).view(1, -1, 1, 1), 2).flatten()
        assert torch.equal(got.mean, mean) and torch.equal(got.std, std), (name, key)
        assert got.mean.data_ptr() != sd[f"{key}.bias"].data_ptr()  # a copy: no consumer reaches into the model
    table = feature_shapes(model, size)
    assert len(table.bn_before_relu) == len(stats)
    assert [s.mean.shape[0] for s in table.bn_before_relu] == [c for c, _, _ in table.stages[1:]]

"""Backbones: torchvision bodies, frozen BN / stages, FPN shapes, pretrained weights without internet."""

from __future__ import annotations

import importlib.util
import urllib.error

import pytest
import torch
import torchvision

from umop.models.backbone import (
    TORCHVISION_BACKBONES,
    FrozenBatchNorm2d,
    WeightsUnavailableError,
    build_backbone,
    build_resnet,
    feature_size,
)


@pytest.mark.parametrize("name, c5", [("resnet18", 512), ("resnet50", 2048)])
def test_fpn_levels_shapes_and_strides(name, c5):
    backbone = build_backbone(name, out_channels=32).eval()
    assert backbone.strides == [8, 16, 32, 64, 128]
    assert backbone.fpn.inner_blocks[-1][0].in_channels == c5
    with torch.no_grad():
        features = backbone(torch.rand(1, 3, 160, 96))
    assert isinstance(features, list) and len(features) == 5
    expected = [(feature_size(160, s), feature_size(96, s)) for s in backbone.strides]
    assert [tuple(f.shape[-2:]) for f in features] == expected == [(20, 12), (10, 6), (5, 3), (3, 2), (2, 1)]
    assert all(f.shape[:2] == (1, 32) for f in features)


def test_all_torchvision_backbones_exist_in_torchvision():
    assert set(TORCHVISION_BACKBONES) == {
        "resnet18", "resnet34", "resnet50", "resnet101", "resnext101_32x8d", "resnext101_64x4d"}
    for constructor, weights in TORCHVISION_BACKBONES.values():
        assert callable(getattr(torchvision.models, constructor))
        assert getattr(torchvision.models, weights).IMAGENET1K_V1.url.startswith("https://")


def test_resnext_builds_with_grouped_convs():
    resnet = build_resnet("resnext101_32x8d")
    assert resnet.layer1[0].conv2.groups == 32
    assert isinstance(resnet.bn1, FrozenBatchNorm2d)


def test_frozen_batchnorm_and_stages():
    backbone = build_backbone("resnet34")
    body = backbone.body
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    frozen = [n for n, p in body.named_parameters() if not p.requires_grad]
    trainable = [n for n, p in body.named_parameters() if p.requires_grad]
    assert "conv1.weight" in frozen and all(n.startswith(("conv1", "layer1")) for n in frozen)
    assert any(n.startswith("layer1") for n in frozen)
    assert trainable and all(n.startswith(("layer2", "layer3", "layer4")) for n in trainable)
    assert all(p.requires_grad for p in backbone.fpn.parameters())
    nothing_frozen = build_backbone("resnet18", frozen_stages=-1)
    assert all(p.requires_grad for p in nothing_frozen.body.parameters())
    with pytest.raises(ValueError, match="frozen_stages"):
        build_backbone("resnet18", frozen_stages=7)


def test_local_weights_file_is_loaded(tmp_path):
    torch.manual_seed(0)
    source = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        source.bn1.running_mean.normal_()
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    backbone = build_backbone("resnet18", weights_path=path)
    assert torch.equal(backbone.body.conv1.weight, source.conv1.weight)
    assert torch.equal(backbone.body.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert torch.equal(backbone.body.bn1.running_mean, source.bn1.running_mean)


def test_local_weights_errors(tmp_path):
    with pytest.raises(ValueError, match="backbone_weights: file not found"):
        build_backbone("resnet18", weights_path=tmp_path / "missing.pth")
    path = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    with pytest.raises((ValueError, RuntimeError)):
        build_backbone("resnet18", weights_path=path)


def test_pretrained_without_internet_explains_the_local_file_option(monkeypatch):
    calls = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailableError) as info:
        build_backbone("resnet50", pretrained=True)
    message = str(info.value)
    assert calls == [torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url]
    assert "internet" in message and "backbone_weights=" in message and calls[0] in message


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is installed")
def test_timm_backbone_without_timm_is_a_clear_error():
    with pytest.raises(ImportError, match=r"pip install 'umop\[timm\]'"):
        build_backbone("swin_t")


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ValueError, match="resnet50"):
        build_backbone("vgg16")


def test_frozen_batch_norm_equals_torchvision_in_float32_and_keeps_bf16():
    from torchvision.ops.misc import FrozenBatchNorm2d as TorchvisionFrozenBatchNorm2d

    from umop.layers import FrozenBatchNorm2d as LayersFrozenBatchNorm2d

    generator = torch.Generator().manual_seed(0)
    assert LayersFrozenBatchNorm2d is FrozenBatchNorm2d                # umop.models re-exports it
    ours, theirs = FrozenBatchNorm2d(8, eps=1e-5), TorchvisionFrozenBatchNorm2d(8, eps=1e-5)
    state = {"weight": torch.rand(8, generator=generator) + 0.5, "bias": torch.randn(8, generator=generator),
             "running_mean": torch.randn(8, generator=generator),
             "running_var": torch.rand(8, generator=generator) + 0.1}
    ours.load_state_dict(state)
    theirs.load_state_dict(state)
    x = torch.randn(2, 8, 5, 7, generator=generator)
    assert torch.equal(ours(x), theirs(x))                      # bit-identical in float32
    low = ours(x.bfloat16())
    assert low.dtype == torch.bfloat16                          # torchvision's would promote to float32
    assert theirs(x.bfloat16()).dtype == torch.float32
    # bf16 rounding of scale, bias and the two ops, against float32 on the same bf16 input
    reference = theirs(x.bfloat16().float())
    scale = state["weight"] / (state["running_var"] + 1e-5).sqrt()
    bias = state["bias"] - state["running_mean"] * scale
    terms = x.abs() * scale.abs().view(1, -1, 1, 1) + bias.abs().view(1, -1, 1, 1)   # |x * scale| + |bias|
    assert ((low.float() - reference).abs() <= 4 * 2 ** -8 * terms).all()     # a few bf16 roundings (eps 2^-8)
    # the backbone uses it, and a state dict with num_batches_tracked (from nn.BatchNorm2d) still loads
    assert isinstance(build_backbone("resnet18", out_channels=32).body.bn1, FrozenBatchNorm2d)
    ours.load_state_dict({**state, "num_batches_tracked": torch.tensor(3)})


def test_channels_last_max_pool_equals_max_pool_in_every_path():
    from umop.layers import ChannelsLastMaxPool2d

    pool, reference = ChannelsLastMaxPool2d(3, 2, 1), torch.nn.MaxPool2d(3, 2, 1)
    x = torch.randn(2, 5, 13, 10, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():                                  # the channels_last path
        out = pool(x)
    assert torch.equal(out, reference(x)) and out.is_contiguous()
    leaf = x.clone().requires_grad_()                      # the NCHW path, same gradient
    pool(leaf).square().sum().backward()
    expected = x.clone().requires_grad_()
    reference(expected).square().sum().backward()
    assert torch.equal(leaf.grad, expected.grad)
    channels_last = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(pool(channels_last), reference(x))
    assert isinstance(build_backbone("resnet18", out_channels=32).body.maxpool, ChannelsLastMaxPool2d)

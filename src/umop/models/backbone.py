"""Backbones: torchvision ResNet / ResNeXt bodies (optionally timm) + FPN P3-P7.

The module returned by :func:`build_backbone` maps the normalised, padded batch ``(B, 3, H, W)`` to the
list of FPN maps ``[P3, P4, P5, P6, P7]``, each ``(B, out_channels, H_l, W_l)`` with
``H_l = ceil(H / stride_l)``, strides ``[8, 16, 32, 64, 128]`` (FPN, Lin et al. 2017; RetinaNet Sec. 4).

Parameter names follow torchvision's ``BackboneWithFPN`` (``body.*``, ``fpn.*``) so that the weights of
``torchvision.models.detection.retinanet_resnet50_fpn`` load without renaming.
"""

from __future__ import annotations

import math
import urllib.error
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor, nn
from torchvision import models as tv_models
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7

from ..errors import MissingDependencyError, UserError
from ..layers import ChannelsLastMaxPool2d, FrozenBatchNorm2d

__all__ = [
    "FrozenBatchNorm2d",
    "FPNBackbone",
    "TORCHVISION_BACKBONES",
    "TIMM_BACKBONES",
    "WeightsUnavailableError",
    "build_backbone",
    "build_resnet",
    "freeze_stages",
]

# name -> (torchvision constructor name, torchvision weights enum name)
TORCHVISION_BACKBONES: dict[str, tuple[str, str]] = {
    "resnet18": ("resnet18", "ResNet18_Weights"),
    "resnet34": ("resnet34", "ResNet34_Weights"),
    "resnet50": ("resnet50", "ResNet50_Weights"),
    "resnet101": ("resnet101", "ResNet101_Weights"),
    "resnext101_32x8d": ("resnext101_32x8d", "ResNeXt101_32X8D_Weights"),
    "resnext101_64x4d": ("resnext101_64x4d", "ResNeXt101_64X4D_Weights"),
}

# Short names of the timm backbones of UMOP Table 3 (any other timm model: "timm:<model_name>").
TIMM_BACKBONES: dict[str, str] = {
    "res2net50": "res2net50_26w_4s",
    "res2net101": "res2net101_26w_4s",
    "swin_t": "swin_tiny_patch4_window7_224",
    "swin_s": "swin_small_patch4_window7_224",
    "swin_b": "swin_base_patch4_window7_224",
}


class WeightsUnavailableError(UserError, RuntimeError):
    """Pretrained backbone weights could not be obtained (no internet and no local file)."""


def freeze_stages(resnet: nn.Module, frozen_stages: int) -> None:
    """Freeze the stem (``frozen_stages >= 0``) and ``layer1..layer{frozen_stages}`` of a ResNet.

    ``frozen_stages=1`` is the standard 1x recipe (mmdetection ``frozen_stages=1``; torchvision
    ``trainable_backbone_layers=3``). ``-1`` freezes nothing.
    """
    if frozen_stages < -1 or frozen_stages > 4:
        raise ValueError(f"frozen_stages must be in [-1, 4], got {frozen_stages}")
    names = [] if frozen_stages < 0 else ["conv1", "bn1"] + [f"layer{i}" for i in range(1, frozen_stages + 1)]
    for name, parameter in resnet.named_parameters():
        if any(name == n or name.startswith(n + ".") for n in names):
            parameter.requires_grad_(False)


def _load_pretrained_state_dict(name: str, weights_path: Optional[str | Path]) -> dict[str, Tensor]:
    """ImageNet weights for a torchvision backbone: from ``weights_path`` or torchvision's URL (cached)."""
    if weights_path is not None:
        path = Path(weights_path)
        if not path.is_file():
            raise ValueError(f"backbone_weights: file not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ValueError(f"backbone_weights: {path} does not hold a state_dict")
        return state
    _, enum_name = TORCHVISION_BACKBONES[name]
    weights = getattr(tv_models, enum_name).IMAGENET1K_V1
    try:
        return torch.hub.load_state_dict_from_url(weights.url, progress=False, check_hash=True)
    except (urllib.error.URLError, OSError, ConnectionError, RuntimeError) as error:
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise WeightsUnavailableError(
            f"pretrained_backbone=True needs torchvision's ImageNet weights for {name!r}, which are downloaded "
            f"from {weights.url} and that download failed (no internet access?): {error}. "
            f"Either copy that file into {cache} (torch hub cache), or download it elsewhere and pass "
            f"--set model.options.backbone_weights=/path/to/{Path(weights.url).name} (a torchvision "
            f"state_dict), or use --set model.pretrained_backbone=false."
        ) from error


def build_resnet(
    name: str = "resnet50",
    *,
    pretrained: bool = False,
    weights_path: Optional[str | Path] = None,
    norm_layer: Callable[[int], nn.Module] = FrozenBatchNorm2d,
    frozen_stages: int = 1,
) -> nn.Module:
    """A torchvision ResNet/ResNeXt (classification model) with frozen BN and frozen early stages."""
    if name not in TORCHVISION_BACKBONES:
        raise ValueError(f"backbone: unknown torchvision backbone {name!r}; valid: {sorted(TORCHVISION_BACKBONES)}")
    constructor, _ = TORCHVISION_BACKBONES[name]
    resnet = getattr(tv_models, constructor)(weights=None, norm_layer=norm_layer)
    resnet.maxpool = ChannelsLastMaxPool2d(kernel_size=3, stride=2, padding=1)  # same op, vectorised on CPU
    if pretrained or weights_path is not None:
        state = _load_pretrained_state_dict(name, weights_path)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        expected = resnet.state_dict()
        mismatched = [k for k, v in state.items()
                      if k in expected and hasattr(v, "shape") and tuple(v.shape) != tuple(expected[k].shape)]
        if mismatched:  # one line, not one per tensor: these are weights of another architecture
            first = mismatched[0]
            raise ValueError(
                f"backbone_weights {weights_path or ''} do not fit {name}: {len(mismatched)} of {len(expected)} "
                f"tensors have other shapes (e.g. {first}: {tuple(state[first].shape)} in the file, "
                f"{tuple(expected[first].shape)} in {name}); are they weights of another backbone?")
        missing, unexpected = resnet.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise ValueError(
                f"backbone_weights do not fit {name}: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
    freeze_stages(resnet, frozen_stages)
    return resnet


class FPNBackbone(nn.Module):
    """Body (C3, C4, C5) + FPN with two extra levels (P6, P7).

    Args:
        body: module mapping ``(B, 3, H, W)`` to an ``OrderedDict`` of C3, C4, C5 (in that order).
        in_channels_list: channels of C3, C4, C5.
        out_channels: FPN channels (256 in RetinaNet / FCOS / ATSS).
        extra_source: ``"p5"`` (P6 = conv(P5), torchvision ``retinanet_resnet50_fpn``, mmdetection
            ``add_extra_convs="on_output"``) or ``"c5"`` (P6 = conv(C5), the RetinaNet paper).
        channels_last: return nothing different, but runs the convolutions in ``channels_last`` memory
            format (faster on some CPUs / tensor cores).

    ``forward(x: (B, 3, H, W)) -> list[Tensor]`` of ``(B, out_channels, ceil(H/s), ceil(W/s))`` for
    s in ``strides``.
    """

    strides: list[int] = [8, 16, 32, 64, 128]

    def __init__(
        self,
        body: nn.Module,
        in_channels_list: list[int],
        out_channels: int = 256,
        extra_source: str = "p5",
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if extra_source not in ("p5", "c5"):
            raise ValueError(f"extra_source must be 'p5' or 'c5', got {extra_source!r}")
        self.body = body
        extra_in = out_channels if extra_source == "p5" else in_channels_list[-1]
        if extra_source == "c5" and extra_in == out_channels:
            raise ValueError("extra_source='c5' needs C5 channels != out_channels (torchvision LastLevelP6P7 rule)")
        self.fpn = FeaturePyramidNetwork(in_channels_list, out_channels, extra_blocks=LastLevelP6P7(extra_in, out_channels))
        self.out_channels = out_channels
        self.channels_last = channels_last
        self.strides = list(FPNBackbone.strides)

    def forward(self, x: Tensor) -> list[Tensor]:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        features = self.fpn(self.body(x))
        return list(features.values())


class _TimmBody(nn.Module):
    """timm ``features_only`` model returning C3, C4, C5 as NCHW in an OrderedDict."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        outputs = self.model(x)
        channels = self.model.feature_info.channels()
        result = OrderedDict()
        for i, (feature, c) in enumerate(zip(outputs, channels)):
            if feature.shape[1] != c and feature.shape[-1] == c:  # NHWC (Swin)
                feature = feature.permute(0, 3, 1, 2).contiguous()
            result[str(i)] = feature
        return result


def _build_timm_body(name: str, pretrained: bool) -> tuple[nn.Module, list[int]]:
    try:
        import timm  # type: ignore[import-not-found]
    except ImportError as error:
        raise MissingDependencyError(
            f"backbone {name!r} needs the optional package timm, which is not installed: pip install 'umop[timm]' "
            f"(or pip install timm), or choose a torchvision backbone (--set model.backbone=resnet50)"
        ) from error
    model_name = TIMM_BACKBONES.get(name, name.removeprefix("timm:"))
    # C3, C4, C5 = feature stages 1..3 (strides 8, 16, 32). timm's Swin checks the input size it was built
    # for unless the installed timm supports ``strict_img_size=False``; it returns NHWC maps (handled above).
    kwargs = {"features_only": True, "out_indices": (1, 2, 3), "pretrained": pretrained}
    if "swin" in model_name:
        kwargs["strict_img_size"] = False
    model = timm.create_model(model_name, **kwargs)
    return _TimmBody(model), list(model.feature_info.channels())


def build_backbone(
    name: str = "resnet50",
    *,
    pretrained: bool = False,
    weights_path: Optional[str | Path] = None,
    out_channels: int = 256,
    frozen_stages: int = 1,
    extra_source: str = "p5",
    channels_last: bool = False,
    norm: str = "frozen_bn",
) -> FPNBackbone:
    """Build ``name`` (see :data:`TORCHVISION_BACKBONES`, :data:`TIMM_BACKBONES` or ``"timm:<model>"``)
    with an FPN P3-P7 of ``out_channels`` channels.

    ``pretrained=True`` loads torchvision's ImageNet weights (needs the internet once, then torch's hub
    cache); ``weights_path`` loads a local torchvision state_dict instead. Raises
    :class:`WeightsUnavailableError` with instructions when the download fails.
    ``norm``: ``"frozen_bn"`` (the standard recipe with ImageNet weights) or ``"bn"`` (trainable batch norm,
    for training a torchvision backbone from scratch).
    """
    norms = {"frozen_bn": FrozenBatchNorm2d, "bn": nn.BatchNorm2d}
    if norm not in norms:
        raise ValueError(f"norm must be one of {sorted(norms)}, got {norm!r}")
    if name in TORCHVISION_BACKBONES:
        resnet = build_resnet(name, pretrained=pretrained, weights_path=weights_path, frozen_stages=frozen_stages,
                              norm_layer=norms[norm])
        body = IntermediateLayerGetter(resnet, return_layers={"layer2": "0", "layer3": "1", "layer4": "2"})
        c5 = resnet.inplanes  # 512 (basic block) or 2048 (bottleneck)
        in_channels = [c5 // 4, c5 // 2, c5]
    elif name in TIMM_BACKBONES or name.startswith("timm:"):
        if weights_path is not None:
            raise ValueError("backbone_weights is only supported for torchvision backbones")
        body, in_channels = _build_timm_body(name, pretrained)
    else:
        valid = sorted(TORCHVISION_BACKBONES) + sorted(TIMM_BACKBONES) + ["timm:<model_name>"]
        raise ValueError(f"backbone: unknown name {name!r}; valid: {valid}")
    return FPNBackbone(body, in_channels, out_channels, extra_source=extra_source, channels_last=channels_last)


def feature_size(size: int, stride: int) -> int:
    """Spatial size of the level of ``stride`` for an input of ``size`` pixels (stride-2 convs: ceil)."""
    for _ in range(int(math.log2(stride))):
        size = (size + 1) // 2
    return size

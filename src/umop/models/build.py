"""``build_detector(name, num_classes, ...)``: the one entry point to the four detectors and their remedies.

The classification loss, the box loss, the sampler and the sample reweighting are components, each a
registered name with typed options (``umop.losses.CLS_LOSSES``, ``umop.losses.BOX_LOSSES``,
``umop.samplers.SAMPLERS``, ``umop.samplers.REWEIGHTINGS``) or a ready module; :func:`check_model_options` validates
every name and option (nearest valid name in the error) without building the network, which is what config
loading calls.
"""

from __future__ import annotations

import difflib
import inspect
from pathlib import Path
from typing import Any, Mapping, Optional

from torch import nn

from ..losses import BOX_LOSSES, CLS_LOSSES, PISA, BoxLoss, ClassificationLoss
from ..samplers import REWEIGHTINGS, SAMPLERS, Sampler
from .atss import ATSS
from .backbone import build_backbone
from .detector import OneStageDetector, check_components
from .fcos import FCOS
from .retinanet import RetinaNet
from .vfnet import VFNet

__all__ = ["DETECTORS", "COMPONENTS", "build_detector", "build_components", "check_detector_options",
           "check_model_options"]

DETECTORS: dict[str, type[OneStageDetector]] = {"retinanet": RetinaNet, "atss": ATSS, "fcos": FCOS, "vfnet": VFNet}

# build_detector's own keyword arguments (the backbone); everything else goes to the detector class.
BACKBONE_OPTIONS = ("backbone_weights", "fpn_channels", "frozen_stages", "extra_source", "channels_last",
                    "backbone_norm")


def _did_you_mean(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def detector_options(name: str) -> list[str]:
    """The keyword options of detector ``name`` (its class, :class:`OneStageDetector`, the backbone's)."""
    names: list[str] = list(BACKBONE_OPTIONS)
    for cls in (DETECTORS[name], OneStageDetector):
        for param in list(inspect.signature(cls.__init__).parameters.values())[1:]:
            if param.kind == param.KEYWORD_ONLY and param.name not in names:
                names.append(param.name)
    return [n for n in names if n not in ("cls_loss", "box_loss", "sampler", "reweighting")]


def check_detector_options(name: str, options: Mapping[str, Any], where: str = "options",
                           elsewhere: Optional[Mapping[str, str]] = None) -> None:
    """ValueError naming an unknown detector option and the nearest valid one.

    ``elsewhere``: option name -> where it belongs (e.g. ``{"delta": "cls_loss_options.delta"}``), so that a
    loss option given as a detector option is pointed to its place.
    """
    if name not in DETECTORS:
        raise ValueError(f"name: unknown detector {name!r}{_did_you_mean(str(name), list(DETECTORS))}; "
                         f"valid names: {sorted(DETECTORS)}")
    valid = detector_options(name)
    elsewhere = dict(elsewhere or {})
    for key in options:
        if key in valid:
            continue
        close = difflib.get_close_matches(key, valid + list(elsewhere), n=1, cutoff=0.5)
        hint = f"; did you mean {elsewhere.get(close[0], close[0])!r}?" if close else ""
        raise ValueError(f"{where}: unknown option {key!r} of detector {name!r}{hint} (valid: {sorted(valid)})")


COMPONENTS = ("cls_loss", "box_loss", "sampler", "reweighting")
_REGISTRIES = {"cls_loss": CLS_LOSSES, "box_loss": BOX_LOSSES, "sampler": SAMPLERS, "reweighting": REWEIGHTINGS}


def build_components(name: str, specs: Mapping[str, tuple[Any, Optional[Mapping[str, Any]]]]) -> dict[str, Any]:
    """Build (and check the combination of) the loss components of detector ``name``.

    ``specs``: component key (``cls_loss``, ``box_loss``, ``sampler``, ``reweighting``) -> ``(name or module or
    None, options)``. ``None`` gives the detector's default (``default_cls_loss`` / ``default_box_loss``; no
    sampler, no reweighting). Options of a name are validated by its registry; a module is taken as given.
    Returns ``{"cls_loss", "box_loss", "sampler", "reweighting"}`` (modules or None).
    """
    check_detector_options(name, {})
    cls = DETECTORS[name]
    defaults = {"cls_loss": cls.default_cls_loss, "box_loss": cls.default_box_loss}
    components: dict[str, Any] = {}
    for key in COMPONENTS:
        value, options = specs.get(key, (None, None))
        value = defaults.get(key) if value is None else value
        if value is None:
            if options:
                raise ValueError(f"{key}_options {dict(options)} given without a {key}")
            components[key] = None
            continue
        try:
            components[key] = _REGISTRIES[key].build(value, **dict(options or {}))
        except ValueError as error:  # name the argument: "cls_loss: unknown classification loss ..."
            raise ValueError(f"{key}: {error}") from None
    check_components(name, components["cls_loss"], components["box_loss"], components["sampler"],
                     components["reweighting"], has_delta_coder=cls.has_delta_coder,
                     supports_log_var=cls.supports_log_var, has_prior_ious=cls.has_prior_ious)
    return components


def _component_option_places(name: str, specs: Mapping[str, tuple[Any, Any]], prefix: str) -> dict[str, str]:
    """Option name -> where it belongs (``prefix + "cls_loss_options." + option``) for the named components
    (``None`` = the detector's default); an unknown component name is a ValueError with the nearest one."""
    defaults = {"cls_loss": DETECTORS[name].default_cls_loss, "box_loss": DETECTORS[name].default_box_loss}
    places: dict[str, str] = {}
    for key in COMPONENTS:
        value = specs.get(key, (None, None))[0]
        value = defaults.get(key) if value is None else value
        if isinstance(value, str):
            try:
                entry = _REGISTRIES[key].entry(value)
            except ValueError as error:
                raise ValueError(f"{key}: {error}") from None
            for option in entry.options:
                places.setdefault(option, f"{prefix}{key}_options.{option}")
    return places


def check_model_options(name: str, specs: Mapping[str, tuple[Any, Any]],
                        options: Optional[Mapping[str, Any]] = None) -> None:
    """Validate a model description without building the network (config loading): the detector name and
    options (``model.options``), every component name and option (``specs`` as in :func:`build_components`),
    and their combination. ValueError naming the key and the nearest valid name."""
    check_detector_options(name, {})
    check_detector_options(name, options or {}, "model.options", _component_option_places(name, specs, "model."))
    build_components(name, specs)


def build_detector(
    name: str,
    num_classes: int,
    *,
    backbone: str | nn.Module = "resnet50",
    pretrained_backbone: bool = False,
    cls_loss: ClassificationLoss | str | None = None,
    box_loss: BoxLoss | str | None = None,
    sampler: Sampler | str | None = None,
    reweighting: PISA | str | None = None,
    cls_loss_options: Optional[Mapping[str, Any]] = None,
    box_loss_options: Optional[Mapping[str, Any]] = None,
    sampler_options: Optional[Mapping[str, Any]] = None,
    reweighting_options: Optional[Mapping[str, Any]] = None,
    backbone_weights: Optional[str | Path] = None,
    fpn_channels: int = 256,
    frozen_stages: int = 1,
    extra_source: str = "p5",
    channels_last: bool = False,
    backbone_norm: str = "frozen_bn",
    **options: Any,
) -> OneStageDetector:
    """Build a one-stage detector.

    Args:
        name: ``"retinanet"``, ``"atss"``, ``"fcos"`` or ``"vfnet"``.
        num_classes: number of object classes (no background).
        backbone: a backbone name (``umop.models.backbone.TORCHVISION_BACKBONES`` / ``TIMM_BACKBONES`` /
            ``"timm:<model>"``) or a ready FPN backbone module (list of P3..P7 maps, ``out_channels``).
        pretrained_backbone: load torchvision's ImageNet weights (needs the internet or torch's hub cache).
        cls_loss: a name of ``umop.losses.CLS_LOSSES`` (``focal``, ``pfl``, ``pfl_mean``, ``varifocal``, ...)
            or a :class:`umop.losses.ClassificationLoss`; ``None``: the detector's default (focal; varifocal
            for VFNet).
        box_loss: a name of ``umop.losses.BOX_LOSSES`` or a :class:`umop.losses.BoxLoss`; ``None``: the
            detector's default (L1 on deltas for RetinaNet, GIoU for the others).
        sampler: a name of ``umop.samplers.SAMPLERS`` (``ohem``, ``iou_balanced``, ``random``) or a module.
        reweighting: ``"pisa"`` (ISR-P + CARL) or a :class:`umop.losses.PISA`.
        cls_loss_options, box_loss_options, sampler_options, reweighting_options: the typed options of a named
            component (e.g. ``cls_loss_options={"delta": 0.5}`` for PFL), validated by its registry.
        backbone_weights: local torchvision state_dict file for the backbone (instead of downloading).
        fpn_channels, frozen_stages, extra_source, channels_last, backbone_norm: see :func:`build_backbone`
            (``out_channels``, ..., ``norm``).
        **options: detector options (``loss_weights``, head options, inference thresholds, ...); an unknown
            one is a ValueError naming the nearest valid option.

    A combination that makes no sense (a ranking loss with a sampler, a deltas box loss on a detector without
    a delta coder, ...) is a ValueError naming both parts.
    """
    specs = {"cls_loss": (cls_loss, cls_loss_options), "box_loss": (box_loss, box_loss_options),
             "sampler": (sampler, sampler_options), "reweighting": (reweighting, reweighting_options)}
    check_detector_options(name, {})
    check_detector_options(name, options, "options", _component_option_places(name, specs, ""))
    components = build_components(name, specs)
    if isinstance(backbone, str):
        backbone = build_backbone(
            backbone, pretrained=pretrained_backbone, weights_path=backbone_weights, out_channels=fpn_channels,
            frozen_stages=frozen_stages, extra_source=extra_source, channels_last=channels_last,
            norm=backbone_norm,
        )
    elif not isinstance(backbone, nn.Module):
        raise ValueError(f"backbone must be a name or an nn.Module, got {type(backbone).__name__}")
    return DETECTORS[name](backbone, num_classes, **components, **options)

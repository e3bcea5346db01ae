"""build_detector: the name table, option pass-through, errors."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import umop.models
from umop.models import DETECTORS, OneStageDetector, RetinaNet, build_backbone, build_detector


def test_table_lists_the_four_detectors():
    assert set(DETECTORS) == {"retinanet", "atss", "fcos", "vfnet"}
    assert umop.models.build_detector is build_detector


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown detector 'yolo'.*atss.*fcos.*retinanet.*vfnet"):
        build_detector("yolo", 3)


def test_retinanet_options_pass_through():
    model = build_detector("retinanet", 5, backbone="resnet18", cls_loss="pfl_mean", fpn_channels=64, delta=0.3,
                           estimator="paper", box_loss="giou", score_thresh=0.1)
    assert isinstance(model, RetinaNet) and isinstance(model, OneStageDetector)
    assert model.num_classes == 5 and model.strides == [8, 16, 32, 64, 128]
    assert model.cls_loss == "pfl_mean" and model.delta == 0.3 and model.estimator == "paper"
    assert model.box_loss == "giou" and model.score_thresh == 0.1
    assert model.backbone.out_channels == 64
    assert model.head.classification_head.cls_logits.out_channels == 9 * 5
    # mmdetection 1x inference defaults (RetinaNet's NMS IoU 0.5, also torchvision's)
    assert (model.nms_thresh, model.detections_per_img, model.topk_candidates) == (0.5, 100, 1000)


def test_backbone_module_is_used_as_given():
    backbone = build_backbone("resnet18", out_channels=32)
    model = build_detector("retinanet", 2, backbone=backbone)
    assert model.backbone is backbone
    with pytest.raises(ValueError, match="backbone"):
        build_detector("retinanet", 2, backbone=3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        build_detector("retinanet", 0, backbone="resnet18")
    with pytest.raises(ValueError, match="cls_loss"):
        build_detector("retinanet", 2, backbone="resnet18", cls_loss="varifocal")
    with pytest.raises(ValueError, match="delta"):
        build_detector("retinanet", 2, backbone="resnet18", cls_loss="pfl", delta=-1.0)
    with pytest.raises(ValueError, match="backbone"):
        build_detector("retinanet", 2, backbone="alexnet")


@pytest.mark.parametrize("name", ["atss", "fcos", "vfnet"])
def test_other_detectors_build_when_available(name):
    module_name, _ = DETECTORS[name]
    if importlib.util.find_spec(module_name) is None:
        pytest.skip(f"{module_name} not written yet")
    model = build_detector(name, 3, backbone="resnet18", fpn_channels=64, cls_loss="pfl")
    assert isinstance(model, OneStageDetector) and model.cls_loss == "pfl"
    result = model.assign_targets((96, 128), [{"boxes": torch.tensor([[8.0, 8.0, 60.0, 70.0]]), "labels": torch.tensor([1])}])
    assert result.labels.shape[1] == sum(result.num_anchors_per_level)
    assert (result.labels == 1).any()

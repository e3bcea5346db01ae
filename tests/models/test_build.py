"""build_detector: the name table, option pass-through, errors."""

from __future__ import annotations

import pytest
import torch

import umop.models
from umop.losses import FocalLoss, GIoULoss, L1Loss, ProgressiveFocalLoss, VarifocalLoss
from umop.models import DETECTORS, OneStageDetector, RetinaNet, build_backbone, build_detector


def test_table_lists_the_four_detectors():
    assert set(DETECTORS) == {"retinanet", "atss", "fcos", "vfnet"}
    assert umop.models.build_detector is build_detector


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown detector 'yolo'.*atss.*fcos.*retinanet.*vfnet"):
        build_detector("yolo", 3)


def test_retinanet_options_pass_through():
    model = build_detector("retinanet", 5, backbone="resnet18", cls_loss="pfl_mean", fpn_channels=64,
                           cls_loss_options={"delta": 0.3, "estimator": "paper"}, box_loss="giou", score_thresh=0.1)
    assert isinstance(model, RetinaNet) and isinstance(model, OneStageDetector)
    assert model.num_classes == 5 and model.strides == [8, 16, 32, 64, 128]
    assert isinstance(model.cls_loss, ProgressiveFocalLoss) and model.cls_loss.level_reduction == "mean"
    assert model.cls_loss.delta == 0.3 and model.cls_loss.estimator == "paper"
    assert isinstance(model.box_loss, GIoULoss) and model.score_thresh == 0.1
    assert model.backbone.out_channels == 64
    assert model.head.classification_head.cls_logits.out_channels == 9 * 5
    # mmdetection 1x inference defaults (RetinaNet's NMS IoU 0.5, also torchvision's)
    assert (model.nms_thresh, model.detections_per_img, model.topk_candidates) == (0.5, 100, 1000)


def test_modules_are_injected_as_given():
    cls_loss, box_loss = FocalLoss(alpha=0.5), GIoULoss()
    model = build_detector("atss", 2, backbone="resnet18", fpn_channels=32, cls_loss=cls_loss, box_loss=box_loss)
    assert model.cls_loss is cls_loss and model.box_loss is box_loss
    with pytest.raises(ValueError, match="already built"):
        build_detector("atss", 2, backbone="resnet18", cls_loss=cls_loss, cls_loss_options={"alpha": 0.3})


def test_default_components_and_weight_tables():
    expected = {"retinanet": (FocalLoss, L1Loss, {"loss_cls": 1.0, "loss_box": 1.0}),
                "atss": (FocalLoss, GIoULoss, {"loss_cls": 1.0, "loss_box": 2.0, "loss_centerness": 1.0}),
                "fcos": (FocalLoss, GIoULoss, {"loss_cls": 1.0, "loss_box": 1.0, "loss_centerness": 1.0}),
                "vfnet": (VarifocalLoss, GIoULoss, {"loss_cls": 1.0, "loss_box": 2.0, "loss_box_init": 1.5})}
    for name, (cls_type, box_type, weights) in expected.items():
        model = build_detector(name, 2, backbone="resnet18", fpn_channels=32)
        assert type(model.cls_loss) is cls_type and type(model.box_loss) is box_type, name
        assert model.loss_weights == weights, name
    model = build_detector("atss", 2, backbone="resnet18", fpn_channels=32, loss_weights={"loss_box": 1.0})
    assert model.loss_weights["loss_box"] == 1.0
    with pytest.raises(ValueError, match="loss_weights: unknown term 'loss_bx'"):
        build_detector("atss", 2, backbone="resnet18", fpn_channels=32, loss_weights={"loss_bx": 1.0})


def test_backbone_module_is_used_as_given():
    backbone = build_backbone("resnet18", out_channels=32)
    model = build_detector("retinanet", 2, backbone=backbone)
    assert model.backbone is backbone
    with pytest.raises(ValueError, match="backbone"):
        build_detector("retinanet", 2, backbone=3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        build_detector("retinanet", 0, backbone="resnet18")
    with pytest.raises(ValueError, match="unknown classification loss 'varifokal'.*'varifocal'"):
        build_detector("retinanet", 2, backbone="resnet18", cls_loss="varifokal")
    with pytest.raises(ValueError, match="delta"):
        build_detector("retinanet", 2, backbone="resnet18", cls_loss="pfl", cls_loss_options={"delta": -1.0})
    with pytest.raises(ValueError, match="backbone"):
        build_detector("retinanet", 2, backbone="alexnet")


def test_unknown_options_name_the_nearest_valid_one():
    with pytest.raises(ValueError, match="unknown option 'scor_thresh'.*did you mean 'score_thresh'"):
        build_detector("atss", 2, backbone="resnet18", scor_thresh=0.1)
    # a loss option given as a detector option is pointed to its place
    with pytest.raises(ValueError, match="unknown option 'detla'.*did you mean 'cls_loss_options.delta'"):
        build_detector("atss", 2, backbone="resnet18", cls_loss="pfl", detla=0.5)
    with pytest.raises(ValueError, match="unknown option 'detla' for 'pfl'.*did you mean 'delta'"):
        build_detector("atss", 2, backbone="resnet18", cls_loss="pfl", cls_loss_options={"detla": 0.5})


@pytest.mark.parametrize("name", ["atss", "fcos", "vfnet"])
def test_other_detectors_build(name):
    model = build_detector(name, 3, backbone="resnet18", fpn_channels=64, cls_loss="pfl")
    assert isinstance(model, DETECTORS[name]) and isinstance(model.cls_loss, ProgressiveFocalLoss)
    result = model.assign_targets((96, 128), [{"boxes": torch.tensor([[8.0, 8.0, 60.0, 70.0]]), "labels": torch.tensor([1])}])
    assert result.labels.shape[1] == sum(result.num_anchors_per_level)
    assert (result.labels == 1).any()


def test_all_detectors_and_assigners_are_exported():
    import umop.assigners
    for name in ("RetinaNet", "ATSS", "FCOS", "VFNet"):
        assert getattr(umop.models, name) is DETECTORS[name.lower()]
    for name in ("MaxIoUAssigner", "ATSSAssigner", "FCOSAssigner"):
        assert callable(getattr(umop.assigners, name))

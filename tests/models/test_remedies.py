"""Every remedy x every detector it fits takes one training step on two real BCCD images with finite losses
and gradients; every combination that does not fit is a ValueError at build time naming both parts.

The fit table below is written out by hand from the rules in docs/REMEDIES.md (it is the expected answer,
not derived from the code): box losses on encoded deltas need a delta box coder (RetinaNet, ATSS), the KL
loss a head with a variance branch (the same two), IoU-balanced sampling the priors' IoU (not FCOS's points),
ranking losses (AP, aLRP, RS) take no sampler and no PISA; aLRP and RS take their localisation error from a
box loss on decoded boxes (RetinaNet's default L1 on deltas does not fit: they are tested with giou there).
"""
from __future__ import annotations

import pytest
import torch

from umop.losses import BOX_LOSSES, CLS_LOSSES
from umop.models import build_detector
from umop.samplers import REWEIGHTINGS, SAMPLERS

from test_detector_matrix import tiny_backbone

DETECTORS = ("retinanet", "atss", "fcos", "vfnet")
DELTA_DETECTORS = ("retinanet", "atss")
RANKING_LOSSES = ("ap_loss", "alrp", "rank_sort")

FITS: dict[tuple[str, str], tuple[str, ...]] = {}
for name in ("focal", "pfl", "pfl_mean", "varifocal", "quality_focal", "ghm_c", "ap_loss", "alrp", "rank_sort"):
    FITS[("cls_loss", name)] = DETECTORS
for name in ("iou", "giou", "diou", "ciou", "bounded_iou"):
    FITS[("box_loss", name)] = DETECTORS
for name in ("l1", "smooth_l1", "balanced_l1", "ghm_r", "kl"):
    FITS[("box_loss", name)] = DELTA_DETECTORS
FITS[("sampler", "ohem")] = DETECTORS
FITS[("sampler", "random")] = DETECTORS
FITS[("sampler", "iou_balanced")] = ("retinanet", "atss", "vfnet")
FITS[("reweighting", "pisa")] = DETECTORS

REGISTRIES = {"cls_loss": CLS_LOSSES, "box_loss": BOX_LOSSES, "sampler": SAMPLERS, "reweighting": REWEIGHTINGS}
FITTING = [(kind, name, det) for (kind, name), dets in sorted(FITS.items()) for det in dets
           if name in REGISTRIES[kind]]
NOT_FITTING = [(kind, name, det) for (kind, name), dets in sorted(FITS.items()) for det in DETECTORS
               if det not in dets and name in REGISTRIES[kind]]


def test_the_table_covers_every_registered_remedy():
    for kind, registry in REGISTRIES.items():
        assert set(registry.names()) == {name for k, name in FITS if k == kind}, kind


@pytest.fixture(scope="module")
def batch(bccd_samples):
    samples = bccd_samples(2, max_size=160)  # 160 x 120 (padded to 160 x 128)
    return [image for image, _ in samples], [target for _, target in samples]


def tiny(name, **components):
    torch.manual_seed(0)
    return build_detector(name, 3, backbone=tiny_backbone(32), **components)


@pytest.mark.parametrize("kind, remedy, detector", FITTING)
def test_one_training_step_is_finite(kind, remedy, detector, batch):
    components = {kind: remedy}
    if remedy in ("alrp", "rank_sort") and detector == "retinanet":
        components["box_loss"] = "giou"
    model = tiny(detector, **components)
    model.train()
    losses = model(*batch)
    terms = {key: value for key, value in losses.items() if key.startswith("loss_")}
    assert "loss_cls" in terms and "loss_box" in terms
    if remedy == "pisa":
        assert "loss_carl" in terms
    for key, value in terms.items():
        assert value.ndim == 0 and torch.isfinite(value), (key, value)
    total = sum(terms.values())
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert losses["stats"]["num_positive"].sum() > 0


@pytest.mark.parametrize("kind, remedy, detector", NOT_FITTING)
def test_a_combination_that_does_not_fit_names_both(kind, remedy, detector):
    with pytest.raises(ValueError) as error:
        build_detector(detector, 3, backbone=tiny_backbone(32), **{kind: remedy})
    message = str(error.value).lower()
    component = REGISTRIES[kind].build(remedy)
    assert detector in message and type(component).__name__.lower() in message


@pytest.mark.parametrize("loss", ["alrp", "rank_sort"])
def test_losses_that_replace_the_box_loss_need_a_box_loss_on_decoded_boxes(loss):
    with pytest.raises(ValueError, match=r"(ALRPLoss|RankSortLoss).*L1Loss"):
        build_detector("retinanet", 3, backbone=tiny_backbone(32), cls_loss=loss)


@pytest.mark.parametrize("ranking", [n for n in RANKING_LOSSES if n in CLS_LOSSES])
@pytest.mark.parametrize("other", [("sampler", "ohem"), ("reweighting", "pisa")])
def test_ranking_losses_take_no_sampler_or_reweighting(ranking, other):
    with pytest.raises(ValueError) as error:
        build_detector("atss", 3, backbone=tiny_backbone(32), cls_loss=ranking, **dict([other]))
    message = str(error.value)
    assert type(CLS_LOSSES.build(ranking)).__name__ in message
    assert {"ohem": "OHEM", "pisa": "PISA"}[other[1]].lower() in message.lower()


@pytest.mark.parametrize("detector", DELTA_DETECTORS)
def test_kl_loss_grows_a_variance_branch_and_votes_at_inference(detector, batch):
    plain = tiny(detector, box_loss="kl", score_thresh=0.0)
    voting = tiny(detector, box_loss="kl", box_loss_options={"var_voting": True}, score_thresh=0.0)
    voting.load_state_dict(plain.state_dict())
    plain.eval(), voting.eval()
    outputs = plain.head(plain.backbone(plain.preprocess(batch[0])[0]))
    assert outputs["bbox_log_var"].shape == outputs["bbox_regression"].shape
    with torch.no_grad():
        before, after = plain(batch[0]), voting(batch[0])
    for a, b in zip(before, after):
        # voting moves coordinates only: the same detections, scores and labels
        assert torch.equal(a["scores"], b["scores"]) and torch.equal(a["labels"], b["labels"])
        assert torch.isfinite(b["boxes"]).all() and len(b["boxes"]) > 0
    assert any(not torch.allclose(a["boxes"], b["boxes"]) for a, b in zip(before, after))
    default = tiny(detector).eval()
    with torch.no_grad():
        assert "bbox_log_var" not in default.head(default.backbone(default.preprocess(batch[0])[0]))


@pytest.mark.parametrize("detector", FITS[("sampler", "iou_balanced")])
def test_iou_balanced_sampling_sees_the_negatives_iou(detector, batch):
    """The sampler bins the negatives by their IoU with the gt: the detector must hand it each prior's largest
    IoU (the assigners' max_ious), not the matched IoU, which is 0 at every negative."""
    model = tiny(detector, sampler="iou_balanced")
    model.train()
    seen = {}

    def capture(module, inputs):
        seen["labels"], seen["max_ious"] = inputs[2], inputs[3]

    model.sampler.register_forward_pre_hook(capture)
    model(*batch)
    negative = seen["labels"] == model.num_classes
    assert (seen["max_ious"][negative] > 0.1).any()  # negatives that overlap a gt
    assert (seen["max_ious"] <= 1).all() and (seen["max_ious"] >= 0).all()

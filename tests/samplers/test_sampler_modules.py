"""Sampler modules (issue 11): hand-built label / IoU / loss cases — positives untouched, SSD's 3:1 ratio,
IoU bins, positive fraction, reproducible draws, registry validation."""
from __future__ import annotations

import pytest
import torch

from umop.samplers import (REWEIGHTINGS, SAMPLERS, IoUBalancedSampler, OHEMSampler, RandomSampler, build_reweighting,
                           build_sampler)

C = 2   # classes; label 2 = background, -1 = ignored


def _inputs(labels, logits_bg=None, max_ious=None):
    labels = torch.tensor(labels)
    batch, priors = labels.shape
    logits = torch.full((batch, priors, C), -4.0)
    if logits_bg is not None:       # a background prior's loss grows with its logits
        logits = torch.tensor(logits_bg, dtype=torch.float32).unsqueeze(-1).expand(batch, priors, C).clone()
    positive = (labels >= 0) & (labels < C)
    targets = torch.nn.functional.one_hot(labels.clamp(min=0), C + 1)[..., :C].float() * positive.unsqueeze(-1)
    weight = (labels >= 0).float()
    weight[positive] = 0.5           # positives' weights must come back unchanged
    ious = torch.zeros(batch, priors) if max_ious is None else torch.tensor(max_ious)
    return logits, targets, labels, ious, weight


def test_ohem_keeps_positives_and_the_three_hardest_negatives_per_positive():
    labels = [[0, 2, 2, 2, 2, 2, 2, 2, 2, 1, -1, 2],
              [2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2]]
    # background logits: higher = harder; prior 10 is ignored despite the highest logit
    logits_bg = [[-5.0, 1.0, -1.0, 3.0, 0.0, 2.0, -2.0, -3.0, 4.0, -9.0, 9.0, 0.5],
                 [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0]]
    logits, targets, labels_t, ious, weight = _inputs(labels, logits_bg)
    new_weight = OHEMSampler()(logits, targets, labels_t, ious, weight)
    # image 0: 2 positives (easy ones: low loss for their class does not matter) -> 6 hardest negatives:
    # logits 4 (8), 3 (3), 2 (5), 1 (1), 0.5 (11), 0 (4)
    expected0 = torch.zeros(12)
    expected0[[0, 9]] = 0.5
    expected0[[8, 3, 5, 1, 11, 4]] = 1.0
    torch.testing.assert_close(new_weight[0], expected0)
    # image 1: no positive -> no negative (SSD); with min_negatives the hardest ones
    assert new_weight[1].sum() == 0
    kept = OHEMSampler(min_negatives=2)(logits, targets, labels_t, ious, weight)[1]
    assert kept.nonzero().view(-1).tolist() == [10, 11]


def test_ohem_ratio_and_all_negatives_when_fewer():
    labels = [[0, 0, 2, 2, 2]]
    logits, targets, labels_t, ious, weight = _inputs(labels)
    out = OHEMSampler(neg_pos_ratio=3.0)(logits, targets, labels_t, ious, weight)
    torch.testing.assert_close(out, weight)                  # 6 wanted, 3 available: all kept
    out = OHEMSampler(neg_pos_ratio=0.5)(logits, targets, labels_t, ious, weight)
    assert int((out[0, 2:] > 0).sum()) == 1


def test_iou_balanced_spreads_negatives_over_iou_bins_and_keeps_positives():
    # 1 positive; 18 negatives: 12 with IoU in [0, 0.1), 3 in [0.1, 0.2), 3 in [0.2, 0.3]
    labels = [[0] + [2] * 18]
    iou = [[0.9] + [0.01 * i for i in range(12)] + [0.12, 0.15, 0.18] + [0.22, 0.26, 0.3]]
    logits, targets, labels_t, ious, weight = _inputs(labels, max_ious=iou)
    sampler = IoUBalancedSampler(num_samples=7, positive_fraction=0.25, num_bins=3, floor_thr=-1.0, seed=0)
    out = sampler(logits, targets, labels_t, ious, weight)
    assert out[0, 0] == 0.5                                   # positive untouched
    kept = out[0, 1:] > 0
    assert int(kept.sum()) == 6                               # 7 - min(1, floor(7 * 0.25) = 1)
    # bins over [0, 0.3]: width 0.1 -> 2 negatives from each bin
    bins = torch.tensor(iou[0][1:]).div(0.1).floor().clamp(max=2).long()
    assert torch.bincount(bins[kept], minlength=3).tolist() == [2, 2, 2]


def test_random_sampler_positive_fraction_counts_and_seed():
    labels = [[0, 1, 1] + [2] * 20, [2] * 23]
    logits, targets, labels_t, ious, weight = _inputs(labels)
    sampler = RandomSampler(num_samples=8, positive_fraction=0.25, seed=3)
    out = sampler(logits, targets, labels_t, ious, weight)
    torch.testing.assert_close(out[0, :3], torch.full((3,), 0.5))      # positives untouched
    # image 0: 8 - min(3, floor(8 * 0.25) = 2) = 6 negatives; image 1: 8 negatives
    assert int((out[0, 3:] > 0).sum()) == 6 and int((out[1] > 0).sum()) == 8
    again = RandomSampler(num_samples=8, positive_fraction=0.25, seed=3)(logits, targets, labels_t, ious, weight)
    torch.testing.assert_close(out, again)


def test_sampler_registry_and_bad_input():
    assert set(SAMPLERS.names()) == {"ohem", "iou_balanced", "random"}
    assert REWEIGHTINGS.names() == ["pisa"] and build_reweighting("pisa", isr_k=1.5).isr_k == 1.5
    with pytest.raises(ValueError, match="did you mean 'neg_pos_ratio'"):
        build_sampler("ohem", neg_pos_ration=3)
    with pytest.raises(ValueError, match="positive_fraction"):
        build_sampler("random", positive_fraction=1.5)
    logits, targets, labels_t, ious, weight = _inputs([[0, 2, 2]])
    with pytest.raises(ValueError, match="max_ious"):
        build_sampler("ohem")(logits, targets, labels_t, ious[:, :2], weight)

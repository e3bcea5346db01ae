"""OHEM selection: counts, hardest-first (slow per-image reference), per-image independence, conventions."""
from __future__ import annotations

import math

import pytest
import torch

from umop.samplers import ohem_select


def _slow_ohem(loss, labels, num, fraction):
    """Per-image loop with sorted Python lists (mmdetection's OHEMSampler semantics)."""
    out = torch.zeros_like(labels, dtype=torch.bool)
    for b in range(loss.shape[0]):
        n = int(num[b]) if isinstance(num, torch.Tensor) else num
        pos = sorted([a for a in range(loss.shape[1]) if labels[b, a] == 1], key=lambda a: -float(loss[b, a]))
        neg = sorted([a for a in range(loss.shape[1]) if labels[b, a] == 0], key=lambda a: -float(loss[b, a]))
        take_pos = pos[: min(len(pos), int(math.floor(n * fraction)))]
        take_neg = neg[: min(len(neg), n - len(take_pos))]
        for a in take_pos + take_neg:
            out[b, a] = True
    return out


@pytest.mark.parametrize("num,fraction", [(16, 0.25), (40, 0.5), (7, 1.0), (0, 0.25), (200, 0.25)])
def test_matches_slow_reference(num, fraction):
    gen = torch.Generator().manual_seed(num)
    loss = torch.rand(3, 60, generator=gen)                    # distinct values almost surely
    labels = torch.randint(-1, 2, (3, 60), generator=gen)
    labels[2] = torch.where(labels[2] == 1, 0, labels[2])       # an image without positives
    mask = ohem_select(loss, labels, num, fraction)
    assert torch.equal(mask, _slow_ohem(loss, labels, num, fraction))
    assert not mask[labels == -1].any()


def test_counts_hardest_and_per_image_num_samples():
    gen = torch.Generator().manual_seed(5)
    loss = torch.rand(4, 100, generator=gen)
    labels = (torch.rand(4, 100, generator=gen) < 0.1).long()
    num = torch.tensor([10, 20, 0, 64])
    mask = ohem_select(loss, labels, num, 0.25)
    for b in range(4):
        pos, neg = labels[b] == 1, labels[b] == 0
        n_pos = min(int(pos.sum()), int(num[b]) // 4)
        assert int((mask[b] & pos).sum()) == n_pos
        assert int((mask[b] & neg).sum()) == min(int(neg.sum()), int(num[b]) - n_pos)
        for group in (pos, neg):  # every selected example is at least as hard as every unselected one
            sel, rest = loss[b][mask[b] & group], loss[b][~mask[b] & group]
            if sel.numel() and rest.numel():
                assert sel.min() >= rest.max()
    # per-image independence: each image alone gives the same selection
    for b in range(4):
        alone = ohem_select(loss[b:b + 1], labels[b:b + 1], int(num[b]), 0.25)
        assert torch.equal(alone[0], mask[b])
    assert torch.equal(mask, _slow_ohem(loss, labels, num, 0.25))


def test_hand_worked_and_class_convention():
    loss = torch.tensor([[0.9, 0.1, 0.5, 0.8, 0.3, 0.7, 0.2, 5.0]])
    # umop convention with num_classes=2: labels 0/1 positive, 2 background, -1 ignored
    labels = torch.tensor([[0, 2, 1, 2, 2, 2, 0, -1]])
    mask = ohem_select(loss, labels, 4, 0.5, num_classes=2)
    # positives 0.9, 0.5, 0.2 -> keep 2 hardest (0.9, 0.5); negatives 0.1, 0.8, 0.3, 0.7 -> keep 0.8, 0.7
    assert mask.tolist() == [[True, False, True, True, False, True, False, False]]
    # fewer positives (3) than the fraction allows (6): the 3 hardest negatives (0.8, 0.7, 0.3) fill the rest
    mask = ohem_select(loss, labels, 6, 1.0, num_classes=2)
    assert mask.tolist() == [[True, False, True, True, True, True, True, False]]


def test_bad_input():
    with pytest.raises(ValueError, match="labels"):
        ohem_select(torch.rand(2, 5), torch.zeros(2, 4, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="positive_fraction"):
        ohem_select(torch.rand(2, 5), torch.zeros(2, 5, dtype=torch.long), 3, 1.5)
    with pytest.raises(ValueError, match="num_samples"):
        ohem_select(torch.rand(2, 5), torch.zeros(2, 5, dtype=torch.long), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="loss"):
        ohem_select(torch.rand(5), torch.zeros(5, dtype=torch.long), 3)

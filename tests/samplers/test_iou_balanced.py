"""IoU-balanced negative sampling: counts, even spread over IoU bins, shortfall filling, floor set, per image."""
from __future__ import annotations

import pytest
import torch

from umop.samplers import iou_balanced_negative_sample


def _image(n_bin0=900, n_bin1=50, n_bin2=50, n_zero=0, n_pos=10, gen=None):
    """IoUs strictly inside the bins [0, .1), [.1, .2), [.2, .3] (the largest negative IoU is 0.3)."""
    parts = [torch.rand(n_bin0, generator=gen) * 0.09 + 0.005,
             torch.rand(n_bin1, generator=gen) * 0.09 + 0.105,
             torch.rand(n_bin2 - 1, generator=gen) * 0.09 + 0.205, torch.tensor([0.3]),
             torch.zeros(n_zero), torch.full((n_pos,), 0.8)]
    iou = torch.cat(parts)
    negative = torch.cat([torch.ones(iou.numel() - n_pos, dtype=torch.bool), torch.zeros(n_pos, dtype=torch.bool)])
    return iou, negative


def _bin_counts(iou, mask):
    sel = iou[mask]
    return [int(((sel >= lo) & (sel < hi)).sum()) for lo, hi in ((0.0, 0.1), (0.1, 0.2), (0.2, 0.31))]


def test_even_spread_across_bins():
    gen = torch.Generator().manual_seed(0)
    iou, neg = _image(gen=gen)
    mask = iou_balanced_negative_sample(iou[None], neg[None], 30, num_bins=3, generator=gen)[0]
    assert _bin_counts(iou, mask) == [10, 10, 10]      # random sampling would give ~27 / 1.5 / 1.5
    assert not mask[~neg].any()


def test_shortfall_filled_from_other_bins_and_floor_set():
    gen = torch.Generator().manual_seed(1)
    # bin 1 has only 4 candidates: all taken; its shortfall of 6 comes from the rest of the IoU set
    iou, neg = _image(n_bin0=100, n_bin1=4, n_bin2=100, n_zero=500, gen=gen)
    mask = iou_balanced_negative_sample(iou[None], neg[None], 30, generator=gen)[0]
    counts = _bin_counts(iou, mask)
    assert counts[1] == 4 and counts[0] >= 10 and counts[2] >= 10 and sum(counts) == 30
    assert int((mask & (iou == 0)).sum()) == 0          # the IoU > 0 set had enough: no IoU == 0 negative
    # a small IoU set (14 <= 30) is taken whole, the floor set (IoU == 0) fills the rest
    iou, neg = _image(n_bin0=5, n_bin1=4, n_bin2=5, n_zero=500, gen=gen)
    mask = iou_balanced_negative_sample(iou[None], neg[None], 30, generator=gen)[0]
    assert mask[(iou > 0) & neg].all() and int((mask & (iou == 0)).sum()) == 16


def test_floor_fraction_and_positive_floor_thr():
    gen = torch.Generator().manual_seed(2)
    iou, neg = _image(n_zero=500, gen=gen)
    # floor_fraction 0.5: int(30 * .5) = 15 from the IoU set (5 per bin), 15 from the floor set (IoU == 0)
    mask = iou_balanced_negative_sample(iou[None], neg[None], 30, floor_fraction=0.5, generator=gen)[0]
    assert int((mask & (iou == 0)).sum()) == 15 and _bin_counts(iou, mask & (iou > 0)) == [5, 5, 5]
    # floor_thr 0.1: the IoU set is [0.1, 0.3] split into [.1, .1667), [.1667, .2333), [.2333, .3]
    mask = iou_balanced_negative_sample(iou[None], neg[None], 12, floor_thr=0.1, generator=gen)[0]
    assert int(mask.sum()) == 12 and not (mask & (iou < 0.1)).any()
    sel = iou[mask]
    edges = [0.1, 0.1 + 0.2 / 3, 0.1 + 0.4 / 3, 0.31]
    assert [int(((sel >= lo) & (sel < hi)).sum()) for lo, hi in zip(edges, edges[1:])] == [4, 4, 4]
    # one bin degenerates to random sampling from the IoU set
    mask = iou_balanced_negative_sample(iou[None], neg[None], 30, num_bins=1, generator=gen)[0]
    assert int(mask.sum()) == 30 and not (mask & (iou == 0)).any()


def test_per_image_counts_and_independence():
    gen = torch.Generator().manual_seed(3)
    iou0, neg0 = _image(gen=gen)
    iou1 = torch.rand(iou0.numel(), generator=gen) * 0.4
    neg1 = torch.zeros_like(neg0)
    neg1[:20] = True                                    # image 1: only 20 negatives
    iou = torch.stack([iou0, iou1])
    neg = torch.stack([neg0, neg1])
    mask = iou_balanced_negative_sample(iou, neg, torch.tensor([30, 64]), generator=gen)
    assert _bin_counts(iou0, mask[0]) == [10, 10, 10]
    assert torch.equal(mask[1], neg1)                   # fewer negatives than requested: all of them
    # the same seed reproduces the draw; another seed draws other negatives
    a = iou_balanced_negative_sample(iou, neg, 30, generator=torch.Generator().manual_seed(7))
    b = iou_balanced_negative_sample(iou, neg, 30, generator=torch.Generator().manual_seed(7))
    c = iou_balanced_negative_sample(iou, neg, 30, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.sum(1).tolist() == [30, 20]


def test_uniform_within_bin():
    # every negative of a bin is equally likely: over many draws each of bin 1's 50 members is picked ~20%
    gen = torch.Generator().manual_seed(4)
    iou, neg = _image(gen=gen)
    draws = 200
    hits = torch.zeros(iou.numel())
    masks = iou_balanced_negative_sample(iou.expand(draws, -1), neg.expand(draws, -1), 30, generator=gen)
    hits = masks.float().mean(0)
    bin1 = (iou >= 0.1) & (iou < 0.2)
    assert hits[bin1].mean().item() == pytest.approx(10 / 50, abs=1e-6)
    assert hits[bin1].min() > 0.05 and hits[bin1].max() < 0.4


def test_bad_input():
    with pytest.raises(ValueError, match="negative_mask"):
        iou_balanced_negative_sample(torch.rand(2, 5), torch.ones(2, 4, dtype=torch.bool), 3)
    with pytest.raises(ValueError, match="num_bins"):
        iou_balanced_negative_sample(torch.rand(2, 5), torch.ones(2, 5, dtype=torch.bool), 3, num_bins=0)
    with pytest.raises(ValueError, match="num_samples"):
        iou_balanced_negative_sample(torch.rand(2, 5), torch.ones(2, 5, dtype=torch.bool), -1)
    with pytest.raises(ValueError, match="max_iou"):
        iou_balanced_negative_sample(torch.rand(5), torch.ones(5, dtype=torch.bool), 3)

"""progressive_focal_loss (UMOP PFL + LRP): hand-worked cases, references, gradcheck, distributed sync."""
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torchvision

from umop.losses import ProgressiveFocalLoss, progressive_focal_loss
from umop.losses.focal import focal_loss_reference


def _logit(probability: float) -> float:
    return math.log(probability / (1 - probability))


def _four_level_case():
    """One image, 4 levels of 2 anchors, 2 classes; positives chosen so each level's raw gamma is known.

    level 0: one positive with p = exp(-1.8)       -> official raw gamma 1.8 (inside [1.5, 2.5])
    level 1: one positive with p = sigmoid(10)     -> raw ~ 4.5e-5, clamped up to 1.5
    level 2: one positive with p = sigmoid(-10)    -> raw ~ 10, clamped down to 2.5
    level 3: no positive                           -> base gamma 2.0
    """
    logits = torch.full((1, 8, 2), -3.0)
    targets = torch.zeros(1, 8, 2)
    for anchor, logit in ((0, _logit(math.exp(-1.8))), (2, 10.0), (4, -10.0)):
        logits[0, anchor, 1] = logit
        targets[0, anchor, 1] = 1
    return logits, targets, [2, 2, 2, 2]


def test_hand_worked_gamma_alpha_per_level():
    logits, targets, levels = _four_level_case()
    _, stats = progressive_focal_loss(logits, targets, levels, return_stats=True)
    torch.testing.assert_close(stats["gamma_ad"], torch.tensor([1.8, 1.5, 2.5, 2.0]))
    torch.testing.assert_close(stats["alpha_ad"], 0.5 / torch.tensor([1.8, 1.5, 2.5, 2.0]))  # w = 0.25 * 2
    torch.testing.assert_close(stats["num_positive"], torch.tensor([1.0, 1.0, 1.0, 0.0]))
    torch.testing.assert_close(stats["num_valid"], torch.full((4,), 4.0))
    _, stats_w = progressive_focal_loss(logits, targets, levels, w=0.9, return_stats=True)
    torch.testing.assert_close(stats_w["alpha_ad"], 0.9 / stats_w["gamma_ad"])


def test_loss_equals_torchvision_focal_loss_per_level_with_the_adapted_parameters():
    logits, targets, levels = _four_level_case()
    loss, stats = progressive_focal_loss(logits, targets, levels, return_stats=True, avg_factor=3.0)
    expected_levels = []
    for level, (gamma, alpha) in enumerate(zip(stats["gamma_ad"].tolist(), stats["alpha_ad"].tolist())):
        part = slice(2 * level, 2 * level + 2)
        expected_levels.append(torchvision.ops.sigmoid_focal_loss(
            logits[:, part], targets[:, part], alpha=alpha, gamma=gamma, reduction="sum") / 3.0)
    torch.testing.assert_close(stats["loss"], torch.stack(expected_levels))
    torch.testing.assert_close(loss, torch.stack(expected_levels).sum())


def test_paper_estimator_is_minus_log_of_mean_probability():
    logits = torch.full((1, 3, 1), -4.0)
    targets = torch.zeros(1, 3, 1)
    probabilities = (0.2, 0.05)
    for anchor, probability in enumerate(probabilities):
        logits[0, anchor, 0] = _logit(probability)
        targets[0, anchor, 0] = 1
    options = dict(gamma=2.0, delta=1.9, return_stats=True)  # clamp range [0.1, 3.9]: no clamping here
    _, official = progressive_focal_loss(logits, targets, [3], estimator="official", **options)
    _, paper = progressive_focal_loss(logits, targets, [3], estimator="paper", **options)
    torch.testing.assert_close(official["gamma_ad"], torch.tensor([-(math.log(0.2) + math.log(0.05)) / 2]))
    torch.testing.assert_close(paper["gamma_ad"], torch.tensor([-math.log((0.2 + 0.05) / 2)]))


def test_paper_estimator_never_exceeds_official_jensen():
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        logits = torch.randn(3, 40, 5, generator=generator) * 3
        targets = (torch.rand(3, 40, 5, generator=generator) < 0.1).float()
        options = dict(delta=1.99, return_stats=True)
        _, official = progressive_focal_loss(logits, targets, [20, 10, 6, 3, 1], estimator="official", **options)
        _, paper = progressive_focal_loss(logits, targets, [20, 10, 6, 3, 1], estimator="paper", **options)
        assert torch.all(paper["gamma_ad"] <= official["gamma_ad"] + 1e-6)


def test_level_mean_is_level_sum_divided_by_number_of_levels():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 31, 4, generator=generator)
    targets = (torch.rand(2, 31, 4, generator=generator) < 0.15).float()
    levels = [16, 8, 4, 2, 1]
    total_sum = progressive_focal_loss(logits, targets, levels, level_reduction="sum")
    total_mean = progressive_focal_loss(logits, targets, levels, level_reduction="mean")
    torch.testing.assert_close(total_mean, total_sum / len(levels))


def _random_case(kind: str, seed: int = 2, dtype=torch.float64):
    """(2, 31, 4) logits; 'multi_label' targets may hold several 1s per anchor, 'one_hot' at most one."""
    generator = torch.Generator().manual_seed(seed)
    logits = (torch.randn(2, 31, 4, generator=generator, dtype=dtype) * 2).requires_grad_(True)
    if kind == "multi_label":
        targets = (torch.rand(2, 31, 4, generator=generator) < 0.2).to(dtype)
    else:
        positive = torch.rand(2, 31, generator=generator) < 0.3
        labels = torch.randint(4, (2, 31), generator=generator)
        targets = torch.nn.functional.one_hot(labels, 4).to(dtype) * positive[..., None]
    weight = (torch.rand(2, 31, generator=generator) > 0.2).to(dtype)
    return logits, targets, weight, [16, 8, 4, 2, 1]


# One-hot targets (at most one positive per anchor) take a shorter path on CPU (a positive's loss is read
# from the statistics); several positives per anchor take the general one. Both must give the formula.
@pytest.mark.parametrize("kind", ["multi_label", "one_hot"])
@pytest.mark.parametrize("estimator", ["official", "paper"])
@pytest.mark.parametrize("level_reduction", ["sum", "mean"])
def test_gradient_equals_autograd_of_the_formula_with_detached_parameters(kind, estimator, level_reduction):
    logits, targets, weight, levels = _random_case(kind)
    loss, stats = progressive_focal_loss(logits, targets, levels, weight=weight, avg_factor=7.0,
                                         estimator=estimator, level_reduction=level_reduction, return_stats=True)
    level_of_anchor = torch.repeat_interleave(torch.arange(5), torch.tensor(levels))
    gamma = stats["gamma_ad"][level_of_anchor].view(1, -1, 1).detach()
    alpha = stats["alpha_ad"][level_of_anchor].view(1, -1, 1).detach()
    per_anchor = (focal_loss_reference(logits, targets, alpha, gamma) * weight[..., None]).sum((0, 2)) / 7.0
    reference_levels = torch.stack([part.sum() for part in per_anchor.split(levels)])
    if level_reduction == "mean":
        reference_levels = reference_levels / len(levels)
    torch.testing.assert_close(stats["loss"], reference_levels)
    torch.testing.assert_close(loss, reference_levels.sum())
    torch.testing.assert_close(torch.autograd.grad(loss, logits)[0],
                               torch.autograd.grad(reference_levels.sum(), logits)[0])


@pytest.mark.parametrize("kind", ["multi_label", "one_hot"])
@pytest.mark.parametrize("estimator", ["official", "paper"])
def test_adapted_gamma_from_the_probabilities_of_the_valid_positives(kind, estimator):
    logits, targets, weight, levels = _random_case(kind, seed=5)
    _, stats = progressive_focal_loss(logits, targets, levels, weight=weight, delta=1.9, estimator=estimator,
                                      return_stats=True)
    probability = torch.sigmoid(logits.detach())
    positive = (targets > 0) & (weight[..., None] > 0)
    expected = []
    for first, count in zip([0, 16, 24, 28, 30], levels):
        level_positive = positive[:, first:first + count]
        level_probability = probability[:, first:first + count][level_positive]
        if level_probability.numel() == 0:
            expected.append(2.0)
        elif estimator == "official":
            expected.append(float((-level_probability.log()).mean().clamp(0.1, 3.9)))
        else:
            expected.append(float((-level_probability.mean().log()).clamp(0.1, 3.9)))
    torch.testing.assert_close(stats["gamma_ad"], torch.tensor(expected, dtype=torch.float64))


def test_gradcheck_float64_where_gamma_is_locally_constant():
    # Every level is either clamped or without positives, so gamma_ad/alpha_ad do not move under the
    # finite differences: the numerical Jacobian then checks the hand-derived backward exactly.
    logits, targets, levels = _four_level_case()
    logits = logits.double()
    logits[0, 0, 1] = 9.0  # level 0 now clamped at 1.5 as well
    logits.requires_grad_(True)
    targets = targets.double()
    weight = torch.tensor([[1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.5, 1.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: progressive_focal_loss(x, targets, levels, weight=weight, avg_factor=2.0), (logits,))
    assert torch.autograd.gradcheck(
        lambda x: progressive_focal_loss(x, targets, levels, level_reduction="mean"), (logits,))


def test_ignored_anchors_do_not_count_as_positives_or_loss():
    logits, targets, levels = _four_level_case()
    weight = torch.ones(1, 8)
    weight[0, 4] = 0  # the level-2 positive is ignored
    loss, stats = progressive_focal_loss(logits, targets, levels, weight=weight, return_stats=True)
    assert stats["num_positive"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert stats["gamma_ad"][2].item() == 2.0
    assert stats["num_valid"].tolist() == [4.0, 4.0, 2.0, 4.0]
    changed = logits.clone()
    changed[0, 4] = 123.0  # anything at an ignored anchor has no effect
    torch.testing.assert_close(progressive_focal_loss(changed, targets, levels, weight=weight), loss)


def test_module_keeps_last_stats_and_applies_loss_weight():
    logits, targets, levels = _four_level_case()
    module = ProgressiveFocalLoss(loss_weight=2.0)
    loss, stats = module(logits, targets, levels)
    torch.testing.assert_close(loss, 2 * progressive_focal_loss(logits, targets, levels))
    assert set(stats) == {"num_positive", "num_anchors", "gamma_ad", "alpha_ad"}
    torch.testing.assert_close(module.last_stats["gamma_ad"], torch.tensor([1.8, 1.5, 2.5, 2.0]))


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_anchors_per_level=[2, 2, 2]), "num_priors_per_level"),
    (dict(gamma=0.5, delta=0.5), "gamma - delta"),
    (dict(w=-1.0), "w must be"),
    (dict(avg_factor=2.0, normalizer=2.0), "avg_factor"),
    (dict(delta=-0.1), "delta"),
    (dict(estimator="median"), "estimator"),
    (dict(level_reduction="max"), "level_reduction"),
    (dict(weight=torch.ones(2, 8)), "weight"),
])
def test_bad_arguments_raise_value_error_naming_them(kwargs, match):
    logits, targets, levels = _four_level_case()
    call = dict(num_anchors_per_level=levels)
    call.update(kwargs)
    with pytest.raises(ValueError, match=match):
        progressive_focal_loss(logits, targets, call.pop("num_anchors_per_level"), **call)


def test_non_binary_targets_and_shape_mismatch_are_rejected():
    logits, targets, levels = _four_level_case()
    with pytest.raises(ValueError, match="binary"):
        progressive_focal_loss(logits, targets * 0.5, levels)
    with pytest.raises(ValueError, match="targets"):
        progressive_focal_loss(logits, targets[:, :6], levels)
    with pytest.raises(ValueError, match="logits"):
        progressive_focal_loss(logits[0], targets[0], levels)


# ---- distributed: two processes with half a batch each == one process with the whole batch -----------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _distributed_worker(rank: int, world_size: int, port: int, logits, targets, levels, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        local_logits = logits[rank:rank + 1].clone().requires_grad_(True)
        loss, stats = progressive_focal_loss(local_logits, targets[rank:rank + 1], levels, return_stats=True,
                                             delta=1.5)
        loss.backward()
        # Plain lists: tensors sent through a queue live in shared memory that dies with this process.
        queue.put((rank, stats["gamma_ad"].tolist(), stats["num_positive"].tolist(), local_logits.grad.tolist()))
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_get_the_single_process_gamma():
    generator = torch.Generator().manual_seed(4)
    levels = [12, 6, 3, 2, 1]
    logits = torch.randn(2, 24, 3, generator=generator) * 2
    targets = torch.zeros(2, 24, 3)
    # Very different positive counts on the two processes: an unweighted mean of per-process gammas
    # (the released code) would differ from the whole-batch gamma.
    targets[0, [0, 1, 2, 3, 4, 12, 13, 18], 0] = 1
    targets[1, [5, 14], 1] = 1
    whole_logits = logits.clone().requires_grad_(True)
    _, whole = progressive_focal_loss(whole_logits, targets, levels, return_stats=True, delta=1.5)
    whole_loss = progressive_focal_loss(whole_logits, targets, levels, delta=1.5)
    whole_loss.backward()

    context = mp.get_context("spawn")
    queue = context.Queue()
    port = _free_port()
    processes = [context.Process(target=_distributed_worker, args=(rank, 2, port, logits, targets, levels,
                                                                         queue)) for rank in range(2)]
    for process in processes:
        process.start()
    results = sorted(queue.get(timeout=120) for _ in range(2))
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    for rank, gamma_ad, num_positive, grad in results:
        gamma_ad, num_positive, grad = torch.tensor(gamma_ad), torch.tensor(num_positive), torch.tensor(grad)
        torch.testing.assert_close(gamma_ad, whole["gamma_ad"])
        torch.testing.assert_close(num_positive, whole["num_positive"])
        # Each process holds one image: its gradient equals that image's slice of the whole-batch gradient.
        torch.testing.assert_close(grad, whole_logits.grad[rank:rank + 1])
    # Sanity: without sync the per-process gammas differ from the whole-batch gamma.
    _, local0 = progressive_focal_loss(logits[:1], targets[:1], levels, return_stats=True, delta=1.5)
    assert not torch.allclose(local0["gamma_ad"], whole["gamma_ad"])



def test_normalizer_is_a_deprecated_alias_of_avg_factor():
    logits, targets, levels = _four_level_case()
    expected = progressive_focal_loss(logits, targets, levels, avg_factor=3.0)
    with pytest.warns(DeprecationWarning, match="avg_factor"):
        old = progressive_focal_loss(logits, targets, levels, normalizer=3.0)
    torch.testing.assert_close(old, expected)
    with pytest.warns(DeprecationWarning, match="avg_factor"):
        module_loss, _ = ProgressiveFocalLoss()(logits, targets, levels, normalizer=3.0)
    torch.testing.assert_close(module_loss, expected)


def test_module_validation_is_the_function_validation():
    with pytest.raises(ValueError, match="gamma - delta"):
        ProgressiveFocalLoss(gamma=0.5, delta=0.5)
    with pytest.raises(ValueError, match="level_reduction"):
        ProgressiveFocalLoss(level_reduction="max")

"""build_transforms: boxes follow resize and flip; multi-scale sampling; degenerate boxes removed."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from umop.data import ResizeShorterSide, build_transforms


def _sample(height: int = 100, width: int = 200, boxes: list[list[float]] | None = None) -> tuple:
    """A dark uint8 image with bright rectangles exactly where its boxes are."""
    boxes = boxes if boxes is not None else [[20.0, 10.0, 60.0, 50.0], [150.0, 40.0, 190.0, 90.0]]
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    for x0, y0, x1, y1 in boxes:
        image[:, int(y0) : int(y1), int(x0) : int(x1)] = 255
    target = {
        "boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes).reshape(-1, 4), format="XYXY", canvas_size=(height, width)),
        "labels": torch.arange(len(boxes)),
        "image_id": 7,
        "orig_size": (height, width),
    }
    return tv_tensors.Image(image), target


def _mean_inside(image: torch.Tensor, box: torch.Tensor) -> float:
    x0, y0, x1, y1 = box.round().long().tolist()
    return image[:, y0 + 1 : y1 - 1, x0 + 1 : x1 - 1].mean().item()


def test_resize_shorter_side_and_boxes_scale() -> None:
    image, target = _sample()
    out_image, out_target = build_transforms(train=False, min_size=50, max_size=1000)(image, target)
    assert out_image.shape == (3, 50, 100) and out_image.dtype == torch.float32
    assert 0.0 <= out_image.min() and out_image.max() <= 1.0
    torch.testing.assert_close(out_target["boxes"].as_subclass(torch.Tensor), target["boxes"].as_subclass(torch.Tensor) * 0.5)
    assert out_target["image_id"] == 7 and out_target["orig_size"] == (100, 200)
    for box in out_target["boxes"]:
        assert _mean_inside(out_image, box) > 0.95  # the bright patch is still under its box


def test_max_size_bounds_the_longer_side() -> None:
    image, target = _sample()
    out_image, out_target = build_transforms(train=False, min_size=100, max_size=150)(image, target)
    assert out_image.shape == (3, 75, 150)
    torch.testing.assert_close(out_target["boxes"].as_subclass(torch.Tensor), target["boxes"].as_subclass(torch.Tensor) * 0.75)


def test_flip_moves_boxes_with_the_pixels() -> None:
    image, target = _sample()
    out_image, out_target = build_transforms(train=True, min_size=100, max_size=1000, flip_prob=1.0)(image, target)
    expected = torch.tensor([[140.0, 10.0, 180.0, 50.0], [10.0, 40.0, 50.0, 90.0]])
    torch.testing.assert_close(out_target["boxes"].as_subclass(torch.Tensor), expected)
    for box in out_target["boxes"]:
        assert _mean_inside(out_image, box) == 1.0
    assert out_image[:, 10:35, 20:60].max() == 0.0  # where the first box was (above the second one): background


def test_multiscale_range_and_choice() -> None:
    image, target = _sample()
    torch.manual_seed(0)
    transform = build_transforms(train=True, min_size=(40, 60), max_size=1000)
    shorter = {transform(image, target)[0].shape[-2] for _ in range(40)}
    assert shorter <= set(range(40, 61)) and len(shorter) > 5
    choice = build_transforms(train=True, min_size=[32, 48, 64], max_size=1000)
    assert {choice(image, target)[0].shape[-2] for _ in range(30)} == {32, 48, 64}
    two_choices = ResizeShorterSide([32, 64], max_size=None, mode="choice")
    assert {two_choices.sample_shorter_side() for _ in range(30)} == {32, 64}
    # evaluation with a multi-scale setting uses its largest scale
    assert build_transforms(train=False, min_size=(40, 60), max_size=1000)(image, target)[0].shape[-2] == 60


def test_multiscale_is_reproducible_with_the_torch_seed() -> None:
    image, target = _sample()
    transform = build_transforms(train=True, min_size=(40, 80), max_size=1000)
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        runs.append([(transform(image, target)[0].shape, transform(image, target)[1]["boxes"][0, 0].item()) for _ in range(10)])
    assert runs[0] == runs[1]


def test_degenerate_boxes_removed_with_their_labels() -> None:
    image, target = _sample(boxes=[[20.0, 10.0, 60.0, 50.0], [100.0, 20.0, 101.0, 60.0], [10.0, 80.0, 30.0, 80.5]])
    out_image, out_target = build_transforms(train=False, min_size=25, max_size=1000)(image, target)
    assert out_image.shape == (3, 25, 50)
    assert out_target["labels"].tolist() == [0]  # 1 px wide and 0.5 px tall boxes shrink below 1 px
    assert out_target["boxes"].shape == (1, 4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"min_size": 0}, "min_size"), ({"min_size": (60, 40)}, "lo <= hi"), ({"min_size": 10, "flip_prob": 2.0}, "flip_prob")],
)
def test_bad_arguments_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_transforms(train=True, **kwargs)

"""umop.models.deform: the bilinear-sampling deformable conv equals torchvision's deform_conv2d."""
import pytest
import torch
import torchvision

from umop.models.deform import deform_conv2d


def _case(seed=0, channels=6, height=7, width=9, out_channels=5, dtype=torch.float32, offset_scale=2.5):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, channels, height, width, generator=generator, dtype=dtype).requires_grad_(True)
    # offsets of a few pixels: many sampling points land between pixels and some outside the image
    offset = (torch.randn(2, 18, height, width, generator=generator, dtype=dtype) * offset_scale).requires_grad_(True)
    weight = torch.randn(out_channels, channels, 3, 3, generator=generator, dtype=dtype).requires_grad_(True)
    bias = torch.randn(out_channels, generator=generator, dtype=dtype).requires_grad_(True)
    return x, offset, weight, bias


@pytest.mark.parametrize("with_bias", [False, True])
def test_sampling_equals_torchvision_values_and_gradients(with_bias):
    x, offset, weight, bias = _case()
    bias = bias if with_bias else None
    ours = deform_conv2d(x, offset, weight, bias, implementation="sampling")
    reference = torchvision.ops.deform_conv2d(x, offset, weight, bias, padding=1)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-4)
    upstream = torch.randn_like(ours)
    inputs = (x, offset, weight) + ((bias,) if with_bias else ())
    grads = torch.autograd.grad((ours * upstream).sum(), inputs)
    reference_grads = torch.autograd.grad((reference * upstream).sum(), inputs)
    for name, grad, expected in zip(("input", "offset", "weight", "bias"), grads, reference_grads):
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-4, msg=name)


@pytest.mark.parametrize("height,width", [(1, 1), (1, 3), (2, 1)])
def test_maps_one_pixel_wide_as_p6_p7_can_be(height, width):
    x, offset, weight, bias = _case(seed=4, height=height, width=width, offset_scale=0.8)
    torch.testing.assert_close(deform_conv2d(x, offset, weight, bias, implementation="sampling"),
                               torchvision.ops.deform_conv2d(x, offset, weight, bias, padding=1),
                               rtol=1e-5, atol=1e-5)


def test_zero_offset_is_an_ordinary_convolution():
    x, _, weight, bias = _case(seed=1)
    offset = torch.zeros(2, 18, 7, 9)
    torch.testing.assert_close(deform_conv2d(x, offset, weight, bias, implementation="sampling"),
                               torch.nn.functional.conv2d(x, weight, bias, padding=1), rtol=1e-5, atol=1e-5)


def test_integer_shift_samples_the_neighbouring_pixel_and_zero_outside():
    x = torch.arange(12.0).view(1, 1, 3, 4)
    weight = torch.zeros(1, 1, 3, 3)
    weight[0, 0, 1, 1] = 1.0                     # only the centre tap: output = input sampled at the offset
    offset = torch.zeros(1, 18, 3, 4)
    offset[:, 2 * 4 + 1] = 1.0                   # centre tap (k = 4) moved one column right
    out = deform_conv2d(x, offset, weight, implementation="sampling")
    expected = torch.tensor([[1.0, 2.0, 3.0, 0.0], [5.0, 6.0, 7.0, 0.0], [9.0, 10.0, 11.0, 0.0]])
    torch.testing.assert_close(out[0, 0], expected)


def test_gradcheck_float64():
    x, offset, weight, bias = _case(seed=2, channels=2, height=4, width=5, out_channels=2, dtype=torch.float64,
                                    offset_scale=0.7)
    assert torch.autograd.gradcheck(
        lambda *args: deform_conv2d(*args, implementation="sampling"), (x, offset, weight, bias))


def test_bad_arguments_name_them():
    x, offset, weight, _ = _case()
    with pytest.raises(ValueError, match="offset"):
        deform_conv2d(x, offset[:, :16], weight)
    with pytest.raises(ValueError, match="implementation"):
        deform_conv2d(x, offset, weight, implementation="cuda")
    with pytest.raises(ValueError, match="weight"):
        deform_conv2d(x, offset, weight[:, :3])

"""Mixed precision on CPU: bf16 training steps of every detector, float32 losses under low-precision logits,
the capability fallback (one warning) and the timing keys of the training log."""

from __future__ import annotations

import json
import warnings
from collections import OrderedDict

import pytest
import torch
from torch import nn
from toy import ToyDataset, ToyDetector

import umop.engine.amp as amp_module
from umop.engine import Trainer, config_from_dict
from umop.engine.amp import resolve_amp
from umop.engine.meters import IterationTimer, format_eta, memory_mb
from umop.losses import progressive_focal_loss, sigmoid_focal_loss
from umop.losses.quality_focal import quality_focal_loss
from umop.losses.varifocal import varifocal_loss
from umop.models import build_detector
from umop.models.backbone import FPNBackbone


class TinyBody(nn.Module):
    """C3, C4, C5 (strides 8, 16, 32) from three strided conv-BN-ReLU stages: the detectors' heads,
    assignment and losses are under test here, not the backbone."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()

        def stage(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.c3, self.c4, self.c5 = stage(3, width, 8), stage(width, width, 2), stage(width, width, 2)
        self.channels = [width] * 3

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        c3 = self.c3(x)
        c4 = self.c4(c3)
        return OrderedDict([("0", c3), ("1", c4), ("2", self.c5(c4))])


def tiny_batch():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 96, 96, generator=g), torch.rand(3, 64, 96, generator=g)]
    targets = [{"boxes": torch.tensor([[8.0, 10.0, 50.0, 60.0], [40.0, 20.0, 90.0, 80.0]]),
                "labels": torch.tensor([0, 2])},
               {"boxes": torch.tensor([[30.0, 5.0, 70.0, 40.0]]), "labels": torch.tensor([1])}]
    return images, targets


@pytest.mark.parametrize("name", ["retinanet", "atss", "fcos", "vfnet"])
@pytest.mark.parametrize("cls_loss", ["focal", "pfl"])
def test_bf16_autocast_training_step_is_finite_with_float32_losses(name, cls_loss):
    torch.manual_seed(0)
    body = TinyBody()
    model = build_detector(name, 3, backbone=FPNBackbone(body, body.channels, 32), cls_loss=cls_loss).train()
    images, targets = tiny_batch()
    head_dtypes = []
    model.head.register_forward_hook(lambda module, args, out: head_dtypes.append(out["cls_logits"].dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(images, targets)
    assert head_dtypes == [torch.bfloat16]  # the network ran in bf16, the losses got float32 logits
    losses = {k: v for k, v in outputs.items() if k.startswith("loss_")}
    assert losses and all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values()), losses
    stats = outputs["stats"]
    assert stats["num_positive"].dtype == torch.float32 and float(stats["num_positive"].sum()) > 0
    if cls_loss == "pfl":  # gamma_ad computed in float32
        assert stats["gamma_ad"].dtype == torch.float32
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)


def _loss_inputs(seed=0, batch=2, anchors=(48, 12, 4), classes=5):
    g = torch.Generator().manual_seed(seed)
    total = sum(anchors)
    logits = torch.randn(batch, total, classes, generator=g) * 2 - 2
    labels = torch.randint(0, classes, (batch, total), generator=g)
    positive = torch.rand(batch, total, generator=g) < 0.2
    targets = torch.zeros(batch, total, classes).scatter_(-1, labels[..., None], positive[..., None].float())
    weight = (torch.rand(batch, total, generator=g) > 0.1).float()
    return logits, targets, weight, list(anchors)


def _bf16_vs_fp32(loss_fn):
    """The loss and gradient of ``loss_fn`` at bf16-rounded logits, in bf16 and in float32."""
    logits, targets, weight, anchors = _loss_inputs()
    low = logits.to(torch.bfloat16).requires_grad_(True)
    high = low.detach().float().requires_grad_(True)  # the same values: only the loss's precision differs
    loss_low, loss_high = loss_fn(low, targets, weight, anchors), loss_fn(high, targets, weight, anchors)
    loss_low.backward()
    loss_high.backward()
    return loss_low, loss_high, low.grad, high.grad


@pytest.mark.parametrize("loss_name", ["focal", "pfl", "pfl_mean", "varifocal", "quality_focal"])
def test_fused_losses_accept_bf16_logits(loss_name):
    def loss_fn(logits, targets, weight, anchors):
        if loss_name == "focal":
            return sigmoid_focal_loss(logits, targets, reduction="sum", weight=weight) / 7
        if loss_name == "varifocal":
            return varifocal_loss(logits, targets * 0.8, weight=weight[..., None], reduction="sum")
        if loss_name == "quality_focal":
            return quality_focal_loss(logits, targets * 0.6, weight=weight, reduction="sum")
        return progressive_focal_loss(logits, targets, anchors, weight=weight, avg_factor=torch.tensor(7.0),
                                      level_reduction="sum" if loss_name == "pfl" else "mean")

    loss_low, loss_high, grad_low, grad_high = _bf16_vs_fp32(loss_fn)
    assert loss_low.dtype == torch.float32  # upcast at entry: a float32 loss
    assert grad_low.dtype == torch.bfloat16  # the gradient in the logits' dtype
    torch.testing.assert_close(loss_low, loss_high, rtol=1e-5, atol=1e-6)  # same values, float32 inside
    # the bf16 gradient is the float32 gradient rounded to bf16 (8 bits of mantissa: rel. error <= 2^-8)
    torch.testing.assert_close(grad_low.float(), grad_high, rtol=2 ** -8, atol=1e-6)
    # and against the float32 loss at the unrounded logits, within bf16 rounding of the inputs
    logits, targets, weight, anchors = _loss_inputs()
    reference = loss_fn(logits, targets, weight, anchors)
    torch.testing.assert_close(loss_low, reference, rtol=2e-2, atol=1e-3)


def test_resolve_amp_per_device_and_dtype():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not resolve_amp(False, "auto", cpu).enabled
    bf16 = resolve_amp(True, "auto", cpu, bf16_supported=True)
    assert (bf16.enabled, bf16.dtype, bf16.use_scaler, bf16.name) == (True, torch.bfloat16, False, "bf16")
    fp16 = resolve_amp(True, "auto", cuda, bf16_supported=False)
    assert (fp16.dtype, fp16.use_scaler, fp16.name) == (torch.float16, True, "fp16")
    assert resolve_amp(True, "auto", cuda, bf16_supported=True).dtype == torch.bfloat16
    assert resolve_amp(True, "fp16", cuda, bf16_supported=True).use_scaler
    with pytest.raises(ValueError, match="amp_dtype"):
        resolve_amp(True, "bfloat16", cpu)
    with pytest.raises(ValueError, match="no bf16"):
        resolve_amp(True, "bf16", cuda, bf16_supported=False)
    with pytest.warns(UserWarning, match="fp16 autocast is not supported"):
        assert not resolve_amp(True, "fp16", cpu, bf16_supported=True).enabled


def toy_config(tmp_path, **solver):
    return config_from_dict({
        "model": {"num_classes": 2},
        "solver": {"lr": 0.05, "epochs": 2, "steps": [2], "warmup_iters": 2, **solver},
        "log": {"every": 2, "tensorboard": False, "progress_bar": False},
        "batch_size": 2, "workers": 0, "seed": 3, "device": "cpu", "output_dir": str(tmp_path / "run"),
    })


def test_amp_config_without_cpu_bf16_falls_back_with_one_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(amp_module, "cpu_supports_bf16", lambda: False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = Trainer(toy_config(tmp_path, amp=True), model=ToyDetector(), train_dataset=ToyDataset(8))
        summary = trainer.train()
    amp_warnings = [w for w in caught if "solver.amp" in str(w.message)]
    assert len(amp_warnings) == 1, [str(w.message) for w in caught]
    assert "no native bf16" in str(amp_warnings[0].message)
    assert not trainer.use_amp and summary["amp"] == "fp32"


def test_amp_on_cpu_with_bf16_trains_in_bf16(tmp_path, monkeypatch):
    monkeypatch.setattr(amp_module, "cpu_supports_bf16", lambda: True)
    trainer = Trainer(toy_config(tmp_path, amp=True), model=ToyDetector(), train_dataset=ToyDataset(8))
    seen = []
    forward = trainer.model.forward

    def spy(images, targets=None):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return forward(images, targets)

    trainer.model.forward = spy
    summary = trainer.train()
    assert seen and all(dtype == torch.bfloat16 for dtype in seen)
    assert summary["amp"] == "bf16" and not trainer.scaler.is_enabled()
    assert all(torch.isfinite(torch.tensor(trainer.loss_history)))


def test_log_records_carry_time_eta_and_memory(tmp_path):
    trainer = Trainer(toy_config(tmp_path), model=ToyDetector(), train_dataset=ToyDataset(8))
    summary = trainer.train()
    records = [json.loads(line) for line in (trainer.run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records] == [1, 2, 4, 5, 6, 8]  # step 0 of each epoch + every 2
    for record in records:
        assert record["time"] > 0 and 0 <= record["data_time"] <= record["time"]
        assert record["eta"] >= 0 and record["memory"] > 1  # RSS in MB on CPU
    assert records[-1]["eta"] == 0  # nothing left after the last iteration
    assert records[0]["eta"] > 0
    assert summary["iterations_per_second"] > 0 and summary["iterations"] == 8


def test_meters():
    assert format_eta(3725) == "1:02:05" and format_eta(0) == "0:00:00" and format_eta(90061) == "25:01:01"
    timer = IterationTimer()
    assert timer.eta(10) == 0.0
    for _ in range(3):
        timer.data_ready()
        timer.step_done()
    window = timer.window()
    assert window["time"] >= window["data_time"] >= 0 and timer.total_iterations == 3
    assert timer.eta(4) == pytest.approx(4 * timer.seconds_per_iteration)
    assert timer.window() == {"time": 0.0, "data_time": 0.0}  # reset by the previous call
    assert memory_mb(torch.device("cpu")) > 1

"""The CUDA paths (run by ``benchmarks/gpu_check.sh``; every test skips without a GPU).

- fused focal loss and PFL vs autograd of the formula on CUDA, where both take their general path (the
  binary / one-hot short cuts are CPU-only: deciding them on a GPU would need a host synchronisation),
  and PFL's device-side assert on non-binary targets;
- the fused losses with fp16 / bf16 logits: float32 loss, gradient in the logits' dtype;
- VFNet with torchvision's deformable convolution (``deform_conv_impl="auto"`` on CUDA) equal to the
  sampling form;
- a few AMP iterations of every detector x focal / PFL in fp16 (GradScaler) and bf16, and the Trainer;
- a 1-GPU NCCL process group through torchrun training with DDP.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torchvision
from toy import ToyDataset, ToyDetector

from umop.engine import Trainer, config_from_dict
from umop.engine.amp import resolve_amp
from umop.losses import progressive_focal_loss, sigmoid_focal_loss
from umop.losses.focal import focal_loss_reference
from umop.models import build_detector

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = torch.device("cuda")
REPO_ROOT = Path(__file__).resolve().parents[2]
LEVELS = [256, 64, 16, 4, 1]


def _case(kind: str, seed: int = 0, classes: int = 6, batch: int = 2):
    """float64 CPU logits (B, A, C), targets ('one_hot' or 'multi_label'), anchor weights (B, A)."""
    g = torch.Generator().manual_seed(seed)
    anchors = sum(LEVELS)
    logits = torch.randn(batch, anchors, classes, generator=g, dtype=torch.float64) * 2 - 1
    if kind == "multi_label":
        targets = (torch.rand(batch, anchors, classes, generator=g) < 0.15).double()
    else:
        labels = torch.randint(classes, (batch, anchors), generator=g)
        targets = torch.nn.functional.one_hot(labels, classes).double()
        targets *= (torch.rand(batch, anchors, generator=g) < 0.25)[..., None]
    weight = (torch.rand(batch, anchors, generator=g) > 0.1).double()
    return logits, targets, weight


@pytest.mark.parametrize("kind", ["one_hot", "multi_label"])
@pytest.mark.parametrize("target_dtype", [torch.float32, torch.bool])
def test_fused_focal_loss_on_cuda_matches_autograd_and_torchvision(kind, target_dtype):
    logits64, targets64, weight64 = _case(kind)
    logits = logits64.float().to(CUDA).requires_grad_(True)
    targets = targets64.to(target_dtype).to(CUDA)
    weight = weight64.float().to(CUDA)
    loss = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0, reduction="sum", weight=weight)
    (grad,) = torch.autograd.grad(loss, logits)

    reference_logits = logits64.clone().requires_grad_(True)  # float64 CPU autograd of the formula
    reference = (focal_loss_reference(reference_logits, targets64) * weight64[..., None]).sum()
    (reference_grad,) = torch.autograd.grad(reference, reference_logits)
    torch.testing.assert_close(loss.double().cpu(), reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.double().cpu(), reference_grad, rtol=1e-4, atol=1e-6)
    tv = torchvision.ops.sigmoid_focal_loss(logits.detach(), targets.float(), 0.25, 2.0, reduction="none")
    torch.testing.assert_close(loss, (tv * weight[..., None]).sum(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kind", ["one_hot", "multi_label"])
@pytest.mark.parametrize("estimator", ["official", "paper"])
@pytest.mark.parametrize("level_reduction", ["sum", "mean"])
def test_pfl_general_path_on_cuda_matches_float64_cpu(kind, estimator, level_reduction):
    logits64, targets64, weight64 = _case(kind, seed=1)
    options = dict(avg_factor=9.0, estimator=estimator, level_reduction=level_reduction, return_stats=True)
    cpu_logits = logits64.clone().requires_grad_(True)
    cpu_loss, cpu_stats = progressive_focal_loss(cpu_logits, targets64, LEVELS, weight=weight64, **options)
    (cpu_grad,) = torch.autograd.grad(cpu_loss, cpu_logits)

    logits = logits64.float().to(CUDA).requires_grad_(True)
    loss, stats = progressive_focal_loss(logits, targets64.float().to(CUDA), LEVELS,
                                         weight=weight64.float().to(CUDA), **options)
    (grad,) = torch.autograd.grad(loss, logits)
    torch.testing.assert_close(loss.double().cpu(), cpu_loss, rtol=1e-5, atol=1e-5)
    for key in ("gamma_ad", "alpha_ad", "num_positive", "loss"):
        torch.testing.assert_close(stats[key].double().cpu(), cpu_stats[key].double(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.double().cpu(), cpu_grad, rtol=1e-4, atol=1e-6)


def test_pfl_device_assert_rejects_soft_targets_on_cuda():
    """A device-side assert poisons the CUDA context: run it in a child process."""
    code = textwrap.dedent("""
        import torch
        from umop.losses import progressive_focal_loss
        logits = torch.zeros(1, 5, 3, device="cuda", requires_grad=True)
        targets = torch.zeros(1, 5, 3, device="cuda"); targets[0, 0, 1] = 0.5
        loss = progressive_focal_loss(logits, targets, [4, 1])
        torch.cuda.synchronize()
        print("NO ERROR", float(loss))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode != 0 and "NO ERROR" not in result.stdout
    assert "targets must be binary" in result.stderr or "device-side assert" in result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("loss_name", ["focal", "pfl"])
def test_low_precision_logits_on_cuda(dtype, loss_name):
    logits64, targets64, weight64 = _case("one_hot", seed=2)
    targets, weight = targets64.float().to(CUDA), weight64.float().to(CUDA)

    def loss_fn(logits):
        if loss_name == "focal":
            return sigmoid_focal_loss(logits, targets, reduction="sum", weight=weight) / 9
        return progressive_focal_loss(logits, targets, LEVELS, weight=weight, avg_factor=torch.tensor(9.0, device=CUDA))

    low = logits64.to(dtype).to(CUDA).requires_grad_(True)
    high = low.detach().float().requires_grad_(True)
    loss_low, loss_high = loss_fn(low), loss_fn(high)
    loss_low.backward()
    loss_high.backward()
    assert loss_low.dtype == torch.float32 and low.grad.dtype == dtype
    torch.testing.assert_close(loss_low, loss_high, rtol=1e-5, atol=1e-6)
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(low.grad.float(), high.grad, rtol=eps, atol=1e-6)


def _tiny_detector(name: str, cls_loss: str, **options):
    torch.manual_seed(0)
    return build_detector(name, 3, backbone="resnet18", fpn_channels=32, cls_loss=cls_loss, **options).to(CUDA)


def _batch():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 160, 192, generator=g).to(CUDA), torch.rand(3, 128, 160, generator=g).to(CUDA)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 90.0, 100.0], [100.0, 30.0, 180.0, 150.0]], device=CUDA),
                "labels": torch.tensor([0, 2], device=CUDA)},
               {"boxes": torch.tensor([[20.0, 20.0, 60.0, 50.0]], device=CUDA),
                "labels": torch.tensor([1], device=CUDA)}]
    return images, targets


def test_vfnet_torchvision_deform_conv_on_cuda_equals_sampling_form():
    model = _tiny_detector("vfnet", "varifocal", deform_conv_impl="auto").train()
    images, targets = _batch()
    batch, _ = model.preprocess(images)
    features = [feature.detach() for feature in model.backbone(batch)]  # the head's gradients only
    outputs = {}
    for implementation in ("auto", "sampling"):  # auto = torchvision's kernel on CUDA
        model.head.deform_conv_impl = implementation
        outputs[implementation] = model.head(features)
        grads = torch.autograd.grad(outputs[implementation]["cls_logits"].square().sum(), list(model.head.parameters()),
                                    allow_unused=True)
        outputs[implementation]["grads"] = [g for g in grads if g is not None]
    for key in ("cls_logits", "bbox_regression", "bbox_init"):
        torch.testing.assert_close(outputs["auto"][key], outputs["sampling"][key], rtol=1e-4, atol=1e-4)
    for g_auto, g_sampling in zip(outputs["auto"]["grads"], outputs["sampling"]["grads"]):
        torch.testing.assert_close(g_auto, g_sampling, rtol=1e-3, atol=1e-3)
    model.head.deform_conv_impl = "auto"
    losses = model(images, targets)
    assert all(torch.isfinite(v) for k, v in losses.items() if k.startswith("loss_"))


@pytest.mark.parametrize("name", ["retinanet", "atss", "fcos", "vfnet"])
@pytest.mark.parametrize("cls_loss", ["focal", "pfl"])
@pytest.mark.parametrize("amp_dtype", ["fp16", "bf16"])
def test_amp_training_iterations_on_cuda(name, cls_loss, amp_dtype):
    if amp_dtype == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    model = _tiny_detector(name, cls_loss).train()
    amp = resolve_amp(True, amp_dtype, CUDA)
    scaler = torch.amp.GradScaler("cuda", enabled=amp.use_scaler)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    images, targets = _batch()
    history = []
    for _ in range(4):
        with amp.autocast():
            outputs = model(images, targets)
        losses = [v for k, v in outputs.items() if k.startswith("loss_")]
        assert all(v.dtype == torch.float32 for v in losses)
        loss = sum(losses)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        history.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(history))), history
    assert all(torch.isfinite(p).all() for p in model.parameters())
    if cls_loss == "pfl":
        assert outputs["stats"]["gamma_ad"].dtype == torch.float32


def _toy_config(output_dir: Path, **solver):
    return config_from_dict({
        "model": {"num_classes": 2},
        "solver": {"lr": 0.05, "epochs": 2, "steps": [2], "warmup_iters": 2, **solver},
        "log": {"every": 1, "tensorboard": False, "progress_bar": False},
        "batch_size": 2, "workers": 0, "seed": 3, "device": "cuda", "output_dir": str(output_dir),
    })


@pytest.mark.parametrize("amp_dtype", ["fp16", "bf16"])
def test_trainer_amp_on_cuda_logs_gpu_memory(tmp_path, amp_dtype):
    if amp_dtype == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    trainer = Trainer(_toy_config(tmp_path / "run", amp=True, amp_dtype=amp_dtype), model=ToyDetector(),
                      train_dataset=ToyDataset(8))
    summary = trainer.train()
    assert summary["amp"] == amp_dtype and trainer.scaler.is_enabled() == (amp_dtype == "fp16")
    records = [json.loads(line) for line in (trainer.run_dir / "log.jsonl").read_text().splitlines()]
    assert len(records) == 8 and all(r["memory"] > 0 and r["time"] > 0 for r in records)
    assert summary["nonfinite_skipped"] == 0 and summary["iterations_per_second"] > 0


NCCL_SCRIPT = """
import json, os, sys
import torch, torch.distributed as dist
from toy import ToyDataset, ToyDetector
from umop.engine import Trainer, config_from_dict

torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
dist.init_process_group("nccl")  # WORLD_SIZE=1: umop would not start a group itself
value = torch.ones(1, device="cuda") * (dist.get_rank() + 1)
dist.all_reduce(value)
config = config_from_dict({
    "model": {"num_classes": 2}, "solver": {"lr": 0.05, "epochs": 1, "warmup_iters": 1, "amp": True},
    "log": {"every": 1, "tensorboard": False, "progress_bar": False},
    "batch_size": 2, "workers": 0, "seed": 3, "device": "cuda", "output_dir": sys.argv[1]})
trainer = Trainer(config, model=ToyDetector(), train_dataset=ToyDataset(8))
summary = trainer.train()
ddp = type(trainer.ddp_model).__name__
json.dump({"backend": dist.get_backend(), "world": dist.get_world_size(), "sum": float(value),
           "ddp": ddp, "iterations": summary["iterations"]}, open(os.path.join(sys.argv[1], "nccl.json"), "w"))
dist.destroy_process_group()
"""


def test_one_gpu_nccl_process_group_through_torchrun(tmp_path):
    script = tmp_path / "nccl_train.py"
    script.write_text(NCCL_SCRIPT)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), str(Path(__file__).parent)])}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                             str(script), str(run_dir)], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((run_dir / "nccl.json").read_text())
    assert report == {"backend": "nccl", "world": 1, "sum": 1.0, "ddp": "DistributedDataParallel",
                      "iterations": 4}

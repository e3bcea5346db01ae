"""Training survives records that fail at load time (undecodable image), with and without loader workers."""

from __future__ import annotations

import pytest
from toy import ToyDetector

from umop.data import BadRecordWarning, CocoDetection, build_transforms, make_tiny_synthetic_dataset
from umop.engine import Trainer, config_from_dict


@pytest.mark.parametrize("workers", [0, 1])
def test_undecodable_image_is_skipped_not_fatal(tmp_path, workers):
    ann_file = make_tiny_synthetic_dataset(tmp_path / "data", num_images=8, seed=0)
    images = sorted((tmp_path / "data" / "images").glob("*.png"))
    images[3].write_bytes(b"this is not a png")  # passes the index check (file exists), fails to decode
    dataset = CocoDetection(ann_file, transforms=build_transforms(train=True, min_size=64, max_size=64))
    config = config_from_dict({
        "model": {"num_classes": 3}, "solver": {"lr": 0.01, "epochs": 2, "warmup_iters": 1},
        "log": {"every": 1, "tensorboard": False, "progress_bar": False},
        "batch_size": 2, "workers": workers, "device": "cpu", "output_dir": str(tmp_path / "run"),
    })
    trainer = Trainer(config, model=ToyDetector(num_classes=3), train_dataset=dataset)
    if workers == 0:
        with pytest.warns(BadRecordWarning, match=images[3].name):
            summary = trainer.train()
    else:
        summary = trainer.train()
    assert summary["iterations"] == 8 and summary["epochs"] == 2
    assert all(loss == loss for loss in trainer.loss_history)  # every step was a real, finite step

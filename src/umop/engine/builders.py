"""Build the detector, datasets and data loaders of a :class:`~umop.engine.config.Config`."""

from __future__ import annotations

import random
import warnings
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .config import Config, ConfigError, DataConfig, ModelConfig
from .distributed import get_rank, get_world_size

__all__ = ["build_model", "build_dataset", "build_train_loader", "build_eval_loader", "prepare_synthetic_data",
           "EpochSeededDataset", "ResumableDistributedSampler", "seed_worker", "test_min_size"]


def build_model(model_config: ModelConfig, num_classes: int | None = None) -> nn.Module:
    """``umop.models.build_detector`` with the config's arguments (``num_classes`` overrides the config)."""
    from ..models import build_detector

    return build_detector(
        model_config.name,
        num_classes if num_classes is not None else model_config.num_classes,
        backbone=model_config.backbone,
        pretrained_backbone=model_config.pretrained_backbone,
        **model_config.component_arguments(),
        **model_config.options,
    )


def test_min_size(data: DataConfig) -> int:
    """Shorter side used at evaluation: ``test_min_size``, else ``min_size`` (upper end of a range)."""
    if data.test_min_size > 0:
        return data.test_min_size
    return data.min_size if isinstance(data.min_size, int) else int(data.min_size[-1])


def prepare_synthetic_data(config: Config, run_dir: Path) -> None:
    """Generate the built-in synthetic dataset once (``data.synthetic.enabled``) and point ``data.*`` at it."""
    synthetic = config.data.synthetic
    if not synthetic.enabled:
        return
    from ..data import make_synthetic_dataset

    out_dir = Path(synthetic.out_dir) if synthetic.out_dir else run_dir / "data"
    splits = {"train": (synthetic.num_train, synthetic.seed), "val": (synthetic.num_val, synthetic.seed + 1)}
    for split, (num_images, seed) in splits.items():
        split_dir = out_dir / split
        ann_file = next(iter(sorted(split_dir.glob("*.json"))), None) if split_dir.is_dir() else None
        if ann_file is None and get_rank() == 0:
            ann_file = Path(make_synthetic_dataset(split_dir, num_images=num_images, image_size=synthetic.image_size,
                                                   num_classes=synthetic.num_classes,
                                                   class_imbalance=synthetic.class_imbalance,
                                                   min_object_size=synthetic.min_object_size,
                                                   max_object_size_fraction=synthetic.max_object_size_fraction,
                                                   objects_per_image=tuple(synthetic.objects_per_image), seed=seed))
        from .distributed import barrier

        barrier()
        ann_file = next(iter(sorted(split_dir.glob("*.json"))))
        given = getattr(config.data, f"{split}_ann")
        if given and Path(given).resolve() != ann_file.resolve():  # (a resumed run's config holds ann_file itself)
            raise ConfigError(f"data.{split}_ann={given} is set, but data.synthetic.enabled is true and would "
                              f"replace it by the synthetic set ({ann_file}): add data.synthetic.enabled=false to "
                              f"train on your data")
        setattr(config.data, f"{split}_ann", str(ann_file))
        setattr(config.data, f"{split}_images", str(_image_dir_of(ann_file)))


def _image_dir_of(ann_file: Path) -> Path:
    """The folder the ``file_name`` entries of a generated json are relative to."""
    import json

    first = json.loads(ann_file.read_text()).get("images", [{}])[0].get("file_name", "")
    for candidate in (ann_file.parent, ann_file.parent / "images"):
        if first and (candidate / first).is_file():
            return candidate
    return ann_file.parent


def build_dataset(data: DataConfig, train: bool) -> Dataset:
    """``umop.data.CocoDetection`` of the train or val split with the configured transforms."""
    from ..data import CocoDetection, build_transforms

    ann, images = (data.train_ann, data.train_images) if train else (data.val_ann, data.val_images)
    split = "train" if train else "val"
    if not ann:
        raise ConfigError(f"config key 'data.{split}_ann' is empty: set the COCO json of the {split} split "
                          f"(convert VOC/YOLO with `umop data convert`)")
    if not Path(ann).is_file():
        raise ConfigError(f"config key 'data.{split}_ann': file '{ann}' does not exist")
    if train:
        transforms = build_transforms(train=True, min_size=data.min_size, max_size=data.max_size,
                                      flip_prob=data.flip_prob)
    else:
        transforms = build_transforms(train=False, min_size=test_min_size(data), max_size=data.max_size,
                                      flip_prob=0.0)
    # Training substitutes an unreadable image; evaluation skips and counts it (each image evaluated once).
    dataset = CocoDetection(ann, images or None, transforms=transforms,
                            unreadable="substitute" if train else "skip")
    if len(dataset) == 0:
        raise ConfigError(f"config key 'data.{split}_ann': '{ann}' has no usable images")
    return dataset


class EpochSeededDataset(Dataset):
    """Makes the random augmentation of a sample a function of ``(seed, epoch, index)`` only.

    Each ``__getitem__`` runs under a forked RNG seeded from those three numbers, so a sample is augmented
    the same way whatever the number of workers or processes, and after a resume.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        sample_seed = (self.seed * 1_000_003 + self.epoch * 10_007 + index) % 2**63
        python_state, numpy_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            random.seed(sample_seed)
            np.random.seed(sample_seed % 2**32)
            try:
                return self.dataset[index]
            finally:
                random.setstate(python_state)
                np.random.set_state(numpy_state)

    def __getattr__(self, name: str) -> Any:  # class_names, label_to_category_id, ...
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


class ResumableDistributedSampler(DistributedSampler):
    """A :class:`DistributedSampler` that can start an epoch part-way (a resumed mid-epoch checkpoint).

    ``set_start(n)`` drops the first ``n`` indices of this rank's epoch order (``n`` = iterations done x the
    per-process batch size); the remaining indices are exactly those an uninterrupted epoch would yield.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.start_index = 0

    def set_start(self, start_index: int) -> None:
        self.start_index = max(0, int(start_index))

    def __iter__(self):  # type: ignore[override]
        indices = list(super().__iter__())
        return iter(indices[self.start_index:])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start_index)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed NumPy and ``random`` from the worker's torch seed."""
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def collate_detection(batch: Sequence[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list, list]:
    """``[(image, target), ...]`` -> ``(images, targets)`` lists (same as :func:`umop.data.collate_fn`)."""
    return [sample[0] for sample in batch], [sample[1] for sample in batch]


def _collate() -> Any:
    return collate_detection


def build_train_loader(dataset: Dataset, config: Config) -> tuple[DataLoader, ResumableDistributedSampler]:
    """Shuffled loader over this rank's shard; the order depends only on ``seed`` and the epoch.

    ``config.batch_size`` is the global batch: each of the ``world_size`` processes loads
    ``batch_size // world_size`` images per step.
    """
    world_size = get_world_size()
    if config.batch_size % world_size:
        raise ConfigError(f"config key 'batch_size' ({config.batch_size}) must be divisible by the number of "
                          f"processes ({world_size})")
    sampler = ResumableDistributedSampler(dataset, num_replicas=world_size, rank=get_rank(), shuffle=True,
                                          seed=config.seed, drop_last=False)
    generator = torch.Generator()
    generator.manual_seed(config.seed)
    loader = DataLoader(dataset, batch_size=config.batch_size // world_size, sampler=sampler,
                        num_workers=config.workers, collate_fn=_collate(), worker_init_fn=seed_worker,
                        generator=generator, pin_memory=torch.cuda.is_available(), drop_last=False,
                        persistent_workers=False)
    return loader, sampler


def build_eval_loader(dataset: Dataset, config: Config) -> DataLoader:
    """Unshuffled loader over this rank's shard (DistributedSampler pads; evaluation removes duplicates)."""
    world_size = get_world_size()
    batch_size = config.eval.batch_size or max(1, config.batch_size // world_size)
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=get_rank(), shuffle=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=config.workers,
                          collate_fn=_collate(), worker_init_fn=seed_worker,
                          pin_memory=torch.cuda.is_available())

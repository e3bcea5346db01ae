"""Data: COCO json dataset, VOC/YOLO converters, dataset checker, v2 transforms, synthetic generator.

```python
ds = umop.data.CocoDetection(ann_file, image_dir, transforms=umop.data.build_transforms(train=True))
image, target = ds[0]   # float [3, H, W] 0..1; {"boxes" (N, 4) xyxy, "labels" (N,), "image_id", "orig_size"}
loader = DataLoader(ds, batch_size=2, collate_fn=umop.data.collate_fn)
```

The names below are imported on first use (so that ``umop -h`` and ``umop data -h`` do not load torch).
"""

from __future__ import annotations

from .._lazy import lazy_exports

_LAZY = {
    "CheckReport": "umop.data.check",
    "check_dataset": "umop.data.check",
    "CocoDetection": "umop.data.coco",
    "collate_fn": "umop.data.coco",
    "default_image_dir": "umop.data.coco",
    "index_coco": "umop.data.coco",
    "load_coco_json": "umop.data.coco",
    "coco_to_voc": "umop.data.convert",
    "coco_to_yolo": "umop.data.convert",
    "read_class_names": "umop.data.convert",
    "save_coco_json": "umop.data.convert",
    "voc_to_coco": "umop.data.convert",
    "yolo_to_coco": "umop.data.convert",
    "BadRecord": "umop.data.records",
    "BadRecordWarning": "umop.data.records",
    "make_synthetic_dataset": "umop.data.synthetic",
    "make_tiny_synthetic_dataset": "umop.data.synthetic",
    "synthetic_class_names": "umop.data.synthetic",
    "ResizeShorterSide": "umop.data.transforms",
    "build_transforms": "umop.data.transforms",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())

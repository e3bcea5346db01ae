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

_EXPORTS = {  # submodule: the public names it defines
    ".check": "CheckReport check_dataset",
    ".coco": "CocoDetection collate_fn default_image_dir index_coco load_coco_json",
    ".convert": "coco_to_voc coco_to_yolo read_class_names save_coco_json voc_to_coco yolo_to_coco",
    ".records": "BadRecord BadRecordWarning",
    ".synthetic": "make_synthetic_dataset make_tiny_synthetic_dataset synthetic_class_names",
    ".transforms": "ResizeShorterSide build_transforms",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

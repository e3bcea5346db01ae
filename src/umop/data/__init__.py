"""Data: COCO json dataset, VOC/YOLO converters, dataset checker, v2 transforms, synthetic generator.

```python
ds = umop.data.CocoDetection(ann_file, image_dir, transforms=umop.data.build_transforms(train=True))
image, target = ds[0]   # float [3, H, W] 0..1; {"boxes" (N, 4) xyxy, "labels" (N,), "image_id", "orig_size"}
loader = DataLoader(ds, batch_size=2, collate_fn=umop.data.collate_fn)
```
"""

from umop.data.check import CheckReport, check_dataset
from umop.data.coco import CocoDetection, collate_fn, index_coco, load_coco_json
from umop.data.convert import coco_to_voc, coco_to_yolo, read_class_names, save_coco_json, voc_to_coco, yolo_to_coco
from umop.data.records import BadRecord, BadRecordWarning
from umop.data.synthetic import make_synthetic_dataset, make_tiny_synthetic_dataset, synthetic_class_names
from umop.data.transforms import ResizeShorterSide, build_transforms

__all__ = [
    "BadRecord",
    "BadRecordWarning",
    "CheckReport",
    "CocoDetection",
    "ResizeShorterSide",
    "build_transforms",
    "check_dataset",
    "coco_to_voc",
    "coco_to_yolo",
    "collate_fn",
    "index_coco",
    "load_coco_json",
    "make_synthetic_dataset",
    "make_tiny_synthetic_dataset",
    "read_class_names",
    "save_coco_json",
    "synthetic_class_names",
    "voc_to_coco",
    "yolo_to_coco",
]

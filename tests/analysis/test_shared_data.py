"""Level statistics on the real BCCD images of ../shared/data (skipped where that folder is absent)."""
from __future__ import annotations

import warnings

from umop.analysis.coco import load_coco
from umop.analysis.levels import LEVELS, level_statistics, mean_positive_ratios


def test_bccd_level_statistics_with_real_atss(tmp_path, shared_data_dir):
    """First 12 BCCD test images (640x480 -> 1067x800, padded 800x1088) under the real ATSS assigner."""
    from umop.data.convert import save_coco_json, voc_to_coco

    root = shared_data_dir / "bccd" / "BCCD"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coco = voc_to_coco(root, split_file="test", class_names=["RBC", "WBC", "Platelets"])
    coco["images"] = coco["images"][:12]
    kept = {image["id"] for image in coco["images"]}
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in kept]
    ann_file = save_coco_json(coco, tmp_path / "bccd_test12.json")

    index = load_coco(ann_file, root / "JPEGImages")
    assert not index.missing_files
    rows = level_statistics(index, ["atss"])
    assert len(rows) == 12 * len(LEVELS)
    assert all((row.width, row.height) == (1067, 800) for row in rows)
    # ATSS: one anchor per location of the 800x1088 padded input: (800/s) * (1088/s) rounded up per level.
    assert [row.num_total for row in rows[:5]] == [100 * 136, 50 * 68, 25 * 34, 13 * 17, 7 * 9]
    # Every box gets positives (ATSS keeps at least the candidates above mean + std): at least one per box.
    assert sum(row.num_positive for row in rows) >= len(coco["annotations"])
    # Platelets (~39 px, 65 px after the resize) match the 64-px P3 anchors, red cells (~102 -> 170 px)
    # the 128-px P4 anchors, so both levels must hold positives.
    means = mean_positive_ratios(rows)["atss"]
    assert means[3] > 0 and means[4] > 0

"""Bad-record bookkeeping shared by the dataset, the converters and the checker.

Every record that cannot be used as it is becomes a :class:`BadRecord`. Two families exist:

* **bad** records are skipped (the image, the annotation or the category is not used);
* **fixed** records are used after a repair, e.g. a box partly outside the image is clipped to it.

Each one is announced once with a :class:`BadRecordWarning`, followed by one summary warning.
"""

from __future__ import annotations

import collections
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

# Kinds of bad records (the record is skipped).
MALFORMED = "malformed_record"  # missing key, wrong type, non-numeric box, unparsable xml / label line
DUPLICATE_ID = "duplicate_id"  # image, annotation or category id seen before (the first one is kept)
MISSING_IMAGE = "missing_image"  # image file not found
UNREADABLE_IMAGE = "unreadable_image"  # image file exists but cannot be decoded
IMAGE_SIZE_MISMATCH = "image_size_mismatch"  # decoded size differs from the record's width/height
UNKNOWN_IMAGE = "unknown_image"  # annotation refers to an image id that is not in the file
UNKNOWN_CATEGORY = "unknown_category"  # annotation refers to a category that is not in the file
ZERO_SIZE_BOX = "zero_size_box"  # width or height <= 0
BOX_OUTSIDE_IMAGE = "box_outside_image"  # box does not overlap the image at all
ORPHAN_LABEL = "orphan_label_file"  # YOLO label file without an image

# Kinds of fixed records (the record is used after a repair).
BOX_CLIPPED = "box_clipped"  # box partly outside the image, clipped to it
SIZE_CORRECTED = "size_corrected"  # converter: size in the annotation file differs from the image file

BAD_KINDS = (
    MALFORMED,
    DUPLICATE_ID,
    MISSING_IMAGE,
    UNREADABLE_IMAGE,
    IMAGE_SIZE_MISMATCH,
    UNKNOWN_IMAGE,
    UNKNOWN_CATEGORY,
    ZERO_SIZE_BOX,
    BOX_OUTSIDE_IMAGE,
    ORPHAN_LABEL,
)
FIXED_KINDS = (BOX_CLIPPED, SIZE_CORRECTED)


class BadRecordWarning(UserWarning):
    """Warning category used for every skipped or repaired record."""


@dataclass(frozen=True)
class BadRecord:
    """One record that was skipped (``kind`` in :data:`BAD_KINDS`) or repaired (:data:`FIXED_KINDS`).

    Attributes:
        kind: one of the kind constants of this module.
        source: the file the record comes from (annotation json, xml file, label txt).
        record: what the record is, e.g. ``"image id=3"``, ``"annotation id=17"``, ``"line 4"``.
        message: human-readable detail (what is wrong and what was done).
    """

    kind: str
    source: str
    record: str
    message: str

    @property
    def is_bad(self) -> bool:
        """True when the record was skipped, False when it was repaired and used."""
        return self.kind not in FIXED_KINDS

    def __str__(self) -> str:
        return f"{self.source}: {self.record}: {self.kind}: {self.message}"


def count_by_kind(records: Iterable[BadRecord]) -> dict[str, int]:
    """Number of records of each kind, in the order of first appearance."""
    return dict(collections.Counter(record.kind for record in records))


def format_counts(counts: dict[str, int]) -> str:
    """``"kind_a=3, kind_b=1"`` (or ``"none"``)."""
    return ", ".join(f"{kind}={count}" for kind, count in counts.items()) or "none"


def warn_records(records: Iterable[BadRecord], source: str, *, what: str = "loading", stacklevel: int = 3) -> None:
    """Emit one :class:`BadRecordWarning` per record, then one summary warning (if there was any record)."""
    records = list(records)
    if not records:
        return
    for record in records:
        action = "skipped" if record.is_bad else "repaired"
        warnings.warn(f"{action}: {record}", BadRecordWarning, stacklevel=stacklevel)
    bad = [record for record in records if record.is_bad]
    fixed = [record for record in records if not record.is_bad]
    warnings.warn(
        f"{what} {source}: skipped {len(bad)} bad record(s) ({format_counts(count_by_kind(bad))}), "
        f"repaired {len(fixed)} ({format_counts(count_by_kind(fixed))}); "
        "run `umop data check` for the full report",
        BadRecordWarning,
        stacklevel=stacklevel,
    )

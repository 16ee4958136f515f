"""The records of ``detect-crop``: one per crop, in ``crops.jsonl`` (or ``crops.csv``).

A record: ``source`` (the photo, absolute), ``image_size`` ``[W, H]``, ``face_index``, ``output``
(the crop file's name in the folder), ``crop_size``, and the detection as
:meth:`facerecon.crop.FaceCrop.to_dict` gives it (``box``, ``probability``, ``landmarks5``,
``detection``, ``fallback``). docs/formats.md describes both files. A later run into the same
folder merges its records into the earlier ones (:func:`merge_records`).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from facerecon.errors import InputError
from facerecon.io_utils import atomic_open

RECORDS_JSONL = "crops.jsonl"
RECORDS_CSV = "crops.csv"
#: The five points' names in the CSV columns, in MTCNN's order.
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


def merge_records(old: list[dict[str, Any]], new: list[dict[str, Any]], outdir: Path) -> list[dict[str, Any]]:
    """Replace the records of re-processed sources; keep the others; delete stale crop files.

    An old record is dropped when its source was processed again or its output file was
    rewritten by this run; a dropped record's crop file that this run did not rewrite is removed.
    """
    new_sources = {r["source"] for r in new}
    new_outputs = {r["output"] for r in new}
    kept = []
    for r in old:
        if r.get("source") in new_sources or r.get("output") in new_outputs:
            out = r.get("output")
            if out and out not in new_outputs and os.sep not in out and "/" not in out:
                (outdir / out).unlink(missing_ok=True)
            continue
        kept.append(r)
    return sorted(kept + new, key=lambda r: (str(r.get("source")), int(r.get("face_index", 0))))


def read_records(path: Path) -> list[dict[str, Any]]:
    """Records of an earlier run in OUTDIR (JSONL or CSV), to merge this run's into.

    Raises:
        InputError: the file is not a records file (binary garbage, a line that is not a
            record, numbers that do not parse): it is named with the line, and left untouched.
    """
    if not path.is_file():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a records file (not UTF-8 text at byte {exc.start}); fix or delete it") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the records file ({exc.strerror})") from None
    records = []
    if path.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if text.strip() and not {"source", "output"} <= set(reader.fieldnames or ()):
            raise InputError(f"{path}: not a crops.csv (its header has no 'source' and 'output' columns); fix or delete it")
        try:
            for row in reader:
                records.append(check_record(from_csv_row(row), path, reader.line_num))
        except (ValueError, TypeError, csv.Error) as exc:
            raise InputError(f"{path}:{reader.line_num}: not a crops record ({exc}); fix or delete the file") from None
        return records
    for k, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{k}: not a JSON record ({exc.msg}); fix or delete the file") from None
        records.append(check_record(rec, path, k))
    return records


def check_record(rec: Any, path: Path, line: int) -> dict[str, Any]:
    """A record as merging needs it: a dict with a string source and output and a whole face_index."""
    if not isinstance(rec, dict) or not isinstance(rec.get("source"), str) or not isinstance(rec.get("output"), str):
        raise InputError(f"{path}:{line}: not a crops record (no 'source' and 'output' strings); fix or delete the file")
    index = rec.get("face_index", 0)
    if isinstance(index, bool) or not isinstance(index, int):
        raise InputError(f"{path}:{line}: not a crops record ('face_index' is {index!r}); fix or delete the file")
    return rec


def write_records(path: Path, records: list[dict[str, Any]], as_csv: bool) -> None:
    """All ``records`` to ``path`` as JSON lines or CSV (:func:`csv_fields`), atomically."""

    if as_csv:
        with atomic_open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=csv_fields())
            writer.writeheader()
            for rec in records:
                writer.writerow(to_csv_row(rec))
    else:
        with atomic_open(path, "w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec) + "\n")


def csv_fields() -> list[str]:
    """The CSV columns: one per scalar of a record (box, landmarks and detection spread out)."""
    fields = ["source", "image_width", "image_height", "face_index", "output", "crop_size",
              "box_x0", "box_y0", "box_side", "probability", "fallback"]
    fields += [f"{n}_{a}" for n in LANDMARK_NAMES for a in "xy"]
    return fields + ["det_x0", "det_y0", "det_x1", "det_y1"]


def to_csv_row(rec: dict[str, Any]) -> dict[str, Any]:
    """A record as a CSV row (:func:`csv_fields`; empty cells for what is None)."""
    row: dict[str, Any] = {
        "source": rec["source"], "image_width": rec["image_size"][0], "image_height": rec["image_size"][1],
        "face_index": rec["face_index"], "output": rec["output"], "crop_size": rec["crop_size"],
        "box_x0": rec["box"][0], "box_y0": rec["box"][1], "box_side": rec["box"][2],
        "probability": "" if rec["probability"] is None else rec["probability"], "fallback": int(rec["fallback"]),
    }
    lm = rec.get("landmarks5")
    for i, n in enumerate(LANDMARK_NAMES):
        for j, a in enumerate("xy"):
            row[f"{n}_{a}"] = "" if lm is None else lm[i][j]
    det = rec.get("detection")
    for j, key in enumerate(("det_x0", "det_y0", "det_x1", "det_y1")):
        row[key] = "" if det is None else det[j]
    return row


def from_csv_row(row: dict[str, str]) -> dict[str, Any]:
    """Inverse of :func:`to_csv_row`."""
    def num(key: str) -> float | None:
        value = row.get(key, "")
        return None if value in ("", None) else float(value)

    lm_vals = [num(f"{n}_{a}") for n in LANDMARK_NAMES for a in "xy"]
    det_vals = [num(k) for k in ("det_x0", "det_y0", "det_x1", "det_y1")]
    return {
        "source": row.get("source", ""), "image_size": [int(num("image_width") or 0), int(num("image_height") or 0)],
        "face_index": int(num("face_index") or 0), "output": row.get("output", ""),
        "crop_size": int(num("crop_size") or 0),
        "box": [num("box_x0"), num("box_y0"), num("box_side")], "probability": num("probability"),
        "landmarks5": None if None in lm_vals else [lm_vals[i : i + 2] for i in range(0, 10, 2)],
        "detection": None if None in det_vals else det_vals,
        "fallback": bool(int(num("fallback") or 0)),
    }


__all__ = ["RECORDS_JSONL", "RECORDS_CSV", "LANDMARK_NAMES", "merge_records", "read_records", "write_records", "check_record", "csv_fields", "to_csv_row", "from_csv_row"]

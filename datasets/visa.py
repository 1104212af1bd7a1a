"""VisA: convert the raw download to MVTec layout with the official 1cls split CSV.

raw:  <raw>/<cls>/Data/Images/{Normal,Anomaly}/*.JPG, <raw>/<cls>/Data/Masks/Anomaly/*.png
      <raw>/split_csv/1cls.csv with columns object, split, label, image, mask (paths relative to <raw>)
out:  <out>/<cls>/train/good, <out>/<cls>/test/good, <out>/<cls>/test/bad,
      <out>/<cls>/ground_truth/bad/<stem>_mask.png

VisA masks are not 0/255 (defect pixels hold small values such as 1, 2): they are binarised > 0
and written as 0/255. NoCo ignores this CSV and tests on the last 100 sorted normals of each class
(its code's VisA loader); this module follows the official CSV.
"""
import csv
import json
import shutil
import warnings
from pathlib import Path


from datasets.common import list_images, load_mask
from datasets.mvtec import VISA_CLASSES

VISA_TEST_NORMALS = {"candle": 100, "capsules": 60, "cashew": 50, "chewinggum": 50, "fryum": 50, "macaroni1": 100,
                     "macaroni2": 100, "pcb1": 100, "pcb2": 100, "pcb3": 101, "pcb4": 101, "pipe_fryum": 50}
VISA_TEST_ANOMALIES = 100  # per class
VISA_TRAIN_TOTAL = 8659
VISA_TEST_TOTAL = 2162
CSV_COLUMNS = ("object", "split", "label", "image", "mask")
MARKER_NAME = "visa_prepared.json"  # written last: its presence means the conversion finished

# (split, label) of a CSV row -> output folder under <out>/<cls>
_OUTPUT_FOLDERS = {("train", "normal"): "train/good", ("test", "normal"): "test/good", ("test", "anomaly"): "test/bad"}


def _read_split_csv(raw_root, split_csv):
    with open(split_csv, newline="") as handle:
        reader = csv.DictReader(handle)
        missing_columns = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing_columns:
            raise ValueError(f"split CSV {split_csv} lacks columns {missing_columns} (has {reader.fieldnames})")
        rows = list(reader)
    if not rows:
        raise ValueError(f"split CSV {split_csv} has no rows")
    missing_files = []
    for line, row in enumerate(rows, start=2):
        if (row["split"], row["label"]) not in _OUTPUT_FOLDERS:
            raise ValueError(f"{split_csv} line {line}: unsupported split/label {row['split']!r}/{row['label']!r} "
                             f"(expected one of {sorted(_OUTPUT_FOLDERS)})")
        if row["label"] == "anomaly" and not row["mask"]:
            raise ValueError(f"{split_csv} line {line}: anomalous image {row['image']} has no mask entry")
        needed = [row["image"]] + ([row["mask"]] if row["label"] == "anomaly" else [])
        missing_files += [str(raw_root / name) for name in needed if not (raw_root / name).is_file()]
    if missing_files:
        raise FileNotFoundError(f"{len(missing_files)} file(s) named in {split_csv} are missing under {raw_root}, "
                                f"e.g. {', '.join(missing_files[:3])}")
    return rows


def _marker_split_csv(marker):
    try:
        return json.loads(marker.read_text()).get("split_csv")
    except (OSError, ValueError, AttributeError):
        return None


def prepare_visa(raw_root, out_root, split_csv=None):
    """Convert raw VisA under `raw_root` to MVTec layout under `out_root`; returns `out_root`.

    Idempotent: a finished conversion of the same CSV is detected by its marker file and skipped;
    anything else (no marker, another CSV) is redone from scratch for the CSV's classes.
    """
    raw_root, out_root = Path(raw_root), Path(out_root)
    split_csv = Path(split_csv) if split_csv is not None else raw_root / "split_csv" / "1cls.csv"
    marker = out_root / MARKER_NAME
    if _marker_split_csv(marker) == str(split_csv.resolve()):
        return out_root
    if not raw_root.is_dir():
        raise FileNotFoundError(f"raw VisA folder not found at {raw_root}: expected <raw>/<class>/Data/Images/"
                                "{Normal,Anomaly}; download it from https://github.com/amazon-science/spot-diff")
    if not split_csv.is_file():
        raise FileNotFoundError(f"VisA split CSV not found at {split_csv}: the official one is split_csv/1cls.csv "
                                "of the raw download (https://github.com/amazon-science/spot-diff)")
    rows = _read_split_csv(raw_root, split_csv)

    marker.unlink(missing_ok=True)
    classes = sorted({row["object"] for row in rows})
    for class_name in classes:  # remove only what this function writes, never the raw Data/ folder
        for folder in ("train", "test", "ground_truth"):
            shutil.rmtree(out_root / class_name / folder, ignore_errors=True)
    written = set()
    for row in rows:
        image = raw_root / row["image"]
        target_dir = out_root / row["object"] / _OUTPUT_FOLDERS[row["split"], row["label"]]
        target = target_dir / image.name
        if target in written:
            raise ValueError(f"two rows of {split_csv} map to the same output file {target}")
        written.add(target)
        target_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image, target)
        if row["label"] == "anomaly":
            mask_dir = out_root / row["object"] / "ground_truth" / "bad"
            mask_dir.mkdir(parents=True, exist_ok=True)
            load_mask(raw_root / row["mask"]).save(mask_dir / f"{image.stem}_mask.png")  # binarised > 0

    counts = visa_split_counts(out_root, classes)
    if set(classes) == set(VISA_CLASSES):  # the full official split: compare with the published counts
        for problem in visa_count_mismatches(counts):
            warnings.warn(f"prepared VisA at {out_root}: {problem}", stacklevel=2)
    marker.write_text(json.dumps({"split_csv": str(split_csv.resolve()), "counts": counts}, indent=1))
    return out_root


def visa_split_counts(out_root, classes=None):
    """Per-class image counts of a prepared folder: {cls: {"train": n, "test_good": n, "test_bad": n}}."""
    out_root = Path(out_root)
    classes = classes or sorted(p.name for p in out_root.iterdir() if (p / "train").is_dir())

    def count(folder):
        return len(list_images(folder)) if folder.is_dir() else 0

    return {c: {"train": count(out_root / c / "train" / "good"), "test_good": count(out_root / c / "test" / "good"),
                "test_bad": count(out_root / c / "test" / "bad")} for c in classes}


def visa_count_mismatches(counts):
    """Differences between `counts` (from visa_split_counts) and the official 1cls split, one line each."""
    problems = []
    for class_name in VISA_CLASSES:
        got = counts.get(class_name, {"train": 0, "test_good": 0, "test_bad": 0})
        if got["test_good"] != VISA_TEST_NORMALS[class_name]:
            problems.append(f"{class_name}: {got['test_good']} test normals, official {VISA_TEST_NORMALS[class_name]}")
        if got["test_bad"] != VISA_TEST_ANOMALIES:
            problems.append(f"{class_name}: {got['test_bad']} test anomalies, official {VISA_TEST_ANOMALIES}")
    train_total = sum(c["train"] for c in counts.values())
    test_total = sum(c["test_good"] + c["test_bad"] for c in counts.values())
    if train_total != VISA_TRAIN_TOTAL:
        problems.append(f"{train_total} train images in total, official {VISA_TRAIN_TOTAL}")
    if test_total != VISA_TEST_TOTAL:
        problems.append(f"{test_total} test images in total, official {VISA_TEST_TOTAL}")
    return problems

"""Our result table beside the published numbers, metric by metric, in points (ours - paper).

    python benchmarks/compare_paper.py results/<run>/results.csv
    python benchmarks/compare_paper.py my_table.csv --dataset mvtec --method revdist \\
        --backbone wide_resnet50_2 --weights imagenet --classes all --data_path data/mvtec \\
        --options "iters=5000;batch_size=16;cada_iters=5000;cada_batch_size=16"   # no config.json beside it
    python benchmarks/compare_paper.py results/<run>/results.csv --force     # a run unlike the paper's
    python benchmarks/compare_paper.py results/<run>/results.csv --paper_numbers other_numbers.csv
    python benchmarks/compare_paper.py results/<Real-IAD run as --dataset mvtec>/results.csv --dataset realiad

What the run is comes from its config.json (beside the CSV); --dataset, --method, --backbone, --vit, --weights,
--classes, --data_path and --options override it. Each of our rows (setting, align, class) and metric is matched with
every published row of the same dataset and method; a number printed in several tables is shown once per
table. Metrics our table leaves empty are not compared.

Only like is compared with like. benchmarks/paper_settings.csv gives, per (source, dataset, method), the
backbone, weights and input size the paper used, and benchmarks/paper_classes.csv each dataset's classes.
A `mean` or `mixed` row is comparable only when the run had exactly the paper's classes; a class row when
that class ran; any row only when backbone and weights are the paper's, and image_size and crop_size where
the run states them (config.json does; without it, --options image_size=...;crop_size=... may), and only when
the data and the training length are the paper's:
  data      each of the paper's classes that ran, counted in the run's data_path (config.json records the folder
            it read; --data_path gives another), has the published number of train/good, test/good and
            defective test images and the published defect kinds (test/ folders), all typed per class in
            paper_classes.csv. The folder's train/good is counted, not the images the run trained on: its held-out
            fraction (--val_fraction) changes nothing here. Typed: MVTec AD (its published split: 3629 train, 467
            normal and 1258 defective test images, 73 defect kinds), VisA (the official 1cls split: each class's
            normal images in the VisA README less the split's test normals, 100 anomalies a class, kind `bad` as
            the suite prepares it) and CIFAR-10, CIFAR-100, Fashion-MNIST (the published per-class counts; not
            counted: torchvision reads those datasets from their published files). MPDD, BTAD, Cats-vs-Dogs and
            Real-IAD have no typed counts: their rows are refused in one line saying so (--force compares them).
            The count is of image files by extension, as the loaders list them (so it reads no pixels).
  training  paper_settings.csv's `training`: epochs (separate) or iters (unified) and batch_size as the paper
            trained; for the rows of a trained head (cada, cada_sigma, classifier) also cada_iters and
            cada_batch_size. A run that does not say them (no config.json) is not comparable until --options does.
Dinomaly's
encoder is its ViT, config key `vit` (its config.json's `backbone` is a default it never reads): for method
dinomaly the settings' backbone column is compared with `vit` (timm's vit_base_patch14_reg4_dinov2 = base).
When no row is comparable the script says in one line what differs and prints no differences; --force prints
them, every table labelled as forced and not comparable.

Run options pick the published row. paper_settings.csv's `options` are the paper's defaults; a row of
paper_numbers.csv with `options` (CADA Table 3's ablations) was run with those values instead, empty meaning
the defaults. A config.json without one of these keys (runs older than the option) takes the default. The
head's options (cada_convs, cada_linears, cada_dropout) do not change the rows of the alignments without a
head (none, class_aware), nor top_fraction an image score other than top_mean.

The published numbers (benchmarks/paper_numbers.csv, one number a row, in %) are typed from:
  NoCo  the NoCo paper's result tables (published as figures in its public repository):
        Table II (mean image AUROC per dataset) and Table III (MVTec AD image AUROC per class)
  CADA  "Absolute-Unified Multi-Class Anomaly Detection via Class-Agnostic Distribution Alignment":
        Tables 1 (MVTec AD), 2 (VisA), 3 (ablations of the head and the image score, MVTec AD, RevDist,
        absolute-unified), 4 (CADA variants) and 5 (mean/std statistics, with noisy BTAD)
  Dinomaly  Guo et al., "Dinomaly: The Less Is More Philosophy in Multi-Class Unsupervised Anomaly Detection"
        (CVPR 2025, arXiv 2405.14325). Its result tables (paper and official README) are images; typed are the
        numbers printed as text and those of a reprint, all multi-class (model-unified mean) of Dinomaly ViT-B/14:
        `abstract`  the abstract (arXiv and README.md of github guojiajeremy/Dinomaly at c5c76d0): MVTec AD,
                    VisA, Real-IAD, trained as its dinomaly_*_uni.py do (iters 10000, 10000, 50000)
        `README`    README.md's "Trained model weights" table (one checkpoint per dataset, R448-C392, "2x
                    default training iterations"): iters=20000 (MVTec AD, VisA), 100000 (Real-IAD)
        `INP-Former Table 2`  the multi-class table of github luow23/INP-Former (assets/multi-class-tab.png, its
                    paper's Table 2), which reprints Dinomaly's rows: I-AUROC, I-AP, P-AUROC, P-AP and AUPRO of MVTec
                    AD, VisA and Real-IAD (its I-AUROC equals the abstract's). Dinomaly's evaluation binarises its
                    resized ground-truth masks at > 0 (its issue 14), which enlarges every defect by the pixels the
                    resize blends and raises its P-AP (and P-F1max); ours keeps masks binary (see README.md).
        Not typed: the abstract's ViT-L figures, I-/P-F1max (which we do not compute), per-class and
        class-separated numbers. Our scripts have no Real-IAD loader:
        its rows match a run on Real-IAD rearranged into MVTec layout (--dataset mvtec) when --dataset realiad
        is passed here, and with --force only (Real-IAD's per-class counts are not typed).
In the CADA paper RevDist+CADA's MVTec AD absolute-unified P-AUROC/P-AP is 95.6/53.1 in Tables 1 and 3 but
96.0/54.7 in Tables 4 and 5; both are kept. Table 3 prints its default row (1 conv + 2 linear, dropout 0.25,
top 1 %) once in each of its three groups; it is typed once.

As a function: compare(results, dataset, method, run=config) -> DataFrame (results: a CSV path or a
DataFrame; run: config.json's "config" dict, or None to take the paper's settings and default options).
"""
import argparse
import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from method_facts import VIT_SIZES, encoder_option  # noqa: E402

PAPER_NUMBERS = Path(__file__).with_name("paper_numbers.csv")
PAPER_SETTINGS = Path(__file__).with_name("paper_settings.csv")
PAPER_CLASSES = Path(__file__).with_name("paper_classes.csv")
METRICS = ["I-AUROC", "I-AP", "P-AUROC", "P-AP", "AUPRO"]
KEYS = ["setting", "align", "class"]
COLUMNS = ["source", "table", *KEYS, "options", "metric", "ours", "paper", "diff", "reason"]
REQUIRED = ["backbone", "weights"]  # a run must have the paper's values, and say them
SIZES = ["image_size", "crop_size"]  # ... and these, where it says them (config.json always does)
SETTINGS = REQUIRED + SIZES
TRAINING = ["epochs", "iters", "batch_size", "cada_iters", "cada_batch_size"]  # paper_settings.csv's `training` keys
HEAD_TRAINING = ("cada_iters", "cada_batch_size")  # ... that only the rows of a trained head read
REASON_ORDER = ["classes", "class", "data", "backbone", "vit", "weights", *SIZES, *TRAINING]  # the order of the telling
COUNTS = ["train", "test_good", "test_defective"]  # paper_classes.csv: the published images of each class
TORCHVISION = ("fmnist", "cifar10", "cifar100")  # read by torchvision from the published files: not counted
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")  # datasets.common's (a test pins
# it): importing that module would import torch and take seconds where counting takes milliseconds
NORMAL_FOLDER = {"btad": "ok"}  # the normal images' folder in train/ and test/ ("good" elsewhere)
POOLED = ("mean", "mixed")  # rows over every class of the run
HEAD_OPTIONS = ("cada_convs", "cada_linears", "cada_dropout")
WITHOUT_HEAD = ("none", "class_aware")  # the alignments that train no head (models/cada.py: TRAINED)
DATASET_NAMES = {"mvtec": "MVTec AD", "visa": "VisA", "btad": "BTAD", "mpdd": "MPDD", "fmnist": "Fashion-MNIST",
                 "cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "cats_vs_dogs": "Cats-vs-Dogs", "realiad": "Real-IAD"}


def read_table(path, required, what):
    """A CSV as strings-and-numbers; ValueError (one line) when it is missing, unreadable or lacks columns."""
    if not Path(path).is_file():
        raise ValueError(f"{path}: no such file (expected {what})")
    try:
        table = pd.read_csv(path, dtype={k: str for k in ("source", "table", "align", "class", "setting", "dataset",
                                                          "method", "options", "backbone", "weights")})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a readable CSV (expected {what}): {str(error).strip()}") from None
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: expected {what} with columns {', '.join(required)}; missing {', '.join(missing)}")
    return table


def parse_options(text, where):
    """'name=value;name=value' -> {name: value}; empty -> {}."""
    options = {}
    for item in (part.strip() for part in ("" if pd.isna(text) else str(text)).split(";")):
        name, equals, value = item.partition("=")
        if item and (not equals or not name.strip()):
            raise ValueError(f"{where}: options must read name=value;name=value, got {text!r}")
        if item:
            options[name.strip()] = value.strip()
    return options


def same(ours, paper):
    """Equal as numbers when both read as numbers (0 == 0.0 == '0'), else as text."""
    try:
        return float(ours) == float(paper)
    except (TypeError, ValueError):
        return str(ours) == str(paper)


def read_settings(settings_path, classes_path):
    """{(source, dataset, method): settings dict with its default options parsed}, {dataset: [classes]}."""
    settings = read_table(settings_path, ["source", "dataset", "method", *SETTINGS, "training", "options"],
                          "the papers' settings")
    classes = read_table(classes_path, ["dataset", "class"], "the papers' classes").astype(str)
    by_key = {}
    for row in settings.to_dict("records"):
        row["options"] = parse_options(row["options"], settings_path)
        row["training"] = parse_options(row["training"], settings_path)
        unknown = set(row["training"]) - set(TRAINING)
        if unknown:
            raise ValueError(f"{settings_path}: training keys are {', '.join(TRAINING)}; got {', '.join(unknown)}")
        by_key[row["source"], row["dataset"], row["method"]] = row
    return by_key, classes.groupby("dataset", sort=False)["class"].agg(list).to_dict()


def read_counts(classes_path):
    """{dataset: {class: (train, test_good, test_defective, defect kinds)}} for the datasets whose every class has
    its counts typed in paper_classes.csv; a dataset with an empty count is left out (its counts are not typed)."""
    table = pd.read_csv(classes_path, dtype=str, keep_default_na=False)
    if not set(COUNTS) <= set(table.columns):
        return {}
    counts = {}
    for dataset, rows in table.groupby("dataset", sort=False):
        if (rows[COUNTS] == "").any(axis=None):
            continue
        kinds = rows["defects"] if "defects" in rows else pd.Series("", index=rows.index)
        counts[dataset] = {row["class"]: (*(int(row[c]) for c in COUNTS), tuple(sorted(filter(None, k.split(";")))))
                           for row, k in zip(rows.to_dict("records"), kinds)}
    return counts


def counted(root, class_name, normal="good"):
    """(train, test_good, test_defective, defect kinds) of <root>/<class> as found on disk: the image files the
    suite's loaders list (datasets.common.list_images); None when the class folder is not there."""
    folder = Path(root) / class_name
    if not folder.is_dir():
        return None

    def images(path):
        return sum(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in path.iterdir()) if path.is_dir() else 0

    test = folder / "test"
    kinds = sorted(p.name for p in test.iterdir() if p.is_dir() and p.name != normal) if test.is_dir() else []
    kinds = [kind for kind in kinds if images(test / kind)]
    return (images(folder / "train" / normal), images(test / normal), sum(images(test / k) for k in kinds),
            tuple(kinds))


def data_difference(run, dataset, published, paper_classes):
    """One phrase ('' when none) saying how the run's data (the classes of the paper that ran, counted in the run's
    data_path) differ from the published dataset's per-class counts and defect kinds."""
    name = DATASET_NAMES.get(dataset, dataset)
    if dataset in TORCHVISION:
        return ""
    if dataset not in published:
        return f"data unchecked: the published per-class counts of {name} are not typed in {PAPER_CLASSES.name}"
    if not run.get("data_path"):
        return "data unknown (no data_path to count the classes in; pass --data_path)"
    root = Path(run["data_path"])
    if not root.is_dir():
        return f"data unknown: {root} not found (the run's data_path; --data_path gives another)"
    ran = run.get("classes")
    ran = paper_classes if ran in (None, "all") else ran.split(",") if isinstance(ran, str) else ran
    found, normal = [], NORMAL_FOLDER.get(dataset, "good")
    for class_name in [c for c in paper_classes if c in {str(r) for r in ran}]:
        on_disk = counted(root, class_name, normal)
        paper = published[dataset][class_name]
        if on_disk is None:
            found.append(f"{class_name} not found")
            continue
        parts = [f"{n} {what} (paper: {p})" for n, p, what in zip(on_disk, paper, (
            f"train/{normal}", f"test/{normal}", "defective")) if n != p]
        if on_disk[3] != paper[3]:
            parts.append(f"defect kinds {short_list(on_disk[3]) or 'none'} (paper: {short_list(paper[3])})")
        if parts:
            found.append(f"{class_name} {', '.join(parts)}")
    if not found:
        return ""
    return (f"data unlike the published {name} in {len(found)} class{'es' if len(found) > 1 else ''}: "
            f"{'; '.join(found[:2])}{'; ...' if len(found) > 2 else ''} (at {root})")


def training_differences(run, training, align):
    """What differs from the paper's training length and batch (paper_settings.csv's `training`), one phrase each;
    the head's keys only for the alignments that train one."""
    found = []
    for name, value in training.items():
        if name in HEAD_TRAINING and align in WITHOUT_HEAD:
            continue
        ran = run.get(name)
        if ran is None:
            found.append(f"{name} unknown (paper: {value})")
        elif not same(ran, value):
            found.append(f"{name} {ran} (paper: {value})")
    return tuple(found)


def options_match(run, expected, defaults, align):
    """Whether the run's options are those a published row (`expected`) was run with."""
    for name, value in expected.items():
        if name in HEAD_OPTIONS and align in WITHOUT_HEAD:
            continue
        if name == "top_fraction" and expected.get("image_score", "top_mean") != "top_mean":
            continue
        ran = run.get(name, defaults.get(name))
        if ran is None or not same(ran, value):
            return False
    return True


def short_list(names, separator=", ", keep=3):
    names = list(names)
    return separator.join(names[:keep] + (["..."] if len(names) > keep else []))


def class_difference(ran, paper_classes, row_class):
    """What keeps a row from being the paper's for the classes that ran ('' when nothing)."""
    if ran is None:
        return f"classes unknown (paper: {len(paper_classes)})"
    if isinstance(ran, str):
        ran = paper_classes if ran == "all" else ran.split(",")
    ran = [str(c) for c in ran]
    if row_class not in POOLED:
        return "" if row_class in ran else f"class {row_class} did not run"
    missing = [c for c in paper_classes if c not in ran]
    extra = [c for c in ran if c not in paper_classes]
    if not missing and not extra:
        return ""
    notes = ([f"missing {short_list(missing)}"] if missing else []) + ([f"not the paper's: {short_list(extra)}"]
                                                                      if extra else [])
    shown = ",".join(ran) if len(ran) <= 4 else f"{short_list(ran, ',')} ({len(ran)})"
    return f"classes {shown} of {len(paper_classes)} ({'; '.join(notes)})"


def differences(run, settings, paper_classes, row_class, method=None):
    """What differs between the run and the paper's run of a row, one phrase each."""
    found = [class_difference(run.get("classes"), paper_classes, row_class)]
    for name in SETTINGS:
        key = encoder_option(method) if name == "backbone" else name
        ran = VIT_SIZES.get(run.get(key), run.get(key)) if key == "vit" else run.get(key)
        if ran is None:
            found.append(f"{key} unknown (paper: {settings[name]})" if name in REQUIRED else "")
        elif not same(ran, settings[name]):
            found.append(f"{key} {ran} (paper: {settings[name]})")
    return tuple(phrase for phrase in found if phrase)


def match(results, dataset, method, run=None, paper_numbers=None, paper_settings=None, paper_classes=None):
    """Every published row of the run's options beside ours, with `reasons` (a tuple, empty when comparable)."""
    ours = results.copy() if isinstance(results, pd.DataFrame) else read_table(
        results, ["setting", "class", *METRICS], "a results table")
    numbers_path = paper_numbers or PAPER_NUMBERS
    paper = read_table(numbers_path, ["source", "table", "dataset", "method", *KEYS, "metric", "value"],
                       "published numbers")
    settings, classes = read_settings(paper_settings or PAPER_SETTINGS, paper_classes or PAPER_CLASSES)
    data = ""
    if run is not None and dataset in classes:
        data = data_difference(run, dataset, read_counts(paper_classes or PAPER_CLASSES), classes[dataset])
    if "align" not in ours.columns:
        ours["align"] = "none"
    if "options" not in paper.columns:
        paper["options"] = ""
    for frame in (ours, paper):
        frame["align"] = frame["align"].fillna("none")
        frame["class"] = frame["class"].astype(str)
    paper["options"] = paper["options"].fillna("")
    present = [m for m in METRICS if m in ours.columns]
    long = ours.melt(id_vars=KEYS, value_vars=present, var_name="metric", value_name="ours").dropna(subset=["ours"])
    paper = paper[(paper["dataset"] == dataset) & (paper["method"] == method)].rename(columns={"value": "paper"})
    table = long.merge(paper, on=[*KEYS, "metric"], how="inner")
    kept, reasons = [], []
    for row in table.to_dict("records"):
        source_settings = settings.get((row["source"], dataset, method))
        if source_settings is None:
            raise ValueError(f"{paper_settings or PAPER_SETTINGS}: no row for {row['source']}, {dataset}, {method}")
        if dataset not in classes:
            raise ValueError(f"{paper_classes or PAPER_CLASSES}: no classes of {dataset}")
        defaults = source_settings["options"]
        expected = {**defaults, **parse_options(row["options"], numbers_path)}
        kept.append(options_match(run or {}, expected, defaults, row["align"]))
        reasons.append(() if run is None else differences(run, source_settings, classes[dataset], row["class"], method)
                       + ((data,) if data else ()) + training_differences(run, source_settings["training"],
                                                                          row["align"]))
    table = table.loc[pd.Series(kept, index=table.index, dtype=bool)]
    table["reasons"] = [r for r, keep in zip(reasons, kept) if keep]
    table["diff"] = (table["ours"].astype(float) - table["paper"].astype(float)).round(1) + 0.0  # no -0.0
    order = {m: i for i, m in enumerate(METRICS)}
    table = table.sort_values(["source", "table", "setting", "align", "class", "options", "metric"],
                              key=lambda s: s.map(order) if s.name == "metric" else s, kind="stable")
    return table.reset_index(drop=True)


def compare(results, dataset, method, paper_numbers=None, run=None, force=False, paper_settings=None,
            paper_classes=None):
    """One row per (published table, our row, metric) that both have and that is comparable (every one with
    force=True): source, table, setting, align, class, options (the published row's, empty = the paper's
    defaults), metric, ours, paper, diff (ours - paper in points, one decimal), reason (what differs, empty
    when comparable). Empty when nothing matches."""
    table = match(results, dataset, method, run, paper_numbers, paper_settings, paper_classes)
    table["reason"] = table["reasons"].map(", ".join)
    if not force:
        table = table[table["reason"] == ""]
    return table[COLUMNS].reset_index(drop=True)


def run_config(csv_path):
    """The 'config' dict of config.json beside the CSV, or None when there is none."""
    path = Path(csv_path).parent / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())["config"]
        if "dataset" not in config:
            raise KeyError("dataset")
        return config
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: expected JSON with a 'config' dict holding 'dataset' ({error!r})") from None


def union(reason_tuples):
    """The distinct phrases of several rows' reasons, in REASON_ORDER."""
    phrases = list(dict.fromkeys(phrase for reasons in reason_tuples for phrase in reasons))
    return sorted(phrases, key=lambda phrase: REASON_ORDER.index(phrase.split()[0]))


def where(source, rows, dataset, method):
    """'CADA Tables 1, 3', 'NoCo Table II', 'Dinomaly abstract' (a table without a number goes by its name)."""
    tables = list(dict.fromkeys(rows["table"]))
    numbered = [t for t in tables if t.isdigit() or set(t) <= set("IVXL")]
    named = ([f"Table{'s' if len(numbered) > 1 else ''} {', '.join(numbered)}"] if numbered else []) + [
        t for t in tables if t not in numbered]
    return f"{source} {', '.join(named)} ({DATASET_NAMES.get(dataset, dataset)}, {method})"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", help="a results CSV written by train_mvtec.py, train_cifar10.py or train_mnist.py")
    parser.add_argument("--paper_numbers", default=str(PAPER_NUMBERS), help="the published numbers (long CSV)")
    parser.add_argument("--paper_settings", default=str(PAPER_SETTINGS), help="the papers' backbone, weights, ...")
    parser.add_argument("--paper_classes", default=str(PAPER_CLASSES), help="the papers' classes per dataset")
    parser.add_argument("--dataset", help="the run's dataset (default: from config.json beside the CSV)")
    parser.add_argument("--method", help="the run's method (default: from config.json)")
    parser.add_argument("--backbone", help="the run's backbone (default: from config.json; not read for dinomaly)")
    parser.add_argument("--vit", help="the run's Dinomaly ViT: small, base, large (default: from config.json)")
    parser.add_argument("--weights", help="the run's weights: imagenet, none or a file (default: from config.json)")
    parser.add_argument("--classes", help="the classes that ran: a comma list or all (default: from config.json)")
    parser.add_argument("--data_path", help="the dataset folder to count the classes in (default: config.json's "
                                            "data_path)")
    parser.add_argument("--options", help="run options, name=value;name=value (default: from config.json, "
                                          "else the paper's defaults)")
    parser.add_argument("--force", action="store_true", help="compare rows whose run is not the paper's, labelled")
    args = parser.parse_args(argv)
    try:
        if not Path(args.results).is_file():
            raise ValueError(f"{args.results}: no such file (expected a results table)")
        config = run_config(args.results)
        given = {name: getattr(args, name) for name in ("dataset", "method", "backbone", "vit", "weights", "data_path")
                 if getattr(args, name)}
        if args.classes:
            given["classes"] = "all" if args.classes == "all" else args.classes.split(",")
        given.update(parse_options(args.options, "--options"))
        encoder = encoder_option(given.get("method"))
        if config is None and not ({"dataset", "method"} <= given.keys() and (
                args.force or {encoder, "weights", "classes"} <= given.keys())):
            raise ValueError(f"{Path(args.results).parent / 'config.json'}: no such file; pass --dataset, --method, "
                             "--backbone (--vit for dinomaly), --weights and --classes (a comma list, or all) to say "
                             "what the table is (with --force, --dataset and --method suffice)")
        run = {"method": "noco", **(config or {}), **given}
        dataset, method = run["dataset"], run["method"]
        rows = match(args.results, dataset, method, run, args.paper_numbers, args.paper_settings, args.paper_classes)
    except ValueError as error:
        print(f"compare_paper.py: {error}", file=sys.stderr)
        return 2
    if rows.empty:
        settings, _ = read_settings(args.paper_settings, args.paper_classes)
        unlike = [f"{name}={run[name]}" for key, paper in settings.items() if key[1:] == (dataset, method)
                  for name, value in paper["options"].items() if name in run and not same(run[name], value)]
        options = f" and options {';'.join(dict.fromkeys(unlike))}" if unlike else ""
        print(f"no published numbers for dataset {dataset} with method {method}{options} match this table "
              f"({args.results})")
        return 0
    comparable = rows["reasons"].map(len) == 0
    if not comparable.any() and not args.force:
        for source, group in rows.groupby("source", sort=False):
            print(f"not comparable with {where(source, group, dataset, method)}: "
                  f"{', '.join(union(group['reasons']))}; --force compares anyway")
        return 0
    print(f"{args.results}: dataset {dataset}, method {method}; diff = ours - paper, in points")
    shown = rows if args.force else rows[comparable]
    formats = {"ours": "{:.2f}".format, "paper": "{:.1f}".format, "diff": "{:+.1f}".format}
    for (source, table), block in shown.groupby(["source", "table"], sort=False):
        title = where(source, block, dataset, method)
        forced = block["reasons"].map(len) > 0
        if forced.any():
            title += f": FORCED, not comparable ({', '.join(union(block['reasons']))})"
        columns = KEYS + (["options"] if (block["options"] != "").any() else []) + ["metric", "ours", "paper", "diff"]
        block = block[columns]
        if forced.any() and not forced.all():
            block = block.assign(comparable=forced.map({True: "no (forced)", False: "yes"}))
        print(title)
        print(block.to_string(index=False, formatters=formats))
    if not args.force:
        for source, group in rows[~comparable].groupby("source", sort=False):
            print(f"not compared: {where(source, group, dataset, method)}, rows "
                  f"{', '.join(dict.fromkeys(group['class']))}: {', '.join(union(group['reasons']))}; "
                  "--force compares them too")
    return 0


if __name__ == "__main__":
    sys.exit(main())

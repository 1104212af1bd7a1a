"""benchmarks/compare_paper.py and the published numbers and settings it reads (benchmarks/paper_*.csv)."""
import io
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from compare_paper import PAPER_CLASSES, PAPER_NUMBERS, PAPER_SETTINGS, compare, read_counts  # noqa: E402

HEADER = "setting,align,class,I-AUROC,I-AP,P-AUROC,P-AP,AUPRO\n"
MVTEC = ["bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill", "screw", "tile",
         "toothbrush", "transistor", "wood", "zipper"]
# config.json of a CADA Table 1 run as train_mvtec.py writes it, before the head options existed; its data_path is
# set by published_mvtec below (10 % of each class's train/good held out: the folder's count is what is compared)
PAPER_RUN = {"dataset": "mvtec", "method": "revdist", "setting": "unified", "classes": MVTEC,
             "backbone": "wide_resnet50_2", "weights": "imagenet", "image_size": 256, "crop_size": 0,
             "image_score": "top_mean", "top_fraction": 0.01, "align": ["none", "cada"], "iters": 5000,
             "batch_size": 16, "cada_iters": 5000, "cada_batch_size": 16, "epochs": 50, "val_fraction": 0.1}
UNIFIED_ROWS = HEADER + (
    "model-unified,none,bottle,99.00,99.50,,,\n"
    "model-unified,none,mean,97.80,,96.40,60.00,\n"
    "absolute-unified,none,mixed,90.00,94.40,,,\n"
    "model-unified,cada,mean,98.20,99.20,96.10,57.00,\n"
    "absolute-unified,cada,mixed,95.00,99.30,97.00,50.00,\n")


def make_class(folder, train, test_good, defective, normal="good"):
    """Empty image files in MVTec layout: what the counting reads (names, not pixels)."""
    for split, kind, count in [("train", normal, train), ("test", normal, test_good),
                               *(("test", kind, n) for kind, n in defective.items())]:
        (folder / split / kind).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (folder / split / kind / f"{i:03d}.png").touch()


def make_published(root, dataset):
    """A folder holding the published per-class counts and defect kinds of `dataset` (paper_classes.csv)."""
    for name, (train, good, defective, kinds) in read_counts(PAPER_CLASSES)[dataset].items():
        spread = {kind: 1 for kind in kinds}
        spread[kinds[0]] += defective - len(kinds)
        make_class(root / name, train, good, spread)
    return root


@pytest.fixture(scope="module", autouse=True)
def published_mvtec(tmp_path_factory):
    """MVTec AD's published split as empty files; the paper runs' data_path."""
    root = make_published(tmp_path_factory.mktemp("data") / "mvtec", "mvtec")
    PAPER_RUN["data_path"] = DINOMALY_RUN["data_path"] = str(root)
    return root


def write_run(folder, csv_text, config):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.csv").write_text(csv_text)
    (folder / "config.json").write_text(json.dumps({"status": "complete", "config": config}))
    return folder / "results.csv"


def run_script(*args):
    return subprocess.run([sys.executable, "benchmarks/compare_paper.py", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def read_numbers():
    return pd.read_csv(PAPER_NUMBERS, dtype={"table": str, "align": str, "class": str, "options": str})


@pytest.fixture
def unified_run(tmp_path):
    return write_run(tmp_path / "run", UNIFIED_ROWS, PAPER_RUN)


def lookup(frame, **keys):
    rows = frame
    for key, value in keys.items():
        rows = rows[rows[key] == value]
    return rows


@pytest.mark.parametrize("run", [None, PAPER_RUN], ids=["no_run", "paper_run"])
def test_unified_values_and_differences(unified_run, run):
    table = compare(unified_run, "mvtec", "revdist", run=run)
    assert set(table["reason"]) == {""}
    row = lookup(table, table="1", setting="absolute-unified", align="none", metric="I-AUROC")
    assert len(row) == 1 and row["ours"].item() == 90.0 and row["paper"].item() == 85.0 and row["diff"].item() == 5.0
    # the same number in Tables 1, 3, 4 and 5: one row each
    rows = lookup(table, setting="absolute-unified", align="none", metric="I-AUROC")
    assert sorted(rows["table"]) == ["1", "3", "4", "5"]
    # Tables 1 and 3 disagree with 4 and 5 on RevDist+CADA MVTec P-AUROC: 95.6 vs 96.0
    p = lookup(table, setting="absolute-unified", align="cada", metric="P-AUROC").set_index("table")
    assert p["paper"].to_dict() == {"1": 95.6, "3": 95.6, "4": 96.0, "5": 96.0}
    assert p["diff"].to_dict() == {"1": 1.4, "3": 1.4, "4": 1.0, "5": 1.0}
    assert set(lookup(table, table="3")["options"]) == {""}  # only the default row of Table 3
    p_ap = lookup(table, table="1", setting="absolute-unified", align="cada", metric="P-AP")
    assert p_ap["paper"].item() == 53.1 and p_ap["diff"].item() == -3.1
    mean = lookup(table, setting="model-unified", align="none")
    assert dict(zip(mean["metric"], mean["diff"])) == {"I-AUROC": 0.0, "P-AUROC": 0.0, "P-AP": 1.9}
    assert "I-AP" not in set(mean["metric"])  # our empty cell is not compared
    assert "bottle" not in set(table["class"])  # the CADA paper has no per-class rows
    assert not len(table[table["align"].isin(["class_aware", "classifier", "cada_sigma"])])


def test_noco_separate_matches_table_three(tmp_path):
    classes = {"bottle": 99.0, "screw": 90.0, "wood": 99.9}
    rows = [{"setting": "separate", "class": c, "I-AUROC": v, "I-AP": 99.0} for c, v in classes.items()]
    rows.append({"setting": "separate", "class": "mean", "I-AUROC": 96.3, "I-AP": 99.0})
    ours = pd.DataFrame(rows, columns=["setting", "class", "I-AUROC", "I-AP", "P-AUROC", "P-AP", "AUPRO"])
    table = compare(ours, "mvtec", "noco")
    assert set(table["metric"]) == {"I-AUROC"} and set(table["align"]) == {"none"}
    per_class = table[table["class"] != "mean"].set_index("class")
    assert set(per_class["table"]) == {"III"}
    assert per_class["paper"].to_dict() == {"bottle": 100.0, "screw": 95.2, "wood": 99.9}
    assert per_class["diff"].to_dict() == {"bottle": -1.0, "screw": -5.2, "wood": 0.0}
    means = table[table["class"] == "mean"].set_index("table")
    assert means["paper"].to_dict() == {"II": 99.2, "III": 99.2} and set(means["diff"]) == {-2.9}
    assert compare(ours, "mvtec", "revdist").empty  # no separate RevDist numbers in either paper

    # the run's config: three of the 15 classes ran, so their rows compare and the means do not
    run = {"dataset": "mvtec", "method": "noco", "classes": list(classes), "backbone": "wide_resnet50_2",
           "weights": "imagenet", "image_size": 256, "crop_size": 224, "image_score": "max", "epochs": 50,
           "batch_size": 16, "data_path": PAPER_RUN["data_path"]}
    assert compare(ours, "mvtec", "noco", run=run).equals(table[table["class"] != "mean"].reset_index(drop=True))
    forced = compare(ours, "mvtec", "noco", run=run, force=True)
    reasons = set(forced.loc[forced["class"] == "mean", "reason"])
    assert reasons == {"classes bottle,screw,wood of 15 (missing cable, capsule, carpet, ...)"}
    assert compare(ours, "mvtec", "noco", run={**run, "image_score": "top_mean"}).empty  # not NoCo's image score


def test_script_partial_run_prints_comparable_rows_and_says_which_are_not(tmp_path):
    csv = write_run(tmp_path / "run", HEADER + "separate,none,screw,90.0,,,,\nseparate,none,mean,90.0,,,,\n",
                    {"dataset": "mvtec", "method": "noco", "classes": ["screw"], "backbone": "wide_resnet50_2",
                     "weights": "imagenet", "image_size": 256, "crop_size": 224, "image_score": "max", "epochs": 50,
                     "batch_size": 16, "data_path": PAPER_RUN["data_path"]})
    result = run_script(csv)
    assert result.returncode == 0, result.stderr
    assert "-5.2" in result.stdout and "-9.2" not in result.stdout  # screw compared, mean not
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("not compared: NoCo Tables II, III (MVTec AD, noco), rows mean: classes screw of 15")


def test_semantic_run_uses_table_two(tmp_path):
    cifar10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    rows = "".join(f"separate,{c},95.0,,,,\n" for c in cifar10)
    config = {"dataset": "cifar10", "method": "noco", "classes": cifar10, "backbone": "resnet152",
              "weights": "imagenet", "image_size": 256, "crop_size": 224, "epochs": 10, "batch_size": 64}
    csv = write_run(tmp_path / "run", "setting,class,I-AUROC,I-AP,P-AUROC,P-AP,AUPRO\n" + rows
                    + "separate,mean,94.0,,,,\n", config)
    result = run_script(csv)
    assert result.returncode == 0, result.stderr
    assert "93.9" in result.stdout and "+0.1" in result.stdout and "NoCo Table II (CIFAR-10, noco)" in result.stdout
    small = write_run(tmp_path / "small", (tmp_path / "run" / "results.csv").read_text(),
                      {**config, "backbone": "resnet18", "image_size": 64, "crop_size": 0})
    refused = run_script(small).stdout.strip().splitlines()
    assert refused == ["not comparable with NoCo Table II (CIFAR-10, noco): backbone resnet18 (paper: resnet152), "
                       "image_size 64 (paper: 256), crop_size 0 (paper: 224); --force compares anyway"]


def test_two_class_run_of_another_backbone_is_refused_in_one_line(tmp_path):
    rows = HEADER + "".join(f"model-unified,{align},{c},90,95,96,50,80\n" for align in ("none", "cada")
                            for c in ("brick", "grass", "mean")) + (
        "absolute-unified,none,mixed,70,80,90,30,60\nabsolute-unified,cada,mixed,80,85,91,31,61\n")
    csv = write_run(tmp_path / "folder_run", rows, {**PAPER_RUN, "classes": ["brick", "grass"],
                                                    "backbone": "resnet18", "weights": "none"})
    result = run_script(csv)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "not comparable with CADA Tables 1, 3, 4, 5 (MVTec AD, revdist): classes brick,grass of 15 (missing bottle, "
        "cable, capsule, ...; not the paper's: brick, grass), backbone resnet18 (paper: wide_resnet50_2), "
        "weights none (paper: imagenet); --force compares anyway"]
    assert compare(csv, "mvtec", "revdist", run=json.loads(csv.with_name("config.json").read_text())["config"]).empty

    forced = run_script(csv, "--force")
    assert forced.returncode == 0, forced.stderr
    titles = [line for line in forced.stdout.splitlines() if line.startswith("CADA Table")]
    assert [title.split(" (")[0] for title in titles] == [f"CADA Table {n}" for n in (1, 3, 4, 5)]
    assert all(": FORCED, not comparable (classes brick,grass of 15" in title for title in titles)
    assert "-15.0" in forced.stdout  # the mixed I-AUROC, 70 against 85.0


def test_full_paper_config_matches_table_one(unified_run):
    result = run_script(unified_run)
    assert result.returncode == 0, result.stderr
    assert "+5.0" in result.stdout and "-3.1" in result.stdout and "absolute-unified" in result.stdout
    assert "CADA Table 1 (MVTec AD, revdist)\n" in result.stdout
    assert "FORCED" not in result.stdout and "not compared" not in result.stdout
    with_options = {**PAPER_RUN, "cada_convs": 1, "cada_linears": 2, "cada_dropout": 0.25}  # the defaults, spelled out
    assert compare(unified_run, "mvtec", "revdist", run=with_options).equals(
        compare(unified_run, "mvtec", "revdist", run=PAPER_RUN))
    other_size = compare(unified_run, "mvtec", "revdist", run={**PAPER_RUN, "image_size": 128}, force=True)
    assert set(other_size["reason"]) == {"image_size 128 (paper: 256)"}


def test_dropout_zero_matches_table_three_not_table_one(unified_run):
    table = compare(unified_run, "mvtec", "revdist", run={**PAPER_RUN, "cada_dropout": 0.0})
    cada = lookup(table, setting="absolute-unified", align="cada")
    assert set(cada["table"]) == {"3"} and set(cada["options"]) == {"cada_dropout=0"}
    assert dict(zip(cada["metric"], cada["paper"])) == {"I-AUROC": 97.5, "I-AP": 99.1, "P-AUROC": 95.4, "P-AP": 52.0}
    assert lookup(table, setting="model-unified", align="cada").empty  # Table 1's CADA rows are default-dropout
    # the head's options do not touch the base model's rows
    assert sorted(lookup(table, align="none", setting="absolute-unified", metric="I-AUROC")["table"]) == [
        "1", "3", "4", "5"]
    two_convs = compare(unified_run, "mvtec", "revdist", run={**PAPER_RUN, "cada_convs": 2})
    assert set(lookup(two_convs, align="cada")["options"]) == {"cada_convs=2"}
    one_linear = compare(unified_run, "mvtec", "revdist", run={**PAPER_RUN, "cada_convs": 0, "cada_linears": 1})
    assert lookup(one_linear, align="cada", metric="I-AUROC")["paper"].tolist() == [96.0]
    assert lookup(compare(unified_run, "mvtec", "revdist", run={**PAPER_RUN, "cada_dropout": 0.1}), align="cada").empty
    unpublished = write_run(unified_run.parent.parent / "unpublished", UNIFIED_ROWS,
                            {**PAPER_RUN, "cada_dropout": 0.1, "image_score": "pooled_max"})
    assert run_script(unpublished).stdout.startswith("no published numbers for dataset mvtec with method revdist and "
                                                     "options cada_dropout=0.1;image_score=pooled_max match this table")


def test_image_score_options_match_table_three_rows(unified_run):
    table = compare(unified_run, "mvtec", "revdist", run={**PAPER_RUN, "image_score": "max"})
    assert set(table["table"]) == {"3"} and set(table["options"]) == {"image_score=max"}
    assert lookup(table, metric="I-AUROC")["paper"].tolist() == [97.3]
    top2 = compare(unified_run, "mvtec", "revdist", run={**PAPER_RUN, "top_fraction": 0.02})
    assert set(top2["table"]) == {"3"} and lookup(top2, metric="I-AUROC")["paper"].tolist() == [97.4]
    # top_fraction is not read by the max image score
    assert compare(unified_run, "mvtec", "revdist", run={**PAPER_RUN, "image_score": "max", "top_fraction": 0.5}
                   ).equals(table)


def test_data_file_keys_unique_and_values_in_range():
    paper = read_numbers()
    assert list(paper.columns) == ["source", "table", "dataset", "method", "setting", "align", "class", "metric",
                                   "value", "options"]
    keys = ["table", "dataset", "method", "setting", "align", "class", "options", "metric"]
    assert not paper.fillna({"options": ""}).duplicated(keys).any(), paper[paper.duplicated(keys, keep=False)]
    assert paper["value"].between(0, 100).all()
    assert set(paper["metric"]) <= {"I-AUROC", "I-AP", "P-AUROC", "P-AP", "AUPRO"}
    assert set(paper["setting"]) == {"separate", "model-unified", "absolute-unified"}
    assert set(paper["align"].fillna("")) == {"", "none", "cada", "cada_sigma", "class_aware", "classifier"}
    assert paper.loc[paper["source"].isin(["NoCo", "Dinomaly"]), "align"].isna().all()
    assert set(paper.loc[paper["options"].notna(), "table"]) == {"3", "README"}
    assert len(paper) == 248


def test_settings_cover_every_published_row():
    paper = read_numbers()
    settings = pd.read_csv(PAPER_SETTINGS, dtype=str, keep_default_na=False)
    classes = pd.read_csv(PAPER_CLASSES, dtype=str, keep_default_na=False)
    keys = ["source", "dataset", "method"]
    assert not settings.duplicated(keys).any()
    assert set(map(tuple, paper[keys].values)) == set(map(tuple, settings[keys].values))
    counts = classes.groupby("dataset")["class"].nunique().to_dict()
    assert counts == {"mvtec": 15, "visa": 12, "btad": 3, "mpdd": 6, "fmnist": 10, "cifar10": 10, "cifar100": 20,
                      "cats_vs_dogs": 2, "realiad": 30}
    assert classes.loc[classes["dataset"] == "mvtec", "class"].tolist() == MVTEC
    backbones = dict(zip(zip(settings["source"], settings["dataset"], settings["method"]), settings["backbone"]))
    assert backbones["CADA", "mvtec", "uniad"] == "efficientnet_b4"
    assert backbones["NoCo", "cifar10", "noco"] == "resnet152"
    assert backbones["NoCo", "visa", "noco"] == "wide_resnet50_2"
    assert backbones["Dinomaly", "visa", "dinomaly"] == "base"  # its ViT (config key vit)
    assert set(backbones.values()) == {"wide_resnet50_2", "efficientnet_b4", "resnet152", "base"}
    assert set(settings["weights"]) == {"imagenet"}
    # an ablation row may only change an option its paper states a default for (no typo goes unnoticed)
    defaults = {source: {item.split("=")[0] for item in text.split(";") if item}
                for source, text in zip(settings["source"], settings["options"])}
    for source, options in paper.loc[paper["options"].notna(), ["source", "options"]].values:
        assert {item.split("=")[0] for item in options.split(";")} <= defaults[source]


def test_class_lists_are_the_suites():
    from datasets.mvtec import BTAD_CLASSES, MPDD_CLASSES, MVTEC_CLASSES, VISA_CLASSES
    from datasets.oneclass import CATS_VS_DOGS_CLASSES, CIFAR100_COARSE_NAMES
    classes = pd.read_csv(PAPER_CLASSES, dtype=str, keep_default_na=False).groupby("dataset")["class"].agg(tuple)
    assert classes["mvtec"] == MVTEC_CLASSES and classes["visa"] == VISA_CLASSES
    assert classes["mpdd"] == MPDD_CLASSES and classes["btad"] == BTAD_CLASSES
    assert classes["cifar100"] == CIFAR100_COARSE_NAMES and classes["cats_vs_dogs"] == CATS_VS_DOGS_CLASSES


@pytest.mark.parametrize("table,dataset,method,setting,align,cls,metric,value", [
    ("1", "mvtec", "revdist", "absolute-unified", "none", "mixed", "I-AUROC", 85.0),
    ("1", "mvtec", "revdist", "absolute-unified", "cada", "mixed", "I-AUROC", 98.0),
    ("1", "mvtec", "recontrast", "model-unified", "cada", "mean", "P-AP", 61.3),
    ("1", "mvtec", "uniad", "absolute-unified", "none", "mixed", "P-AUROC", 96.4),
    ("2", "visa", "recontrast", "absolute-unified", "none", "mixed", "I-AP", 95.0),
    ("2", "visa", "revdist", "model-unified", "none", "mean", "P-AP", 44.2),
    ("3", "mvtec", "revdist", "absolute-unified", "none", "mixed", "P-AP", 49.0),
    ("3", "mvtec", "revdist", "absolute-unified", "cada", "mixed", "P-AUROC", 95.6),
    ("4", "visa", "revdist", "absolute-unified", "classifier", "mixed", "P-AP", 40.3),
    ("4", "mvtec", "revdist", "absolute-unified", "class_aware", "mixed", "I-AUROC", 97.3),
    ("5", "btad", "revdist", "absolute-unified", "cada_sigma", "mixed", "I-AUROC", 98.4),
    ("5", "btad", "revdist", "absolute-unified", "none", "mixed", "P-AP", 60.8),
    ("5", "visa", "revdist", "absolute-unified", "cada_sigma", "mixed", "P-AP", 37.7),
    ("II", "cats_vs_dogs", "noco", "separate", None, "mean", "I-AUROC", 97.5),
    ("II", "fmnist", "noco", "separate", None, "mean", "I-AUROC", 95.4),
    ("III", "mvtec", "noco", "separate", None, "capsule", "I-AUROC", 97.7),
    ("III", "mvtec", "noco", "separate", None, "transistor", "I-AUROC", 99.3),
    ("abstract", "mvtec", "dinomaly", "model-unified", None, "mean", "I-AUROC", 99.6),
    ("abstract", "visa", "dinomaly", "model-unified", None, "mean", "I-AUROC", 98.7),
    ("abstract", "realiad", "dinomaly", "model-unified", None, "mean", "I-AUROC", 89.3),
])
def test_typed_numbers(table, dataset, method, setting, align, cls, metric, value):
    paper = read_numbers()
    rows = paper[(paper["table"] == table) & (paper["dataset"] == dataset) & (paper["method"] == method)
                 & (paper["setting"] == setting) & (paper["class"] == cls) & (paper["metric"] == metric)
                 & (paper["align"].isna() if align is None else paper["align"] == align) & paper["options"].isna()]
    assert rows["value"].tolist() == [value]


# CADA Table 3 as printed (MVTec AD, RevDist, absolute-unified): I-AUROC I-AP P-AUROC P-AP
TABLE_3 = {
    ("none", ""): "85.0 94.4 94.5 49.0",                              # RevDist  -  -  1%
    ("cada", "cada_convs=0;cada_linears=1"): "96.0 98.6 95.6 53.8",   # 1 linear
    ("cada", "cada_convs=0;cada_linears=2"): "96.9 98.9 95.6 52.6",   # 2 linear
    ("cada", "cada_convs=0;cada_linears=3"): "97.1 99.0 95.3 52.4",   # 3 linear
    ("cada", ""): "98.0 99.3 95.6 53.1",                              # (default) 1 conv, 2 linear, 0.25, 1%
    ("cada", "cada_convs=2"): "97.3 99.1 96.0 54.8",                  # 2 conv, 2 linear
    ("cada", "cada_dropout=0"): "97.5 99.1 95.4 52.0",
    ("cada", "cada_dropout=0.5"): "97.7 99.2 95.6 53.5",
    ("cada", "cada_dropout=0.75"): "97.6 99.2 95.8 53.3",
    ("cada", "image_score=max"): "97.3 99.0 95.6 53.1",               # max s^pix
    ("cada", "top_fraction=0.001"): "97.8 99.2 95.6 53.1",            # 0.1%
    ("cada", "top_fraction=0.02"): "97.4 99.1 95.6 53.1",             # 2%
}


def test_table_three_typed_as_printed():
    paper = read_numbers().fillna({"options": ""})
    typed = paper[paper["table"] == "3"]
    assert set(typed["dataset"]) == {"mvtec"} and set(typed["method"]) == {"revdist"}
    assert set(typed["setting"]) == {"absolute-unified"} and set(typed["class"]) == {"mixed"}
    found = {key: " ".join(f"{v:.1f}" for v in group.set_index("metric").loc[["I-AUROC", "I-AP", "P-AUROC", "P-AP"],
                                                                                "value"])
             for key, group in typed.groupby(["align", "options"])}
    assert found == TABLE_3


def test_script_demo_run_has_no_published_numbers(tmp_path):
    csv = write_run(tmp_path / "demo_run", "setting,class,I-AUROC,I-AP,P-AUROC,P-AP,AUPRO\n"
                    "separate,brick,80.00,85.00,90.00,30.00,70.00\nseparate,mean,80.00,85.00,90.00,30.00,70.00\n",
                    {"dataset": "demo", "method": "revdist", "setting": "separate"})
    result = run_script(csv)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and "no published numbers" in lines[0] and "demo" in lines[0]


@pytest.mark.parametrize("case", ["missing", "no_config", "bad_columns", "empty", "bad_options"])
def test_script_bad_input_one_line_exit_2(tmp_path, case):
    path = tmp_path / "results.csv"
    if case == "no_config":
        path.write_text(HEADER + "absolute-unified,none,mixed,90,,,,\n")
    elif case == "bad_columns":
        write_run(tmp_path, "setting,model,score\nseparate,a,1\n", {"dataset": "mvtec", "method": "noco"})
    elif case == "empty":
        write_run(tmp_path, "", {"dataset": "mvtec", "method": "noco"})
    elif case == "bad_options":
        write_run(tmp_path, UNIFIED_ROWS, PAPER_RUN)
    result = run_script(path, *(["--options", "cada_dropout"] if case == "bad_options" else []))
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    expected = {"no_config": str(tmp_path / "config.json"), "bad_options": "--options"}.get(case, str(path))
    assert expected in lines[0]
    if case == "no_config":
        assert all(f"--{name}" in lines[0] for name in ("dataset", "method", "backbone", "weights", "classes"))
        half = run_script(path, "--dataset", "mvtec", "--method", "revdist")  # what the table is, not how it ran
        assert half.returncode == 2 and "--backbone" in half.stderr and half.stdout == ""
        training = ["--options", "iters=5000;batch_size=16;cada_iters=5000;cada_batch_size=16"]
        given = run_script(path, "--dataset", "mvtec", "--method", "revdist", "--backbone", "wide_resnet50_2",
                           "--weights", "imagenet", "--classes", "all", "--data_path", PAPER_RUN["data_path"],
                           *training)
        assert given.returncode == 0 and "+5.0" in given.stdout and "FORCED" not in given.stdout
        forced = run_script(path, "--dataset", "mvtec", "--method", "revdist", "--force")
        assert forced.returncode == 0 and "+5.0" in forced.stdout
        assert ("FORCED, not comparable (classes unknown (paper: 15), data unknown (no data_path to count the "
                "classes in; pass --data_path), backbone unknown") in forced.stdout
        assert "iters unknown (paper: 5000), batch_size unknown (paper: 16)" in forced.stdout
        untrained = run_script(path, "--dataset", "mvtec", "--method", "revdist", "--backbone", "wide_resnet50_2",
                               "--weights", "imagenet", "--classes", "all", "--data_path", PAPER_RUN["data_path"])
        assert untrained.stdout.startswith("not comparable with CADA Tables 1, 3, 4, 5 (MVTec AD, revdist): "
                                           "iters unknown (paper: 5000), batch_size unknown (paper: 16)")
        small = run_script(path, "--dataset", "mvtec", "--method", "revdist", "--backbone", "wide_resnet50_2",
                           "--weights", "imagenet", "--classes", "all", "--data_path", PAPER_RUN["data_path"],
                           "--options", "image_size=64;cada_dropout=0;iters=5000;batch_size=16;cada_iters=5000;"
                           "cada_batch_size=16")
        assert small.stdout.startswith("not comparable with CADA Tables 1, 3, 4, 5 (MVTec AD, revdist): image_size 64")
    if case == "bad_columns":
        assert "I-AUROC" in lines[0]


# config.json of a `--method dinomaly` run with the preset (ViT-B/14 reg4, 448 -> 392): `backbone` is the script's
# default, which Dinomaly does not read
DINOMALY_RUN = {"dataset": "mvtec", "method": "dinomaly", "setting": "unified", "classes": MVTEC,
                "backbone": "wide_resnet50_2", "vit": "base", "weights": "imagenet", "image_size": 448,
                "crop_size": 392, "iters": 10000, "eval_size": 256, "image_score": "top_mean", "top_fraction": 0.01,
                "align": ["none"], "batch_size": 16}
DINOMALY_ROWS = HEADER + "".join(f"model-unified,none,{c},99.00,99.50,98.00,60.00,94.00\n" for c in MVTEC) + (
    "model-unified,none,mean,99.20,99.70,98.30,68.00,94.50\n"
    "absolute-unified,none,mixed,97.00,99.00,98.00,60.00,90.00\n")


def test_typed_dinomaly_readme_weights_rows():
    paper = read_numbers()
    readme = paper[(paper["source"] == "Dinomaly") & (paper["table"] == "README")].set_index("dataset")
    assert readme["value"].to_dict() == {"mvtec": 99.7, "visa": 98.9, "realiad": 89.7}
    assert readme["options"].to_dict() == {"mvtec": "iters=20000", "visa": "iters=20000", "realiad": "iters=100000"}
    assert set(readme["metric"]) == {"I-AUROC"} and set(readme["class"]) == {"mean"}


def test_dinomaly_paper_run_gets_differences(tmp_path):
    csv = write_run(tmp_path / "run", DINOMALY_ROWS, DINOMALY_RUN)
    table = compare(csv, "mvtec", "dinomaly", run=DINOMALY_RUN)
    assert table[["table", "setting", "class", "metric"]].values.tolist() == [
        ["INP-Former Table 2", "model-unified", "mean", metric] for metric in ("I-AUROC", "I-AP", "P-AUROC", "P-AP",
                                                                                 "AUPRO")] + [
        ["abstract", "model-unified", "mean", "I-AUROC"]]  # per-class and mixed rows: not published
    assert table["paper"].tolist() == [99.6, 99.8, 98.4, 69.3, 94.8, 99.6]
    assert table["diff"].tolist() == [-0.4, -0.1, -0.1, -1.3, -0.3, -0.4] and set(table["reason"]) == {""}
    timm_name = compare(csv, "mvtec", "dinomaly", run={**DINOMALY_RUN, "vit": "vit_base_patch14_reg4_dinov2"})
    assert timm_name.equals(table)
    result = run_script(csv)
    assert result.returncode == 0, result.stderr
    assert "Dinomaly abstract (MVTec AD, dinomaly)\n" in result.stdout and "-0.4" in result.stdout
    assert "Dinomaly INP-Former Table 2 (MVTec AD, dinomaly)\n" in result.stdout and "-1.3" in result.stdout
    assert "not compared" not in result.stdout and "FORCED" not in result.stdout
    # the README's released weights were trained twice as long
    twice = compare(csv, "mvtec", "dinomaly", run={**DINOMALY_RUN, "iters": 20000})
    assert twice[["table", "options", "paper", "diff"]].values.tolist() == [["README", "iters=20000", 99.7, -0.5]]
    assert compare(csv, "mvtec", "dinomaly", run={**DINOMALY_RUN, "eval_size": 0}).empty  # not its evaluation


@pytest.mark.parametrize("change,reason", [
    ({"vit": "small"}, "vit small (paper: base)"),
    ({"weights": "none"}, "weights none (paper: imagenet)"),
])
def test_dinomaly_run_of_another_encoder_is_refused_in_one_line(tmp_path, change, reason):
    csv = write_run(tmp_path / "run", DINOMALY_ROWS, {**DINOMALY_RUN, **change})
    result = run_script(csv)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"not comparable with Dinomaly INP-Former Table 2, abstract (MVTec AD, "
                                          f"dinomaly): {reason}; --force compares anyway"]
    forced = compare(csv, "mvtec", "dinomaly", run={**DINOMALY_RUN, **change}, force=True)
    assert forced["reason"].tolist() == [reason] * 6 and forced["diff"].tolist()[-1] == -0.4


def test_dinomaly_real_iad_by_dataset_override(tmp_path):
    realiad = pd.read_csv(PAPER_CLASSES, dtype=str).query("dataset == 'realiad'")["class"].tolist()
    rows = HEADER + "".join(f"model-unified,none,{c},90.0,,,,\n" for c in [*realiad, "mean"])
    csv = write_run(tmp_path / "run", rows, {**DINOMALY_RUN, "classes": realiad, "iters": 50000})  # run as mvtec
    result = run_script(csv, "--dataset", "realiad")  # Real-IAD's per-class counts are not typed: refused
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "not comparable with Dinomaly INP-Former Table 2, abstract (Real-IAD, dinomaly): data unchecked: the "
        "published per-class counts of Real-IAD are not typed in paper_classes.csv; --force compares anyway"]
    forced = run_script(csv, "--dataset", "realiad", "--force")
    assert "Dinomaly abstract (Real-IAD, dinomaly): FORCED" in forced.stdout and "+0.7" in forced.stdout
    as_mvtec = run_script(csv).stdout.strip().splitlines()
    assert len(as_mvtec) == 1 and as_mvtec[0].startswith("no published numbers for dataset mvtec with method dinomaly")


def test_dinomaly_table_without_config_needs_vit(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text(DINOMALY_ROWS)
    args = ["--dataset", "mvtec", "--method", "dinomaly", "--weights", "imagenet", "--classes", "all",
            "--data_path", DINOMALY_RUN["data_path"], "--options", "batch_size=16"]
    backbone = run_script(path, *args, "--backbone", "wide_resnet50_2")
    assert backbone.returncode == 2 and "--vit for dinomaly" in backbone.stderr and backbone.stdout == ""
    vit = run_script(path, *args, "--vit", "base")
    assert vit.returncode == 0 and "-0.4" in vit.stdout and "FORCED" not in vit.stdout
    small = run_script(path, *args, "--vit", "small")
    assert small.stdout.startswith("not comparable with Dinomaly INP-Former Table 2, abstract (MVTec AD, dinomaly): "
                                   "vit small (paper: ")


# ---- the data and the training length must be the paper's ----------------------------------------------------------

NOCO_RUN = {"dataset": "mvtec", "method": "noco", "setting": "separate", "backbone": "wide_resnet50_2",
            "weights": "imagenet", "image_size": 256, "crop_size": 224, "image_score": "max", "epochs": 50,
            "batch_size": 16}


def noco_rows(classes):
    return HEADER + "".join(f"separate,none,{c},80.21,90.0,,,\n" for c in [*classes, "mean"])


def test_renamed_demo_classes_trained_one_epoch_are_refused(tmp_path):
    """The issue's case: the demo textures (24 train/good, 8 test/good, 12 defective of one kind) renamed carpet
    and grid, at NoCo's backbone and size, one epoch."""
    for name in ("carpet", "grid"):
        make_class(tmp_path / "renamed" / name, 24, 8, {"hole": 12})
    run = {**NOCO_RUN, "classes": ["carpet", "grid"], "epochs": 1, "data_path": str(tmp_path / "renamed")}
    csv = write_run(tmp_path / "run", noco_rows(["carpet", "grid"]), run)
    result = run_script(csv)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "not comparable with NoCo Tables II, III (MVTec AD, noco): classes carpet,grid of 15 (missing bottle, cable, "
        "capsule, ...), data unlike the published MVTec AD in 2 classes: carpet 24 train/good (paper: 280), "
        "8 test/good (paper: 28), 12 defective (paper: 89), defect kinds hole (paper: color, cut, hole, ...); "
        "grid 24 train/good (paper: 264), 8 test/good (paper: 21), 12 defective (paper: 57), defect kinds hole "
        f"(paper: bent, broken, glue, ...) (at {tmp_path / 'renamed'}), epochs 1 (paper: 50); --force compares anyway"]
    table = compare(csv, "mvtec", "noco", run=run, force=True)
    carpet = lookup(table, table="III", **{"class": "carpet"})
    assert carpet["diff"].item() == -19.7 and carpet["reason"].item().endswith("epochs 1 (paper: 50)")
    # each check on its own: the published counts trained one epoch; the renamed folder trained 50 epochs
    published = {**run, "data_path": PAPER_RUN["data_path"]}
    forced = compare(csv, "mvtec", "noco", run=published, force=True).query("`class` != 'mean'")
    assert set(forced["reason"]) == {"epochs 1 (paper: 50)"}
    assert compare(csv, "mvtec", "noco", run={**published, "epochs": 50})["class"].tolist() == ["carpet", "grid"]
    assert compare(csv, "mvtec", "noco", run={**run, "epochs": 50}).empty


def test_counts_and_defect_kinds_are_checked_per_class(tmp_path):
    run = {**NOCO_RUN, "classes": ["bottle"], "data_path": str(tmp_path / "mvtec")}
    make_class(tmp_path / "mvtec" / "bottle", 209, 20, {"broken_large": 20, "broken_small": 22, "contamination": 21})
    rows = pd.read_csv(io.StringIO(noco_rows(["bottle"])))

    def reasons(**changes):
        return set(compare(rows, "mvtec", "noco", run={**run, **changes}, force=True)
                   .query("`class` == 'bottle'")["reason"])

    assert reasons() == {""}  # the published bottle: 209 / 20 / 63 in three kinds
    (tmp_path / "mvtec" / "bottle" / "train" / "good" / "000.png").unlink()
    (tmp_path / "mvtec" / "bottle" / "train" / "good" / "notes.txt").touch()  # not an image: not counted
    assert reasons() == {f"data unlike the published MVTec AD in 1 class: bottle 208 train/good (paper: 209) "
                         f"(at {tmp_path / 'mvtec'})"}
    (tmp_path / "mvtec" / "bottle" / "train" / "good" / "000.PNG").touch()
    assert reasons() == {""}
    (tmp_path / "mvtec" / "bottle" / "test" / "contamination").rename(tmp_path / "mvtec" / "bottle" / "test" / "dirt")
    assert reasons() == {"data unlike the published MVTec AD in 1 class: bottle defect kinds broken_large, "
                         "broken_small, dirt (paper: broken_large, broken_small, contamination) "
                         f"(at {tmp_path / 'mvtec'})"}
    assert reasons(data_path=str(tmp_path / "elsewhere")) == {
        f"data unknown: {tmp_path / 'elsewhere'} not found (the run's data_path; --data_path gives another)"}
    assert reasons(data_path=None) == {"data unknown (no data_path to count the classes in; pass --data_path)"}
    assert reasons(data_path=str(tmp_path / "empty"), classes=["bottle"]) != {""}


def test_datasets_without_typed_counts_are_refused(tmp_path):
    mpdd = ["bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes"]
    run = {**NOCO_RUN, "dataset": "mpdd", "classes": mpdd, "batch_size": 8, "data_path": str(tmp_path)}
    csv = write_run(tmp_path / "run", noco_rows(mpdd), run)
    assert run_script(csv).stdout.splitlines() == [
        "not comparable with NoCo Table II (MPDD, noco): data unchecked: the published per-class counts of MPDD are "
        "not typed in paper_classes.csv; --force compares anyway"]


def test_training_length_batch_and_the_heads_own(unified_run):
    short = compare(unified_run, "mvtec", "revdist", run={**PAPER_RUN, "iters": 1000}, force=True)
    assert set(short["reason"]) == {"iters 1000 (paper: 5000)"}
    wide = compare(unified_run, "mvtec", "revdist", run={**PAPER_RUN, "batch_size": 32}, force=True)
    assert set(wide["reason"]) == {"batch_size 32 (paper: 16)"}
    head = compare(unified_run, "mvtec", "revdist", run={**PAPER_RUN, "cada_iters": 100}, force=True)
    assert set(head.loc[head["align"] == "cada", "reason"]) == {"cada_iters 100 (paper: 5000)"}
    assert set(head.loc[head["align"] == "none", "reason"]) == {""}  # the base's rows train no head
    uniad = {**PAPER_RUN, "method": "uniad", "backbone": "efficientnet_b4", "image_size": 224}
    assert set(compare(unified_run, "mvtec", "uniad", run=uniad, force=True)["reason"]) == {
        "iters 5000 (paper: 50000), batch_size 16 (paper: 64), cada_iters 5000 (paper: 20000)"} | {
        "iters 5000 (paper: 50000), batch_size 16 (paper: 64)"}
    assert compare(unified_run, "mvtec", "revdist", run={**PAPER_RUN, "val_fraction": 0.0}).equals(
        compare(unified_run, "mvtec", "revdist", run=PAPER_RUN))  # the folder's counts, not the trained images


def test_published_counts_typed_and_the_loaders_extensions():
    from datasets.common import IMAGE_EXTENSIONS
    from datasets.visa import VISA_TEST_ANOMALIES, VISA_TEST_NORMALS, VISA_TRAIN_TOTAL, VISA_TEST_TOTAL
    import compare_paper
    assert compare_paper.IMAGE_EXTENSIONS == IMAGE_EXTENSIONS
    counts = read_counts(PAPER_CLASSES)
    assert set(counts) == {"mvtec", "visa", "fmnist", "cifar10", "cifar100"}  # the others are not typed
    mvtec = counts["mvtec"]
    assert list(mvtec) == MVTEC and mvtec["bottle"] == (209, 20, 63, ("broken_large", "broken_small", "contamination"))
    assert [sum(v[i] for v in mvtec.values()) for i in range(3)] == [3629, 467, 1258]  # MVTec AD's totals
    assert sum(len(v[3]) for v in mvtec.values()) == 73 and mvtec["toothbrush"][3] == ("defective",)
    visa = counts["visa"]
    assert {c: v[1] for c, v in visa.items()} == VISA_TEST_NORMALS and {v[2] for v in visa.values()} == {
        VISA_TEST_ANOMALIES}
    assert sum(v[0] for v in visa.values()) == VISA_TRAIN_TOTAL
    assert sum(v[1] + v[2] for v in visa.values()) == VISA_TEST_TOTAL
    assert visa["capsules"][0] == 542 and visa["pcb3"][0] == 905  # the README's 602 and 1006 normals less the test's
    assert counts["cifar10"]["cat"] == (5000, 1000, 9000, ())

"""benchmarks/compare_paper.py and the published numbers it reads (benchmarks/paper_numbers.csv)."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from compare_paper import PAPER_NUMBERS, compare  # noqa: E402

HEADER = "setting,align,class,I-AUROC,I-AP,P-AUROC,P-AP,AUPRO\n"


def write_run(folder, csv_text, config):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.csv").write_text(csv_text)
    (folder / "config.json").write_text(json.dumps({"status": "complete", "config": config}))
    return folder / "results.csv"


def run_script(*args):
    return subprocess.run([sys.executable, "benchmarks/compare_paper.py", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def unified_run(tmp_path):
    return write_run(tmp_path / "run", HEADER + (
        "model-unified,none,bottle,99.00,99.50,,,\n"
        "model-unified,none,mean,97.80,,96.40,60.00,\n"
        "absolute-unified,none,mixed,90.00,94.40,,,\n"
        "model-unified,cada,mean,98.20,99.20,96.10,57.00,\n"
        "absolute-unified,cada,mixed,95.00,99.30,97.00,50.00,\n"),
        {"dataset": "mvtec", "method": "revdist", "setting": "unified"})


def lookup(frame, **keys):
    rows = frame
    for key, value in keys.items():
        rows = rows[rows[key] == value]
    return rows


def test_unified_values_and_differences(unified_run):
    table = compare(unified_run, "mvtec", "revdist")
    row = lookup(table, table="1", setting="absolute-unified", align="none", metric="I-AUROC")
    assert len(row) == 1 and row["ours"].item() == 90.0 and row["paper"].item() == 85.0 and row["diff"].item() == 5.0
    # the same number in Tables 1, 4 and 5: one row each
    assert sorted(lookup(table, setting="absolute-unified", align="none", metric="I-AUROC")["table"]) == ["1", "4", "5"]
    # Tables 1 and 4/5 disagree on RevDist+CADA MVTec P-AUROC: 95.6 vs 96.0
    p = lookup(table, setting="absolute-unified", align="cada", metric="P-AUROC").set_index("table")
    assert p["paper"].to_dict() == {"1": 95.6, "4": 96.0, "5": 96.0}
    assert p["diff"].to_dict() == {"1": 1.4, "4": 1.0, "5": 1.0}
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


def test_semantic_run_uses_table_two(tmp_path):
    csv = write_run(tmp_path / "run", "setting,class,I-AUROC,I-AP,P-AUROC,P-AP,AUPRO\nseparate,0,95.0,,,,\n"
                    "separate,mean,94.0,,,,\n", {"dataset": "cifar10", "method": "noco"})
    result = run_script(csv)
    assert result.returncode == 0, result.stderr
    assert "93.9" in result.stdout and "+0.1" in result.stdout and "II" in result.stdout


def test_data_file_keys_unique_and_values_in_range():
    paper = pd.read_csv(PAPER_NUMBERS, dtype={"table": str, "align": str, "class": str})
    assert list(paper.columns) == ["source", "table", "dataset", "method", "setting", "align", "class", "metric", "value"]
    keys = ["table", "dataset", "method", "setting", "align", "class", "metric"]
    assert not paper.duplicated(keys).any(), paper[paper.duplicated(keys, keep=False)]
    assert paper["value"].between(0, 100).all()
    assert set(paper["metric"]) <= {"I-AUROC", "I-AP", "P-AUROC", "P-AP"}
    assert set(paper["setting"]) == {"separate", "model-unified", "absolute-unified"}
    assert set(paper["align"].fillna("")) == {"", "none", "cada", "cada_sigma", "class_aware", "classifier"}
    assert paper.loc[paper["source"] == "NoCo", "align"].isna().all()
    assert len(paper) == 179


@pytest.mark.parametrize("table,dataset,method,setting,align,cls,metric,value", [
    ("1", "mvtec", "revdist", "absolute-unified", "none", "mixed", "I-AUROC", 85.0),
    ("1", "mvtec", "revdist", "absolute-unified", "cada", "mixed", "I-AUROC", 98.0),
    ("1", "mvtec", "recontrast", "model-unified", "cada", "mean", "P-AP", 61.3),
    ("1", "mvtec", "uniad", "absolute-unified", "none", "mixed", "P-AUROC", 96.4),
    ("2", "visa", "recontrast", "absolute-unified", "none", "mixed", "I-AP", 95.0),
    ("2", "visa", "revdist", "model-unified", "none", "mean", "P-AP", 44.2),
    ("4", "visa", "revdist", "absolute-unified", "classifier", "mixed", "P-AP", 40.3),
    ("4", "mvtec", "revdist", "absolute-unified", "class_aware", "mixed", "I-AUROC", 97.3),
    ("5", "btad", "revdist", "absolute-unified", "cada_sigma", "mixed", "I-AUROC", 98.4),
    ("5", "btad", "revdist", "absolute-unified", "none", "mixed", "P-AP", 60.8),
    ("5", "visa", "revdist", "absolute-unified", "cada_sigma", "mixed", "P-AP", 37.7),
    ("II", "cats_vs_dogs", "noco", "separate", None, "mean", "I-AUROC", 97.5),
    ("II", "fmnist", "noco", "separate", None, "mean", "I-AUROC", 95.4),
    ("III", "mvtec", "noco", "separate", None, "capsule", "I-AUROC", 97.7),
    ("III", "mvtec", "noco", "separate", None, "transistor", "I-AUROC", 99.3),
])
def test_typed_numbers(table, dataset, method, setting, align, cls, metric, value):
    paper = pd.read_csv(PAPER_NUMBERS, dtype={"table": str, "align": str, "class": str})
    rows = paper[(paper["table"] == table) & (paper["dataset"] == dataset) & (paper["method"] == method)
                 & (paper["setting"] == setting) & (paper["class"] == cls) & (paper["metric"] == metric)
                 & (paper["align"].isna() if align is None else paper["align"] == align)]
    assert rows["value"].tolist() == [value]


def test_script_demo_run_has_no_published_numbers(tmp_path):
    csv = write_run(tmp_path / "demo_run", "setting,class,I-AUROC,I-AP,P-AUROC,P-AP,AUPRO\n"
                    "separate,brick,80.00,85.00,90.00,30.00,70.00\nseparate,mean,80.00,85.00,90.00,30.00,70.00\n",
                    {"dataset": "demo", "method": "revdist", "setting": "separate"})
    result = run_script(csv)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and "no published numbers" in lines[0] and "demo" in lines[0]


def test_script_prints_the_comparison(unified_run):
    result = run_script(unified_run)
    assert result.returncode == 0, result.stderr
    assert "+5.0" in result.stdout and "-3.1" in result.stdout and "absolute-unified" in result.stdout


@pytest.mark.parametrize("case", ["missing", "no_config", "bad_columns", "empty"])
def test_script_bad_input_one_line_exit_2(tmp_path, case):
    path = tmp_path / "results.csv"
    if case == "no_config":
        path.write_text(HEADER + "absolute-unified,none,mixed,90,,,,\n")
    elif case == "bad_columns":
        write_run(tmp_path, "setting,model,score\nseparate,a,1\n", {"dataset": "mvtec", "method": "noco"})
    elif case == "empty":
        write_run(tmp_path, "", {"dataset": "mvtec", "method": "noco"})
    result = run_script(path)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert (str(tmp_path / "config.json") if case == "no_config" else str(path)) in lines[0]
    if case == "no_config":
        assert "--dataset" in lines[0] and "--method" in lines[0]
        given = run_script(path, "--dataset", "mvtec", "--method", "revdist")
        assert given.returncode == 0 and "+5.0" in given.stdout
    if case == "bad_columns":
        assert "I-AUROC" in lines[0]

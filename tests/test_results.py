import json

import pandas as pd
import pytest

from utils.results import TABLE_COLUMNS, atomic_write, metrics_row, results_table, write_norm_tables, write_run


def metrics(i_auroc, p_auroc=None):
    return {"I-AUROC": i_auroc, "I-AP": 0.5, "P-AUROC": p_auroc, "P-AP": None if p_auroc is None else 0.25,
            "AUPRO": None, "F1-max": 0.9}


def test_table_in_percent_with_a_mean_row_and_empty_pixel_columns(tmp_path):
    table = results_table([metrics_row("a", metrics(0.9, 0.8)), metrics_row("b", metrics(0.7, 0.6))])
    assert list(table.columns) == TABLE_COLUMNS == ["class", "I-AUROC", "I-AP", "P-AUROC", "P-AP", "AUPRO"]
    assert table["class"].tolist() == ["a", "b", "mean"]
    assert table.loc[2, "I-AUROC"] == pytest.approx(80.0) and table.loc[2, "P-AUROC"] == pytest.approx(70.0)
    path = write_run(tmp_path, table, {"lr": 1e-4}, "cpu", started=0.0)
    written = pd.read_csv(path)
    assert written["AUPRO"].isna().all() and written.loc[0, "I-AUROC"] == 90.0
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["config"] == {"lr": 1e-4} and meta["device"].startswith("cpu")
    assert {"torch", "torchvision", "numpy", "scikit-learn"} <= set(meta["versions"]) and "git_commit" in meta
    assert "wall_time_s" in meta
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "results.csv"]


def test_mixed_row_table_has_no_mean():
    table = results_table([metrics_row("mixed", metrics(0.95, 0.9))], summary=None)
    assert table["class"].tolist() == ["mixed"]


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    target = tmp_path / "results.csv"

    def crash(tmp):
        open(tmp, "w").write("half a ta")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, crash)
    assert list(tmp_path.iterdir()) == []
    target.write_text("old")
    with pytest.raises(RuntimeError):
        atomic_write(target, crash)
    assert target.read_text() == "old" and len(list(tmp_path.iterdir())) == 1


def test_norm_study_table_has_a_column_per_metric_and_norm(tmp_path):
    rows = {1.0: [metrics_row("grid", metrics(0.9, 0.8))], 8.0: [metrics_row("grid", metrics(0.95, 0.85))]}
    path = write_norm_tables(tmp_path, rows, {}, "cpu", 0.0)
    study = pd.read_csv(path)
    assert path.name == "norm_study.csv"
    assert list(study.columns) == ["class", "I-AUROC norm=1", "I-AUROC norm=8", "P-AUROC norm=1", "P-AUROC norm=8"]
    assert study["class"].tolist() == ["grid", "mean"] and study.loc[0, "I-AUROC norm=8"] == 95.0
    assert (tmp_path / "results_norm1.csv").exists() and (tmp_path / "results_norm8.csv").exists()

import json
import os
import stat

import pandas as pd
import pytest

from utils.results import (PARTIAL_NAME, TABLE_COLUMNS, RunFolder, atomic_write, metrics_row, read_run_config,
                           results_table)


def metrics(i_auroc, p_auroc=None):
    return {"I-AUROC": i_auroc, "I-AP": 0.5, "P-AUROC": p_auroc, "P-AP": None if p_auroc is None else 0.25,
            "AUPRO": None}


def test_table_in_percent_with_a_mean_row_per_setting_and_the_mixed_row_last():
    rows = [metrics_row("a", metrics(0.9, 0.8), "model-unified"), metrics_row("b", metrics(0.7, 0.6), "model-unified"),
            metrics_row("mixed", metrics(0.6, 0.5), "absolute-unified")]
    table = results_table(rows)
    assert list(table.columns) == TABLE_COLUMNS == ["setting", "class", "I-AUROC", "I-AP", "P-AUROC", "P-AP", "AUPRO"]
    assert table["class"].tolist() == ["a", "b", "mean", "mixed"]
    assert table["setting"].tolist() == ["model-unified"] * 3 + ["absolute-unified"]
    assert table.loc[2, "I-AUROC"] == pytest.approx(80.0) and table.loc[2, "P-AUROC"] == pytest.approx(70.0)
    assert table.loc[3, "I-AUROC"] == pytest.approx(60.0)  # pooled, not the mean
    separate = results_table([metrics_row("a", metrics(0.9)), metrics_row("b", metrics(0.8))])
    assert separate["class"].tolist() == ["a", "b", "mean"] and separate["P-AUROC"].isna().all()


def test_run_folder_appears_with_the_first_result_keeps_partial_rows_and_finishes(tmp_path):
    path = tmp_path / "run"
    run = RunFolder(path, {"lr": 1e-4}, "cpu", started=0.0)
    assert not path.exists()  # nothing is created before a result is ready
    run.add_rows([metrics_row("a", metrics(0.91234567), model="a")])
    partial = pd.read_csv(path / PARTIAL_NAME)
    assert partial.loc[0, "I-AUROC"] == pytest.approx(91.234567)  # full precision, for a resumed mean
    meta = json.loads((path / "config.json").read_text())
    assert meta["status"] == "partial" and meta["config"] == {"lr": 1e-4}
    assert read_run_config(path) == {"lr": 1e-4}

    with pytest.raises(ValueError, match=r"that run is still in progress \(pid \d+ on .+ holds its run.lock\)"):
        RunFolder(path, {"lr": 1e-4}, "cpu", started=0.0, resume=True)
    del run  # the interrupted run's process ends: the OS releases its lock
    resumed = RunFolder(path, {"lr": 1e-4}, "cpu", started=0.0, resume=True)
    assert resumed.finished("a") and not resumed.finished("b")
    resumed.add_rows([metrics_row("b", metrics(0.8), model="b")])
    csv = resumed.finish()
    table = pd.read_csv(csv, dtype={"class": str})
    assert table["class"].tolist() == ["a", "b", "mean"] and table.loc[2, "I-AUROC"] == pytest.approx(85.62, abs=0.006)
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "results.csv"]
    meta = json.loads((path / "config.json").read_text())
    assert meta["status"] == "complete" and {"device", "git_commit", "wall_time_s", "versions"} <= meta.keys()
    with pytest.raises(ValueError, match="complete"):
        read_run_config(path)


def test_norm_study_tables(tmp_path):
    run = RunFolder(tmp_path / "run", {}, "cpu", 0.0)  # an existing folder is never taken over without resume
    run.add_rows([metrics_row("grid", metrics(0.9, 0.8), target_norm=1.0),
                  metrics_row("grid", metrics(0.95, 0.85), target_norm=8.0)])
    path = run.finish(norms=(1.0, 8.0))
    study = pd.read_csv(path)
    assert path.name == "norm_study.csv"
    assert list(study.columns) == ["setting", "class", "I-AUROC norm=1", "I-AUROC norm=8", "P-AUROC norm=1",
                                   "P-AUROC norm=8"]
    assert study["class"].tolist() == ["grid", "mean"] and study.loc[0, "I-AUROC norm=8"] == 95.0
    assert pd.read_csv(tmp_path / "run" / "results_norm8.csv").loc[0, "I-AUROC"] == 95.0


def test_a_failed_write_leaves_nothing_behind_and_files_follow_the_umask(tmp_path):
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
    old = os.umask(0o022)
    try:
        atomic_write(target, lambda tmp: open(tmp, "w").write("new"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644 and target.read_text() == "new"


def counted(i_auroc, p_auroc, images, pixels):
    return {**metrics(i_auroc, p_auroc), "anomalous images": images, "anomalous pixels": pixels}


def test_every_unified_alignment_block_has_the_ideal_row_beside_mixed_and_a_separate_table_has_none(capsys):
    from utils.results import model_rows
    per_class = {"a": counted(0.6, 0.5, 1, 100), "b": counted(0.9, 0.8, 3, 300)}
    rows = [row for align in ("none", "cada") for row in model_rows(per_class, metrics(0.7, 0.6), "unified", None,
                                                                    align=align, show_align=True)]
    table = results_table(rows)
    assert table["class"].tolist() == ["a", "b", "mean", "mixed", "ideal"] * 2
    assert table["align"].tolist() == ["none"] * 5 + ["cada"] * 5
    ideal = table[table["class"] == "ideal"]
    assert (ideal["setting"] == "absolute-unified").all()
    assert ideal["I-AUROC"].tolist() == pytest.approx([82.5] * 2)  # (60 + 3 * 90) / 4
    assert ideal["P-AUROC"].tolist() == pytest.approx([72.5] * 2)
    assert ideal[["I-AP", "P-AP", "AUPRO"]].isna().all(axis=None)
    assert table.loc[2, "I-AUROC"] == pytest.approx(75.0)  # the plain mean stays the per-class mean
    assert "ideal [cada]: I-AUROC 82.5 P-AUROC 72.5\n" in capsys.readouterr().out
    separate = results_table(model_rows(per_class, None, "a", None))
    assert separate["class"].tolist() == ["a", "b", "mean"]

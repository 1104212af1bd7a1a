"""Result tables (CSV, percent), config.json beside them, and atomic writes.

Every table has the columns of TABLE_COLUMNS: one row per class plus a `mean` row, or one
`mixed` row in the absolute-unified setting. Pixel columns stay empty for semantic tasks.
"""
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

TABLE_COLUMNS = ["class", "I-AUROC", "I-AP", "P-AUROC", "P-AP", "AUPRO"]


def atomic_write(path, write):
    """Call write(tmp_path), then rename tmp_path to path: a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def save_checkpoint(state, path):
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def metrics_row(name, metrics):
    """One table row in percent from a compute_metrics dict (missing or None metrics stay empty)."""
    row = {"class": name}
    for column in TABLE_COLUMNS[1:]:
        value = metrics.get(column)
        row[column] = None if value is None else 100.0 * value
    return row


def results_table(rows, summary="mean"):
    """DataFrame of per-class rows plus a `mean` row (summary="mean"), or the rows as given."""
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    if summary == "mean" and len(table):
        means = table[TABLE_COLUMNS[1:]].astype(float).mean(axis=0, skipna=True)
        table = pd.concat([table, pd.DataFrame([{"class": "mean", **means.to_dict()}])], ignore_index=True)
    return table


def write_table(table, path):
    return atomic_write(path, lambda tmp: table.to_csv(tmp, index=False, float_format="%.2f"))


def _git_commit():
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("+uncommitted" if dirty else "")) or None


def run_metadata(device, started):
    import numpy, scipy, sklearn, torchvision
    device = torch.device(device)
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
        "git_commit": _git_commit(),
        "wall_time_s": round(time.time() - started, 1),
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "numpy": numpy.__version__,
                     "scipy": scipy.__version__, "scikit-learn": sklearn.__version__, "pandas": pd.__version__},
    }


def make_run_dir(out_dir, *parts):
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(out_dir) / "_".join([*map(str, parts), stamp])
    suffix = 1
    while run_dir.exists():
        run_dir = Path(out_dir) / "_".join([*map(str, parts), stamp, str(suffix)])
        suffix += 1
    run_dir.mkdir(parents=True)
    return run_dir


def write_run(run_dir, table, config, device, started, name="results.csv"):
    """Write the table and config.json (configuration + versions, commit, device, wall time); return the CSV path."""
    run_dir = Path(run_dir)
    meta = {"config": config, **run_metadata(device, started)}
    atomic_write(run_dir / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2, default=str)))
    return write_table(table, run_dir / name)


def write_norm_tables(run_dir, rows_by_norm, config, device, started, study_metrics=("I-AUROC", "P-AUROC")):
    """Write the run's tables and return the CSV to report: results.csv for one target norm; for the
    norm study, results_norm<n>.csv per norm and norm_study.csv (one column per metric and norm)."""
    tables = {norm: results_table(rows) for norm, rows in rows_by_norm.items()}
    if len(tables) == 1:
        (table,) = tables.values()
        return write_run(run_dir, table, config, device, started)
    study = next(iter(tables.values()))[["class"]].copy()
    for metric in study_metrics:
        for norm, table in tables.items():
            write_table(table, Path(run_dir) / f"results_norm{norm:g}.csv")
            study[f"{metric} norm={norm:g}"] = table[metric].to_numpy()
    return write_run(run_dir, study, config, device, started, name="norm_study.csv")

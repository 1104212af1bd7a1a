"""Result tables (CSV, percent), config.json beside them, checkpoints, and atomic writes.

A table has the columns of TABLE_COLUMNS. `setting` says which rows are which:
  separate          one model per class: a row per class and their `mean`
  model-unified     one model for all classes, each class's test images alone: a row per class and `mean`
  absolute-unified  the same model, every test image of every class pooled: the `mixed` row
Unified runs add an `align` column (none, cada, ...): one such block of rows per alignment.
Pixel columns stay empty for semantic tasks.

`RunFolder` is one run's folder. It is created only when the first result is ready; after each
model the rows so far go to `results.partial.csv` (atomically, full precision), so a killed run
keeps every finished class and `--resume <run folder>` continues with the missing ones; `finish`
writes the final tables and removes the partial file.
"""
import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from utils.files import atomic_write

TABLE_COLUMNS = ["setting", "class", "I-AUROC", "I-AP", "P-AUROC", "P-AP", "AUPRO"]
METRIC_COLUMNS = TABLE_COLUMNS[2:]
PARTIAL_NAME = "results.partial.csv"


def save_checkpoint(state, path):
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def metrics_row(name, metrics, setting="separate", **extra):
    """One table row in percent from a compute_metrics dict (missing or None metrics stay empty)."""
    row = {"setting": setting, "class": name, **extra}
    for column in METRIC_COLUMNS:
        value = metrics.get(column)
        row[column] = None if value is None else 100.0 * value
    return row


def results_table(rows):
    """DataFrame of the rows with a `mean` row after the per-class rows of each setting
    (separate, model-unified); `mixed` rows (absolute-unified) are kept as they are, last.
    Rows with an `align` key (unified runs) make one such block per alignment and an `align` column."""
    if any("align" in row for row in rows):
        aligns = list(dict.fromkeys(row["align"] for row in rows))
        blocks = [results_table([{k: v for k, v in row.items() if k != "align"} for row in rows if row["align"] == a])
                  for a in aligns]
        for align, block in zip(aligns, blocks):
            block.insert(1, "align", align)
        return pd.concat(blocks, ignore_index=True)
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    parts = []
    for setting in ("separate", "model-unified"):
        per_class = table[table["setting"] == setting]
        if len(per_class):
            means = per_class[METRIC_COLUMNS].astype(float).mean(axis=0, skipna=True)
            parts += [per_class, pd.DataFrame([{"setting": setting, "class": "mean", **means.to_dict()}])]
    parts.append(table[~table["setting"].isin(["separate", "model-unified"])])
    return pd.concat([p for p in parts if len(p)], ignore_index=True)[TABLE_COLUMNS]


def write_table(table, path, float_format="%.2f"):
    return atomic_write(path, lambda tmp: table.to_csv(tmp, index=False, float_format=float_format))


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


def new_run_path(out_dir, *parts):
    """results/<parts>_<time>[_n]: a name no folder has yet (the folder itself is not created)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(out_dir) / "_".join([*map(str, parts), stamp])
    suffix = 1
    while run_dir.exists():
        run_dir = Path(out_dir) / "_".join([*map(str, parts), stamp, str(suffix)])
        suffix += 1
    return run_dir


RESUME_MAY_CHANGE = {"resume", "device", "num_workers"}


def resumed_config(cfg, given):
    """With --resume, the interrupted run's own configuration (only the options of RESUME_MAY_CHANGE
    may be given beside it, and they win); cfg itself otherwise."""
    if not cfg.resume:
        return cfg
    if given - RESUME_MAY_CHANGE:
        raise ValueError(f"--resume takes its configuration from {cfg.resume}/config.json; "
                         f"drop {', '.join('--' + k for k in sorted(given - RESUME_MAY_CHANGE))}")
    return type(cfg)(**{**read_run_config(cfg.resume, like=vars(cfg)), **{k: getattr(cfg, k) for k in given}})


def read_run_config(run_dir, like=None):
    """The configuration saved in <run_dir>/config.json, for --resume; a clear error when it is not a
    run. With `like` (a config dict), JSON lists become tuples where `like` has tuples, and a saved
    configuration with other options (a run of another script) is refused."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"--resume {run_dir}: not a run folder (it has no config.json)")
    meta = json.loads(path.read_text())
    if meta.get("status") == "complete":
        raise ValueError(f"--resume {run_dir}: that run is complete ({meta.get('results')}); nothing to resume")
    config = meta["config"]
    if like is not None:
        if set(config) != set(like):
            raise ValueError(f"--resume {run_dir}: that run was made by another script or version "
                             f"(options differ: {sorted(set(config) ^ set(like))})")
        config = {k: tuple(v) if isinstance(like[k], tuple) else v for k, v in config.items()}
    return config


class RunFolder:
    """One run's folder: checkpoints, partial and final tables, config.json (see the module docstring)."""

    def __init__(self, path, config, device, started, resume=False, writer=True):
        self.path, self.writer = Path(path), writer  # writer False: another process writes (torchrun)
        self.config, self.device, self.started = config, device, started
        self.rows = []
        if resume and (self.path / PARTIAL_NAME).is_file():
            table = pd.read_csv(self.path / PARTIAL_NAME, dtype={"class": str})
            self.rows = [{k: (None if pd.isna(v) else v) for k, v in row.items()}
                         for row in table.to_dict("records")]

    def finished(self, name, **extra):
        """Whether rows for the model `name` (with these extra keys, e.g. target_norm) are already there."""
        return any(row.get("model") == name and all(row.get(k) == v for k, v in extra.items()) for row in self.rows)

    def _write_config(self, status, results=None):
        if not self.writer:
            return
        meta = {"status": status, "results": results, "config": self.config,
                **run_metadata(self.device, self.started)}
        atomic_write(self.path / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2, default=str)))

    def save_checkpoint(self, state, name):
        if not self.writer:
            return None
        if not (self.path / "config.json").exists():  # first: a run killed after its first checkpoint is resumable
            self._write_config("partial")
        return save_checkpoint(state, self.path / "checkpoints" / f"{name}.pt")

    def add_rows(self, rows):
        """Keep the rows of one finished model and write the table so far (results.partial.csv)."""
        self.rows += rows
        if not self.writer:
            return
        write_table(pd.DataFrame(self.rows), self.path / PARTIAL_NAME, float_format=None)
        self._write_config("partial")

    def finish(self, norms=(None,), study_metrics=("I-AUROC", "P-AUROC")):
        """Write the final table(s) and config.json; return the CSV to report. One target norm:
        results.csv. The norm study: results_norm<n>.csv per norm and norm_study.csv."""
        if not self.writer:
            return self.path / ("results.csv" if len(norms) == 1 else "norm_study.csv")
        tables = {norm: results_table([r for r in self.rows if r.get("target_norm") in (norm, None)
                                       or len(norms) == 1]) for norm in norms}
        if len(tables) == 1:
            csv_path = write_table(next(iter(tables.values())), self.path / "results.csv")
        else:
            first = next(iter(tables.values()))
            study = first[[c for c in ("setting", "align", "class") if c in first]].copy()
            for metric in study_metrics:
                for norm, table in tables.items():
                    write_table(table, self.path / f"results_norm{norm:g}.csv")
                    study[f"{metric} norm={norm:g}"] = table[metric].to_numpy()
            csv_path = write_table(study, self.path / "norm_study.csv")
        self._write_config("complete", results=csv_path.name)
        (self.path / PARTIAL_NAME).unlink(missing_ok=True)
        return csv_path

"""Result tables (CSV, percent), config.json beside them, checkpoints, and atomic writes.

A table has the columns of TABLE_COLUMNS. `setting` says which rows are which:
  separate          one model per class: a row per class and their `mean`
  model-unified     one model for all classes, each class's test images alone: a row per class and `mean`
  absolute-unified  the same model, every test image of every class pooled: the `mixed` row, and beside it
                    the `ideal` row, what `mixed` would be if an alignment made every class's normal scores
                    follow one distribution (utils.metrics.perfect_alignment_reference; I-AUROC and P-AUROC)
Unified runs add an `align` column (none, cada, ...): one such block of rows per alignment.
Pixel columns stay empty for semantic tasks. train_mvtec.py adds THRESHOLD_COLUMNS: the test set's
false-alarm rate and recall at the threshold set on held-out normal images (empty without them).

`RunFolder` is one run's folder. It is created only when the first result is ready, by exclusive
creation under a name no concurrent run holds (see RunFolder.path); after each model the rows so far
go to `results.partial.csv` (atomically, full precision, each class's row with a fingerprint of the
images it was computed on), so a killed run keeps every finished class and `--resume <run folder>`
continues with the missing ones; `finish` writes the final tables and removes the partial file. A
damaged config.json or partial table is refused in one line (ValueError). While a run works on its
folder it holds an flock on `run.lock` there (the OS releases it when the process ends, even killed),
and a `--resume` of a run still in progress is refused.
"""
import datetime
import fcntl
import io
import json
import os
import platform
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from utils.files import atomic_write
from utils.metrics import perfect_alignment_reference

TABLE_COLUMNS = ["setting", "class", "I-AUROC", "I-AP", "P-AUROC", "P-AP", "AUPRO"]
METRIC_COLUMNS = TABLE_COLUMNS[2:]
THRESHOLD_COLUMNS = ["FAR@thr", "recall@thr"]  # train_mvtec.py: the test set's rates at the held-out threshold
PARTIAL_NAME = "results.partial.csv"
POOLED_ROWS = ("mixed", "ideal")  # a unified model's absolute-unified rows: pooled, and its perfect-alignment reference
LOCK_NAME = "run.lock"


def save_checkpoint(state, path):
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def metrics_row(name, metrics, setting="separate", **extra):
    """One table row in percent from a compute_metrics dict (missing or None metrics stay empty)."""
    row = {"setting": setting, "class": name, **extra}
    for column in METRIC_COLUMNS + [c for c in THRESHOLD_COLUMNS if c in metrics]:
        value = metrics.get(column)
        row[column] = None if value is None else 100.0 * value
    return row


def model_rows(per_class, pooled, model, target_norm, align=None, show_align=False):
    """The table rows of one evaluated model, each also printed as one line: a row per class of
    {class: metrics}, then with `pooled` (a unified model) the absolute-unified `mixed` row and beside it
    the `ideal` row, the perfect-alignment reference computed from the per-class metrics (their counts
    included, see utils.metrics.perfect_alignment_reference). `align` (unified models) names the
    alignment; None marks a separate model, whose rows have no align column."""
    block = {} if align is None else {"align": align}
    suffix = f" [{align}]" if show_align else ""
    pooled_rows = [] if pooled is None else [("mixed", pooled), ("ideal", perfect_alignment_reference(per_class))]
    rows = []
    for name, metrics in [*per_class.items(), *pooled_rows]:
        setting = "separate" if align is None else "absolute-unified" if name in POOLED_ROWS else "model-unified"
        rows.append(metrics_row(name, metrics, setting, model=model, target_norm=target_norm, **block))
        shown_model = "" if name == model or name in POOLED_ROWS else f" ({model})"
        shown = [c for c in METRIC_COLUMNS + THRESHOLD_COLUMNS if metrics.get(c) is not None]
        print(f"{name}{shown_model}{suffix}: " + " ".join(f"{k} {100 * metrics[k]:.1f}" for k in shown))
    return rows


def results_table(rows):
    """DataFrame of the rows with a `mean` row after the per-class rows of each setting
    (separate, model-unified); `mixed` and `ideal` rows (absolute-unified) are kept as they are, last.
    Rows with an `align` key (unified runs) make one such block per alignment and an `align` column."""
    if any("align" in row for row in rows):
        aligns = list(dict.fromkeys(row["align"] for row in rows))
        blocks = [results_table([{k: v for k, v in row.items() if k != "align"} for row in rows if row["align"] == a])
                  for a in aligns]
        for align, block in zip(aligns, blocks):
            block.insert(1, "align", align)
        return pd.concat(blocks, ignore_index=True)
    columns = TABLE_COLUMNS + [c for c in THRESHOLD_COLUMNS if any(c in row for row in rows)]
    table = pd.DataFrame(rows, columns=columns)
    parts = []
    for setting in ("separate", "model-unified"):
        per_class = table[table["setting"] == setting]
        if len(per_class):
            means = per_class[columns[2:]].astype(float).mean(axis=0, skipna=True)
            parts += [per_class, pd.DataFrame([{"setting": setting, "class": "mean", **means.to_dict()}])]
    parts.append(table[~table["setting"].isin(["separate", "model-unified"])])
    return pd.concat([p for p in parts if len(p)], ignore_index=True)[columns]


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


def run_metadata(device, started, processes=1):
    import numpy, scipy, sklearn, torchvision
    device = torch.device(device)
    return {
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"cpu ({platform.processor() or platform.machine()})"),
        "processes": processes,  # torchrun: how many trained and evaluated together
        # CPU sums are split over the intra-op threads, so a CPU run's numbers depend on their count (README)
        "torch_num_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "git_commit": _git_commit(),
        "wall_time_s": round(time.time() - started, 1),
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "numpy": numpy.__version__,
                     "scipy": scipy.__version__, "scikit-learn": sklearn.__version__, "pandas": pd.__version__},
    }


def _stamp():
    now = datetime.datetime.now()
    return f"{now:%Y%m%d-%H%M%S}-{now.microsecond // 1000:03d}_{secrets.token_hex(2)}"


def new_run_path(out_dir, *parts):
    """results/<parts>_<YYYYmmdd-HHMMSS-mmm>_<4 random hex digits>: the name a new run's folder is wanted
    under (RunFolder creates it). Runs started in the same millisecond still differ in the suffix."""
    return Path(out_dir) / "_".join([*map(str, parts), _stamp()])


def _create_new_folder(wanted):
    """Create the folder `wanted`, or <wanted>_2, _3, ... when another run has taken the name: mkdir
    without exist_ok is atomic, so two runs never end in one folder."""
    wanted.parent.mkdir(parents=True, exist_ok=True)
    path, number = wanted, 1
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            number += 1
            path = wanted.with_name(f"{wanted.name}_{number}")


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


def read_run_config(run_dir, like=None, option="resume"):
    """The configuration saved in <run_dir>/config.json, for --resume (a complete run is refused) or
    another `option` (predict.py's --run); a clear error when it is not a run. With `like` (a config
    dict), JSON lists become tuples where `like` has tuples, and a saved configuration with other
    options (a run of another script) is refused."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"--{option} {run_dir}: not a run folder (it has no config.json)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as error:  # ValueError: JSONDecodeError, and bytes that are not UTF-8
        raise ValueError(f"--{option} {run_dir}: config.json is damaged (not JSON: {error})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise ValueError(f"--{option} {run_dir}: config.json is not a run configuration of this suite "
                         "(no \"config\" section)")
    if option == "resume" and meta.get("status") == "complete":
        raise ValueError(f"--resume {run_dir}: that run is complete ({meta.get('results')}); nothing to resume")
    config = meta["config"]
    if like is not None:
        if set(config) != set(like):
            raise ValueError(f"--{option} {run_dir}: that run was made by another script or version "
                             f"(options differ: {sorted(set(config) ^ set(like))})")
        config = {k: tuple(v) if isinstance(like[k], tuple) else v for k, v in config.items()}
    return config


def read_partial_rows(run_dir):
    """The rows of <run_dir>/results.partial.csv, none if there is no such file; a damaged one is refused."""
    path = Path(run_dir) / PARTIAL_NAME
    if not path.is_file():
        return []

    def refused(problem):
        return ValueError(f"--resume {run_dir}: {PARTIAL_NAME} is damaged ({problem}); "
                          "delete it and --resume redoes the table from the start")

    try:
        text = path.read_text()
        table = pd.read_csv(io.StringIO(text), dtype={"class": str, "data": str})  # a hash of digits stays text
    except (OSError, ValueError) as error:  # ValueError: the CSV parser's errors, and bytes that are not UTF-8
        raise refused(f"not a CSV table: {type(error).__name__}") from None
    if not text.endswith("\n"):  # atomic_write puts it whole, and a CSV ends with a line break
        raise refused("truncated: its last line is cut")
    if missing := [column for column in ("setting", "class", "model", *METRIC_COLUMNS) if column not in table]:
        raise refused(f"no column {', '.join(missing)}")
    if not all(pd.api.types.is_numeric_dtype(table[column]) for column in METRIC_COLUMNS):
        raise refused("text in a metric column")
    if table[["setting", "I-AUROC"]].isna().any(axis=None):
        raise refused("rows without a setting or an I-AUROC")
    return [{k: (None if pd.isna(v) else v) for k, v in row.items()} for row in table.to_dict("records")]


def _lock_run(folder):
    """Hold an exclusive flock on <folder>/run.lock for as long as the returned file stays open (the process's
    life); it records this process's pid and host. Held by a live process: refused in one line."""
    handle = open(Path(folder) / LOCK_NAME, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ValueError(f"--resume {folder}: that run is still in progress ({holder} holds its {LOCK_NAME}); "
                         "resume it once that process has ended") from None
    handle.truncate(0)
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return handle


class RunFolder:
    """One run's folder: checkpoints, partial and final tables, config.json (see the module docstring).
    `path` is the wanted folder (new_run_path) or, with resume, the existing one; writer False: another
    process writes (torchrun), this one never creates, locks or writes anything."""

    def __init__(self, path, config, device, started, resume=False, writer=True, processes=1):
        self._path, self._final = Path(path), resume or not writer
        self.writer, self.config, self.device, self.started = writer, config, device, started
        self.processes, self._lock = processes, None
        if resume and writer:
            self._lock = _lock_run(self._path)
            read_run_config(self._path)  # under the lock: a run that completed meanwhile is refused
        self.rows = read_partial_rows(self._path) if resume else []

    @property
    def path(self):
        """The run's folder. A new run's writer creates it here, on first use: if another run has just
        taken the wanted name, it is <name>_2 (and so on), so read the path only when about to use it."""
        if not self._final:
            self._path, self._final = _create_new_folder(self._path), True
            self._lock = _lock_run(self._path)  # a new folder: no other run can hold it
        return self._path

    def check_finished_data(self, data):
        """--resume: refuse (one line) when a class already in the table was computed on other images than
        it has now (`data`: {class: fingerprint}, see add_rows); its row would sit beside rows of the new
        data. A table of an older version records no fingerprint: that is said, not checked."""
        changed = sorted({row["class"] for row in self.rows
                          if row.get("data") is not None and data.get(row["class"], row["data"]) != row["data"]})
        if changed:
            raise ValueError(f"--resume {self._path}: the images of {', '.join(changed)} changed since "
                             f"{'its' if len(changed) == 1 else 'their'} row was computed (files added, removed "
                             "or resized); start a new run for the changed data")
        if any(row.get("data") is None and row["class"] in data for row in self.rows):
            print(f"--resume {self._path}: its table records no fingerprint of the data (an older version): "
                  "the finished classes are not checked against the images")

    def finished(self, name):
        """Whether rows for the model `name` are already there."""
        return any(row.get("model") == name for row in self.rows)

    def _write_config(self, status, results=None):
        if not self.writer:
            return
        meta = {"status": status, "results": results, "config": self.config,
                **run_metadata(self.device, self.started, self.processes)}
        text = json.dumps(meta, indent=2, default=str)
        atomic_write(self.path / "config.json", lambda tmp: Path(tmp).write_text(text))

    def remove_checkpoint(self, name):
        """Delete checkpoints/<name>.pt (a training snapshot, once training ends) if there is one."""
        if self.writer and self._final:
            (self._path / "checkpoints" / f"{name}.pt").unlink(missing_ok=True)

    def save_checkpoint(self, state, name):
        if not self.writer:
            return None
        if not (self.path / "config.json").exists():  # first: a run killed after its first checkpoint is resumable
            self._write_config("partial")
        return save_checkpoint(state, self.path / "checkpoints" / f"{name}.pt")

    def add_rows(self, rows, data=None):
        """Keep the rows of one finished model and write the table so far (results.partial.csv). `data`
        ({class: fingerprint of every image the row is computed on}) is recorded in each class's row, for
        check_finished_data; the final table leaves it out."""
        self.rows += [{**row, "data": data.get(row["class"])} for row in rows] if data else rows
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
        if self._lock is not None:  # a --resume waiting for it now finds the run complete
            (self.path / LOCK_NAME).unlink(missing_ok=True)
            self._lock.close()
            self._lock = None
        return csv_path

"""Tables over seeds from finished runs: mean [min-max] of each row, and the absolute-unified gap per seed.

    python benchmarks/seed_table.py /tmp/ev/runs                    # every results.csv below the folder(s)
    python benchmarks/seed_table.py runA runB runC --metrics I-AUROC,P-AUROC,AUPRO --classes
    python benchmarks/seed_table.py /tmp/ev/runs --summary          # one table of every group, one gap table

Runs are grouped by what they trained (method, setting, encoder, weights, input size, iterations or epochs,
read from each run's config.json); a group's runs should differ only in --seed. For each group it prints the
`mean` and `mixed` rows (every class row too with --classes) as mean [min-max] over its seeds, and for
unified groups the gap `mean` - `mixed` of each seed per alignment: how much of the `none` gap an alignment
leaves, seed by seed. With --summary it prints instead one table, a row per group and alignment (`mean` and
`mixed` of each metric), and one table of the first metric's gap, a row per group and seed, a column per
alignment. Nothing is selected: every run found is counted.
"""
import argparse
import json
import sys
from pathlib import Path

import pandas as pd

GROUP_KEYS = ("method", "setting", "encoder", "weights", "image_size", "length")


def run_table(csv_path):
    """One run's results.csv with its configuration's group keys and seed as columns."""
    config = json.loads((csv_path.parent / "config.json").read_text())["config"]
    table = pd.read_csv(csv_path)
    if "align" not in table:
        table["align"] = "none"
    table["align"] = table["align"].fillna("none")
    table["method"], table["setting"], table["weights"] = config["method"], config["setting"], config["weights"]
    table["encoder"] = f"vit_{config['vit']}" if config["method"] == "dinomaly" else config["backbone"]
    table["image_size"] = config.get("crop_size") or config["image_size"]
    table["length"] = (f"{config['epochs']} epochs" if config["setting"] == "separate"
                       else f"{config['iters']} iters")
    table["seed"], table["run"] = config["seed"], str(csv_path.parent)
    return table


def spread(values):
    values = values.dropna()
    if values.empty:
        return ""
    if len(values) == 1:
        return f"{values.iloc[0]:.1f}"
    return f"{values.mean():.1f} [{values.min():.1f}-{values.max():.1f}]"


def group_tables(tables, metrics, classes):
    """Markdown blocks, one per group: rows (align, class), a column per metric."""
    blocks = []
    for key, group in pd.concat(tables).groupby(list(GROUP_KEYS), sort=False):
        seeds = sorted(group["seed"].unique())
        title = ", ".join(str(v) for v in key) + f"; seeds {', '.join(map(str, seeds))}"
        if group.groupby("seed")["run"].nunique().max() > 1:
            raise ValueError(f"{title}: two runs with the same seed: {sorted(group['run'].unique())}")
        rows = group if classes else group[group["class"].isin(["mean", "mixed"])]
        lines = [f"**{title}**", "", "| align | class | " + " | ".join(metrics) + " |",
                 "|---|---|" + "---|" * len(metrics)]
        for (align, name), cells in rows.groupby(["align", "class"], sort=False):
            lines.append(f"| {align} | {name} | " + " | ".join(spread(cells[m]) for m in metrics) + " |")
        blocks.append("\n".join(lines))
        if (group["class"] == "mixed").any():
            blocks.append(gap_table(group, metrics))
    return blocks


def gap_table(group, metrics):
    """Per seed and alignment: `mean` - `mixed` of each metric (the absolute-unified gap), and its mean."""
    wide = group[group["class"].isin(["mean", "mixed"])].pivot_table(index=["align", "seed"], columns="class",
                                                                     values=list(metrics), sort=False)
    lines = ["", "Gap `mean` - `mixed`, per seed (" + ", ".join(metrics) + "):", "",
             "| align | " + " | ".join(f"seed {s}" for s in sorted(group["seed"].unique())) + " | mean |",
             "|---|" + "---|" * (group["seed"].nunique() + 1)]
    for align in group["align"].unique():
        gaps = {m: wide.loc[align][(m, "mean")] - wide.loc[align][(m, "mixed")] for m in metrics}
        cells = [" / ".join(f"{gaps[m][s]:.1f}" for m in metrics) for s in gaps[metrics[0]].index]
        lines.append(f"| {align} | " + " | ".join(cells) + " | "
                     + " / ".join(f"{gaps[m].mean():.1f}" for m in metrics) + " |")
    return "\n".join(lines)


METHOD_ORDER = ("noco", "revdist", "recontrast", "uniad", "dinomaly")


def summary_tables(tables, metrics):
    """Two markdown tables over every group: mean [min-max] of `mean` and `mixed` per alignment; the gap per seed.
    Group keys equal in every run are named once above the tables, not repeated in a column."""
    runs = pd.concat(tables)
    for key, group in runs.groupby(list(GROUP_KEYS), sort=False):
        if group.groupby("seed")["run"].nunique().max() > 1:
            raise ValueError(f"{', '.join(map(str, key))}: two runs with the same seed: {sorted(group['run'].unique())}")
    runs["order"] = runs["method"].map({m: i for i, m in enumerate(METHOD_ORDER)}).fillna(len(METHOD_ORDER))
    runs = runs.sort_values(["weights", "order", "setting"], kind="stable")
    shared = [k for k in GROUP_KEYS if runs[k].nunique() == 1 and k != "weights"]
    keys = ["weights"] + [k for k in GROUP_KEYS if k not in shared + ["weights"]]
    header = "Every row: " + ", ".join(f"{k} {runs[k].iloc[0]}" for k in shared) if shared else ""
    columns = [f"{row} {m}" for m in metrics for row in ("mean", "mixed")]
    lines = ["| " + " | ".join(keys) + " | align | seeds | " + " | ".join(columns) + " |",
             "|" + "---|" * (len(keys) + 2 + len(columns))]
    gaps = {}
    for key, group in runs.groupby(keys + ["align"], sort=False):
        seeds = ",".join(map(str, sorted(group["seed"].unique())))
        cells = [spread(group[group["class"] == row][m]) for m in metrics for row in ("mean", "mixed")]
        lines.append("| " + " | ".join(map(str, key)) + f" | {seeds} | " + " | ".join(cells) + " |")
        by_seed = group.pivot_table(index="seed", columns="class", values=metrics[0])
        if "mixed" in by_seed:
            for seed, gap in (by_seed["mean"] - by_seed["mixed"]).items():
                gaps.setdefault((*key[:-1], seed), {})[key[-1]] = gap
    aligns = list(dict.fromkeys(a for row in gaps.values() for a in row))
    gap_lines = [f"Gap `mean` - `mixed` in {metrics[0]}, per seed:", "",
                 "| " + " | ".join(keys) + " | seed | " + " | ".join(aligns) + " |",
                 "|" + "---|" * (len(keys) + 1 + len(aligns))]
    for key, row in gaps.items():
        gap_lines.append("| " + " | ".join(map(str, key)) + " | "
                         + " | ".join(f"{row[a]:.1f}" if a in row else "" for a in aligns) + " |")
    return [b for b in (header, "\n".join(lines), "\n".join(gap_lines) if gaps else "") if b]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="run folders, results.csv files or folders holding runs")
    parser.add_argument("--metrics", default="I-AUROC,P-AUROC,AUPRO")
    parser.add_argument("--classes", action="store_true", help="print every class row, not only mean and mixed")
    parser.add_argument("--summary", action="store_true", help="one table of every group and one gap table")
    args = parser.parse_args(argv)
    csvs = []
    for path in map(Path, args.paths):
        if path.is_file():
            csvs.append(path)
        elif path.is_dir():
            csvs.extend(sorted(path.rglob("results.csv")))
        else:
            sys.exit(f"error: {path}: no such file or folder")
    if not csvs:
        sys.exit(f"error: no results.csv under {', '.join(args.paths)}")
    metrics = args.metrics.split(",")
    try:
        tables = [run_table(csv) for csv in csvs]
        unknown = [m for m in metrics if m not in tables[0]]
        if unknown:
            sys.exit(f"error: --metrics {','.join(unknown)}: not a column of {csvs[0]}")
        blocks = summary_tables(tables, metrics) if args.summary else group_tables(tables, metrics, args.classes)
        print("\n\n".join(blocks))
    except (OSError, KeyError, ValueError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()

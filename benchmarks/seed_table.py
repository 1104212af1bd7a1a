"""Tables over seeds from finished runs: mean [min-max] of each row, and the absolute-unified gap per seed.

    python benchmarks/seed_table.py /tmp/ev/runs                    # every results.csv below the folder(s)
    python benchmarks/seed_table.py runA runB runC --metrics I-AUROC,P-AUROC,AUPRO --classes
    python benchmarks/seed_table.py /tmp/ev/runs --summary          # one table of every group, gaps, claims

Runs are grouped by what they trained (method, setting, encoder, weights, input size, iterations or epochs, and the
data: --dataset and --data_path's folder name, a name ending in `_s<seed>` of the run's own seed, as
make_mixture.py --balanced --seed draws one per seed, read as `_s*`; all read from each run's config.json); a
group's runs should differ only in --seed. Two runs of one seed in a group (say run A with the default heads and
run B with other head options on A's base model through --checkpoint) are merged: rows equal in every value (B's
`none` block) are kept once, and a seed, alignment and class that still occurs twice is refused in one line. An
alignment's rows are labelled with the head options the run set away from their defaults (LABEL_OPTIONS, each for
the alignments it applies to, the default the method's own where its preset sets one, e.g. UniAD's --cada_beta 10):
`cada [cada_pool=median]`, `cluster [cluster_k=calibration]`; `none` and `class_aware` never. For each group it
prints the `mean`, `mixed` and `ideal` rows (every class row too with --classes) as mean [min-max] over its seeds,
and for unified groups, per seed and alignment: the gap `mean` - `mixed`; what is left, `ideal` - `mixed` (`ideal`
is the perfect-alignment reference of each alignment block, see utils.metrics.perfect_alignment_reference); and the
fraction of the `none` block's achievable gap that the alignment closes, (`mixed` - `mixed` of none) / (`ideal` of
none - `mixed` of none): 0 for `none` itself, 1 where `mixed` reaches the perfect-alignment value (empty without
`ideal` rows, which runs before it lack, or where `none` has nothing to close). With --summary it prints instead
one table, a row per group and alignment (`mean` and `mixed` of each metric), and for the first metric one table
each of the gap, what is left and the fraction closed, a row per group and seed, a column per alignment; then two
claims tables of the first metric, `none` left out: per group and alignment, the fraction closed as its minimum
over the seeds and the count of seeds where it is >= 0.90 (of the seeds where it is defined), and the count of
seeds where some class drops by more than 2 points against the same class of that seed's `none` block; and per
group and seed, each alignment's largest such drop, none's value - the alignment's, with the class (classes: the
rows other than mean, mixed and ideal). Nothing is selected: every run found is counted.
"""
import argparse
import json
import re
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from method_facts import METHOD_NAMES, encoder_name  # noqa: E402

POOLED_CLASSES = ["mean", "mixed", "ideal"]
GROUP_KEYS = ("method", "setting", "encoder", "weights", "image_size", "length", "data")
CLOSED_ENOUGH, DROP_LIMIT = 0.9, 2.0  # the claims tables: a fraction closed counted from, a class drop counted above

# models.cada.ALIGNMENTS without torch (tests/test_seed_table.py checks them against it): the kinds with a trained
# head, those of them trained by regression (SmoothL1, --cada_beta), and the one that clusters the head input
TRAINED_HEADS, REGRESSION_HEADS, FEATURE_CLUSTERS = ("cada", "cada_sigma", "classifier"), ("cada", "cada_sigma"), \
    ("cluster",)
# train_mvtec.py's alignment options (those that train the head only) with their defaults and the alignments each
# applies to; a row of an alignment run with another value is labelled with it (align_label)
LABEL_OPTIONS = {"align_input": ("bottleneck", TRAINED_HEADS + FEATURE_CLUSTERS),
                 "cada_iters": (5000, TRAINED_HEADS), "cada_lr": (0.05, TRAINED_HEADS),
                 "cada_momentum": (0.9, TRAINED_HEADS), "cada_weight_decay": (1e-4, TRAINED_HEADS),
                 "cada_beta": (0.1, REGRESSION_HEADS), "cada_batch_size": (16, TRAINED_HEADS),
                 "cada_convs": (1, TRAINED_HEADS), "cada_linears": (2, TRAINED_HEADS),
                 "cada_dropout": (0.25, TRAINED_HEADS), "cada_dropout_at": ("every_linear", TRAINED_HEADS),
                 "cada_pool": ("mean", TRAINED_HEADS), "cada_standardise": (False, TRAINED_HEADS),
                 "cluster_k": ("silhouette", FEATURE_CLUSTERS)}
METHOD_HEAD_PRESETS = {"uniad": {"cada_beta": 10.0, "cada_iters": 20000}}  # models.METHODS presets of these options


def align_label(align, config):
    """An alignment's row label: its name, then each option of LABEL_OPTIONS that applies to it and that the run's
    config.json records with a value other than its default for the run's method, e.g. `cada [cada_pool=median]`;
    an option the config.json lacks (a run from before it) had its default."""
    defaults = {**{option: default for option, (default, _) in LABEL_OPTIONS.items()},
                **METHOD_HEAD_PRESETS.get(config["method"], {})}
    changed = [f"{option}={config[option]}" for option, (_, aligns) in LABEL_OPTIONS.items()
               if align in aligns and option in config and config[option] != defaults[option]]
    return f"{align} [{', '.join(changed)}]" if changed else align


def data_name(config):
    """The run's data as a group key: --dataset and the folder name of --data_path, a name ending in `_s<seed>`
    of the run's own seed (a data set drawn per seed, as make_mixture.py --balanced --seed writes them) as `_s*`,
    so that the seeds of one kind of draw fall in one group."""
    name = re.sub(rf"_s{config['seed']}$", "_s*", Path(config.get("data_path", "")).name)
    return f"{config.get('dataset', '')} {name}".strip()


def run_table(csv_path):
    """One run's results.csv with its configuration's group keys and seed as columns, and each alignment row's
    `align` its label (align_label)."""
    config = json.loads((csv_path.parent / "config.json").read_text())["config"]
    table = pd.read_csv(csv_path)
    if "align" not in table:
        table["align"] = "none"
    table["align"] = table["align"].fillna("none").map(lambda align: align_label(align, config))
    table["method"], table["setting"], table["weights"] = config["method"], config["setting"], config["weights"]
    table["encoder"] = encoder_name(config)
    table["image_size"] = config.get("crop_size") or config["image_size"]
    table["length"] = (f"{config['epochs']} epochs" if config["setting"] == "separate"
                       else f"{config['iters']} iters")
    table["data"] = data_name(config)
    table["seed"], table["run"] = config["seed"], str(csv_path.parent)
    return table


def spread(values):
    values = values.dropna()
    if values.empty:
        return ""
    if len(values) == 1:
        return f"{values.iloc[0]:.1f}"
    return f"{values.mean():.1f} [{values.min():.1f}-{values.max():.1f}]"


def merged_runs(tables):
    """The runs' rows in one frame, those of several runs of one seed in one group merged: rows equal in every
    column but `run` (the `none` block of two runs on one base model) kept once; a (seed, align, class) of a group
    that still occurs twice (two different runs of one seed) is refused, naming the runs."""
    rows = pd.concat(tables, ignore_index=True)
    rows = rows.drop_duplicates(subset=[column for column in rows if column != "run"])
    keys = [*GROUP_KEYS, "seed", "align", "class"]
    twice = rows[rows.duplicated(keys, keep=False)]
    if not twice.empty:
        (*group, seed, align, name), same = next(iter(twice.groupby(keys, sort=False)))
        raise ValueError(f"{', '.join(map(str, group))}: two runs with the same seed: seed {seed}, {align} "
                         f"{name} differs between {sorted(same['run'])}")
    return rows


def group_tables(tables, metrics, classes):
    """Markdown blocks, one per group: rows (align, class), a column per metric."""
    blocks = []
    for key, group in merged_runs(tables).groupby(list(GROUP_KEYS), sort=False):
        seeds = sorted(group["seed"].unique())
        title = ", ".join(str(v) for v in key) + f"; seeds {', '.join(map(str, seeds))}"
        rows = group if classes else group[group["class"].isin(POOLED_CLASSES)]
        lines = [f"**{title}**", "", "| align | class | " + " | ".join(metrics) + " |",
                 "|---|---|" + "---|" * len(metrics)]
        for (align, name), cells in rows.groupby(["align", "class"], sort=False):
            lines.append(f"| {align} | {name} | " + " | ".join(spread(cells[m]) for m in metrics) + " |")
        blocks.append("\n".join(lines))
        if (group["class"] == "mixed").any():
            blocks.append(gap_table(group, metrics))
    return blocks


def gap_frame(group, metric):
    """Per (align, seed) of one group: the gap `mean` - `mixed`, what is `left` (`ideal` - `mixed`) and the
    fraction of the `none` block's achievable gap `closed`, (mixed - mixed of none) / (ideal of none - mixed of
    none); NaN where a row is missing or none's achievable gap is not positive."""
    rows = group[group["class"].isin(POOLED_CLASSES)]
    wide = rows.pivot_table(index=["align", "seed"], columns="class", values=metric, sort=False, dropna=False)
    wide = wide.reindex(columns=POOLED_CLASSES)
    seeds = wide.index.get_level_values("seed")
    none = wide.xs("none", level="align") if "none" in wide.index.get_level_values("align") else wide.iloc[:0, :]
    mixed_none = pd.Series(none["mixed"].reindex(seeds).to_numpy(), index=wide.index)
    achievable = pd.Series(none["ideal"].reindex(seeds).to_numpy(), index=wide.index) - mixed_none
    return pd.DataFrame({"gap": wide["mean"] - wide["mixed"], "left": wide["ideal"] - wide["mixed"],
                         "closed": (wide["mixed"] - mixed_none) / achievable.where(achievable > 0)})


def class_drops(group, metric):
    """Per (align, seed) of one group, `none` left out: the largest drop of a class row (a class not in
    POOLED_CLASSES) against the same class in the `none` block of that seed, none's value - the alignment's
    (`drop`, in points), and that class (`class`); empty without class rows or a `none` block."""
    rows = group[~group["class"].isin(POOLED_CLASSES)]
    if not (rows["align"] == "none").any():
        no_rows = pd.MultiIndex.from_arrays([[], []], names=["align", "seed"])
        return pd.DataFrame({"drop": [], "class": []}, index=no_rows)
    wide = rows.pivot_table(index=["align", "seed"], columns="class", values=metric, sort=False)
    none = wide.xs("none", level="align").reindex(wide.index.get_level_values("seed"))
    drops = (pd.DataFrame(none.to_numpy(), index=wide.index, columns=wide.columns) - wide).drop(index="none")
    drops = drops.dropna(how="all")
    return pd.DataFrame({"drop": drops.max(axis=1).round(9), "class": drops.idxmax(axis=1)})  # 64.01 - 62.01 = 2


def claims_tables(runs, keys, metric):
    """Two markdown tables in `metric` over the groups (`keys`) of `runs`, `none` left out: per group and
    alignment, the fraction of the `none` block's achievable gap closed (gap_frame) as its minimum over seeds and
    the count of seeds where it is >= CLOSED_ENOUGH, and the count of seeds where the largest class drop against
    `none` (class_drops) exceeds DROP_LIMIT points; per group and seed, that largest drop of each alignment."""
    claims, drops_by_seed = [], {}  # drops_by_seed: {(*key, seed): {align: "drop (class)"}}
    for key, group in runs.groupby(keys, sort=False):
        if not (group["class"] == "mixed").any():
            continue
        closed, drops = gap_frame(group, metric)["closed"], class_drops(group, metric)
        drops_by_seed.update({(*key, seed): {} for seed in sorted(group["seed"].unique())})
        for align in group["align"].unique():
            if align == "none":
                continue
            fractions = closed.loc[align].dropna().round(9)  # 0.9 not read as 0.8999999999999999
            closed_cell = (f"{fractions.min():.2f} min, {(fractions >= CLOSED_ENOUGH).sum()} of {len(fractions)} "
                           f"seeds >= {CLOSED_ENOUGH:.2f}" if len(fractions) else "")
            largest = drops.loc[align] if align in drops.index.get_level_values("align") else drops.iloc[:0]
            drop_cell = (f"{(largest['drop'] > DROP_LIMIT).sum()} of {len(largest)} seeds > {DROP_LIMIT:.1f}"
                         if len(largest) else "")
            claims.append("| " + " | ".join(map(str, key)) + f" | {align} | {closed_cell} | {drop_cell} |")
            for seed, row in largest.iterrows():
                drops_by_seed.setdefault((*key, seed), {})[align] = f"{row['drop']:.1f} ({row['class']})"
    if not claims:
        return []
    blocks = ["\n".join([f"Claims in {metric}, per alignment: the fraction of the `none` block's achievable gap "
                         f"closed, and the seeds where a class drops by more than {DROP_LIMIT:.1f} against `none`:",
                         "", "| " + " | ".join(keys) + " | align | fraction closed | largest class drop |",
                         "|" + "---|" * (len(keys) + 3), *claims])]
    drops_by_seed = {key: row for key, row in drops_by_seed.items() if row}
    if drops_by_seed:
        aligns = list(dict.fromkeys(a for row in drops_by_seed.values() for a in row))
        blocks.append("\n".join(
            [f"Largest drop of a class against the same class of `none` (none - align) in {metric}, per seed:", "",
             "| " + " | ".join(keys) + " | seed | " + " | ".join(aligns) + " |",
             "|" + "---|" * (len(keys) + 1 + len(aligns)),
             *("| " + " | ".join(map(str, key)) + " | " + " | ".join(row.get(a, "") for a in aligns) + " |"
               for key, row in drops_by_seed.items())]))
    return blocks


GAP_TITLES = {"gap": "Gap `mean` - `mixed`", "left": "What is left, `ideal` - `mixed`",
              "closed": "Fraction of the `none` block's achievable gap closed, "
                        "(`mixed` - `mixed` of none) / (`ideal` of none - `mixed` of none)"}


def cell(value, kind):
    return "" if pd.isna(value) else f"{value:.2f}" if kind == "closed" else f"{value:.1f}"


def gap_table(group, metrics):
    """Per seed and alignment, and their mean over seeds: the gap `mean` - `mixed` of each metric, and where the
    runs have `ideal` rows, what is left and the fraction closed (gap_frame) of each metric that has them."""
    frames = {m: gap_frame(group, m) for m in metrics}
    seeds = sorted(group["seed"].unique())
    with_ideal = [m for m in metrics if frames[m]["left"].notna().any()]
    lines = []
    for kind, shown in (("gap", metrics), ("left", with_ideal), ("closed", with_ideal)):
        if not shown:
            continue
        lines += ["", f"{GAP_TITLES[kind]}, per seed ({', '.join(shown)}):", "",
                  "| align | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |",
                  "|---|" + "---|" * (len(seeds) + 1)]
        for align in group["align"].unique():
            values = {m: frames[m].loc[align, kind] for m in shown}
            cells = [" / ".join(cell(values[m].get(s), kind) for m in shown) for s in seeds]
            lines.append(f"| {align} | " + " | ".join(cells) + " | "
                         + " / ".join(cell(values[m].mean(), kind) for m in shown) + " |")
    return "\n".join(lines)


def summary_tables(tables, metrics):
    """Markdown tables over every group: mean [min-max] of `mean` and `mixed` per alignment; per seed, the gap and,
    where the runs have `ideal` rows, what is left and the fraction closed (gap_frame), of the first metric.
    Group keys equal in every run are named once above the tables, not repeated in a column."""
    runs = merged_runs(tables)
    runs["order"] = runs["method"].map({m: i for i, m in enumerate(METHOD_NAMES)}).fillna(len(METHOD_NAMES))
    runs = runs.sort_values(["weights", "order", "setting"], kind="stable")
    shared = [k for k in GROUP_KEYS if runs[k].nunique() == 1 and k != "weights"]
    keys = ["weights"] + [k for k in GROUP_KEYS if k not in shared + ["weights"]]
    header = "Every row: " + ", ".join(f"{k} {runs[k].iloc[0]}" for k in shared) if shared else ""
    columns = [f"{row} {m}" for m in metrics for row in ("mean", "mixed")]
    lines = ["| " + " | ".join(keys) + " | align | seeds | " + " | ".join(columns) + " |",
             "|" + "---|" * (len(keys) + 2 + len(columns))]
    for key, group in runs.groupby(keys + ["align"], sort=False):
        seeds = ",".join(map(str, sorted(group["seed"].unique())))
        cells = [spread(group[group["class"] == row][m]) for m in metrics for row in ("mean", "mixed")]
        lines.append("| " + " | ".join(map(str, key)) + f" | {seeds} | " + " | ".join(cells) + " |")
    gaps = {kind: {} for kind in GAP_TITLES}  # {kind: {(*key, seed): {align: value}}}
    for key, group in runs.groupby(keys, sort=False):
        if (group["class"] == "mixed").any():
            for (align, seed), row in gap_frame(group, metrics[0]).iterrows():
                for kind in GAP_TITLES:
                    gaps[kind].setdefault((*key, seed), {})[align] = row[kind]
    blocks = [header, "\n".join(lines)]
    for kind, by_seed in gaps.items():
        if not by_seed or (kind != "gap" and all(pd.isna(v) for row in by_seed.values() for v in row.values())):
            continue
        aligns = list(dict.fromkeys(a for row in by_seed.values() for a in row))
        gap_lines = [f"{GAP_TITLES[kind]} in {metrics[0]}, per seed:", "",
                     "| " + " | ".join(keys) + " | seed | " + " | ".join(aligns) + " |",
                     "|" + "---|" * (len(keys) + 1 + len(aligns))]
        for key, row in by_seed.items():
            gap_lines.append("| " + " | ".join(map(str, key)) + " | "
                             + " | ".join(cell(row.get(a), kind) for a in aligns) + " |")
        blocks.append("\n".join(gap_lines))
    blocks += claims_tables(runs, keys, metrics[0])
    return [b for b in blocks if b]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="run folders, results.csv files or folders holding runs")
    parser.add_argument("--metrics", default="I-AUROC,P-AUROC,AUPRO")
    parser.add_argument("--classes", action="store_true", help="print every class row, not only mean and mixed")
    parser.add_argument("--summary", action="store_true",
                        help="one table of every group, the gap tables and the claims tables")
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

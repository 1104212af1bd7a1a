"""The alignment statistics of one or more runs as a markdown table (for benchmarks/README.md).

    python benchmarks/alignment_table.py results/<run>/alignment_stats.csv [more runs' files ...]
    python benchmarks/alignment_table.py --fit runs/*/*/alignment_stats.csv    # one table over many runs

train_mvtec.py --align ... writes alignment_stats.csv beside its table: per class and alignment, the
true u and gamma of the held-out normal test images beside each alignment's estimates, the spread over
those images of the true per-image u and of its estimate, their correlation, and (runs since these columns
exist) how well the estimates separate the class's anomalous test images and the error of u on training and
normal test images, and the clusters' k. This prints them,
one block per file, with the run folder's name as the heading. With --fit, one table over every file instead: per
method, data and alignment (labelled as seed_table.py labels it, e.g. `cada [cada_pool=median]`), the seconds it
took to fit and train (`fit_seconds`, mean [min-max] over the runs), and for `cluster` the k and the adjusted Rand
index against the class labels of each run, in seed order.
"""
import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed_table import align_label, data_name  # noqa: E402

COLUMNS = {"align": "align", "class": "class", "u_test_normal": "true u", "u_estimated": "u est.",
           "gamma_test_normal": "true gamma", "gamma_estimated": "gamma est.",
           "u_test_normal_std": "true u spread", "u_estimated_std": "u est. spread", "u_correlation": "corr.",
           "u_anomaly_auroc": "u vs anomaly", "gamma_anomaly_auroc": "gamma vs anomaly",
           "u_train_error": "u error train", "u_test_error": "u error test", "clusters": "k",
           "fit_seconds": "fit s"}


def markdown(table):
    shown = table[[c for c in COLUMNS if c in table]].rename(columns=COLUMNS)  # older runs lack the later columns
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    for row in shown.itertuples(index=False):
        lines.append("| " + " | ".join(("" if v != v else f"{v:.4g}") if isinstance(v, float) else str(v) for v in row)
                     + " |")  # NaN: not defined there (a constant estimate has no correlation)
    return "\n".join(lines)


def fit_table(paths):
    """Markdown: a row per (method, data, alignment label) over the runs of `paths` (see the module docstring)."""
    rows = []
    for path in paths:
        config = json.loads((path.parent / "config.json").read_text())["config"]
        for align, stats in pd.read_csv(path, dtype={"class": str}).groupby("align", sort=False):
            first = stats.iloc[0]
            rows.append({"method": config["method"], "data": data_name(config), "seed": config["seed"],
                         "align": align_label(align, config), "seconds": first.get("fit_seconds", float("nan")),
                         "k": first.get("clusters", float("nan")), "ari": first.get("cluster_ari", float("nan"))})
    table = pd.DataFrame(rows).sort_values("seed", kind="stable")
    lines = ["| method | data | align | fit seconds | k per seed | ARI per seed |", "|---|---|---|---|---|---|"]
    for (method, data, align), group in table.groupby(["method", "data", "align"], sort=False):
        seconds = group["seconds"].dropna()
        fit = f"{seconds.mean():.1f} [{seconds.min():.1f}-{seconds.max():.1f}]" if len(seconds) else ""
        k = " ".join(str(int(v)) for v in group["k"].dropna())
        ari = " ".join(f"{v:.2f}" for v in group["ari"].dropna())
        lines.append(f"| {method} | {data} | {align} | {fit} | {k} | {ari} |")
    return "\n".join(lines)


def main(paths):
    fit = bool(paths) and paths[0] == "--fit"
    paths = paths[1:] if fit else paths
    if not paths:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    for path in map(Path, paths):
        if not path.is_file():
            print(f"alignment_table.py: {path}: no such file (expected a run's alignment_stats.csv)", file=sys.stderr)
            return 2
    if fit:
        print(fit_table(list(map(Path, paths))))
        return 0
    for path in map(Path, paths):
        print(f"**{path.parent.name}**\n\n{markdown(pd.read_csv(path, dtype={'class': str}))}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Our result table beside the published numbers, metric by metric, in points (ours - paper).

    python benchmarks/compare_paper.py results/<run>/results.csv
    python benchmarks/compare_paper.py my_table.csv --dataset mvtec --method revdist   # no config.json beside it
    python benchmarks/compare_paper.py results/<run>/results.csv --paper_numbers other_numbers.csv

The dataset and method come from the run's config.json (beside the CSV); --dataset and --method
override them. Each of our rows (setting, align, class) and metric is matched with every published
row of the same dataset and method; a number printed in several tables is shown once per table.
Metrics our table leaves empty are not compared.

The published numbers (benchmarks/paper_numbers.csv, one number a row, in %) are typed from:
  NoCo  the NoCo paper's result tables (published as figures in its public repository):
        Table II (mean image AUROC per dataset) and Table III (MVTec AD image AUROC per class)
  CADA  "Absolute-Unified Multi-Class Anomaly Detection via Class-Agnostic Distribution Alignment":
        Tables 1 (MVTec AD), 2 (VisA), 4 (CADA variants) and 5 (mean/std statistics, with noisy BTAD)
In the CADA paper RevDist+CADA's MVTec AD absolute-unified P-AUROC/P-AP is 95.6/53.1 in Table 1 but
96.0/54.7 in Tables 4 and 5; both are kept.

As a function: compare(results, dataset, method) -> DataFrame (results: a CSV path or a DataFrame).
"""
import argparse
import json
import sys
from pathlib import Path

import pandas as pd

PAPER_NUMBERS = Path(__file__).with_name("paper_numbers.csv")
METRICS = ["I-AUROC", "I-AP", "P-AUROC", "P-AP"]
KEYS = ["setting", "align", "class"]
COLUMNS = ["source", "table", *KEYS, "metric", "ours", "paper", "diff"]


def read_table(path, required, what):
    """A CSV as strings-and-numbers; ValueError (one line) when it is missing, unreadable or lacks columns."""
    if not Path(path).is_file():
        raise ValueError(f"{path}: no such file (expected {what})")
    try:
        table = pd.read_csv(path, dtype={k: str for k in ("source", "table", "align", "class", "setting")})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a readable CSV (expected {what}): {str(error).strip()}") from None
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: expected {what} with columns {', '.join(required)}; missing {', '.join(missing)}")
    return table


def compare(results, dataset, method, paper_numbers=None):
    """One row per (published table, our row, metric) that both have: source, table, setting, align,
    class, metric, ours, paper, diff (ours - paper in points, one decimal). Empty when nothing matches."""
    ours = results.copy() if isinstance(results, pd.DataFrame) else read_table(
        results, ["setting", "class", *METRICS], "a results table")
    paper = read_table(paper_numbers or PAPER_NUMBERS,
                       ["source", "table", "dataset", "method", *KEYS, "metric", "value"], "published numbers")
    if "align" not in ours.columns:
        ours["align"] = "none"
    for frame in (ours, paper):
        frame["align"] = frame["align"].fillna("none")
        frame["class"] = frame["class"].astype(str)
    present = [m for m in METRICS if m in ours.columns]
    long = ours.melt(id_vars=KEYS, value_vars=present, var_name="metric", value_name="ours").dropna(subset=["ours"])
    paper = paper[(paper["dataset"] == dataset) & (paper["method"] == method)].rename(columns={"value": "paper"})
    table = long.merge(paper, on=[*KEYS, "metric"], how="inner")
    table["diff"] = (table["ours"].astype(float) - table["paper"].astype(float)).round(1) + 0.0  # no -0.0
    order = {m: i for i, m in enumerate(METRICS)}
    table = table.sort_values(["source", "table", "setting", "align", "class", "metric"],
                              key=lambda s: s.map(order) if s.name == "metric" else s, kind="stable")
    return table[COLUMNS].reset_index(drop=True)


def run_config(csv_path):
    """(dataset, method) from config.json beside the CSV, or None when there is none."""
    path = Path(csv_path).parent / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())["config"]
        return config["dataset"], config.get("method", "noco")
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: expected JSON with a 'config' dict holding 'dataset' ({error!r})") from None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", help="a results CSV written by train_mvtec.py, train_cifar10.py or train_mnist.py")
    parser.add_argument("--paper_numbers", default=str(PAPER_NUMBERS), help="the published numbers (long CSV)")
    parser.add_argument("--dataset", help="the run's dataset (default: from config.json beside the CSV)")
    parser.add_argument("--method", help="the run's method (default: from config.json beside the CSV)")
    args = parser.parse_args(argv)
    try:
        if not Path(args.results).is_file():
            raise ValueError(f"{args.results}: no such file (expected a results table)")
        config = None if args.dataset and args.method else run_config(args.results)
        if config is None and not (args.dataset and args.method):
            raise ValueError(f"{Path(args.results).parent / 'config.json'}: no such file; "
                             "pass --dataset and --method to say what the table is")
        dataset, method = args.dataset or config[0], args.method or config[1]
        table = compare(args.results, dataset, method, args.paper_numbers)
    except ValueError as error:
        print(f"compare_paper.py: {error}", file=sys.stderr)
        return 2
    if table.empty:
        print(f"no published numbers for dataset {dataset} with method {method} "
              f"match this table ({args.results})")
        return 0
    print(f"{args.results}: dataset {dataset}, method {method}; diff = ours - paper, in points")
    print(table.to_string(index=False, formatters={"ours": "{:.2f}".format, "paper": "{:.1f}".format,
                                                  "diff": "{:+.1f}".format}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The alignment statistics of one or more runs as a markdown table (for benchmarks/README.md).

    python benchmarks/alignment_table.py results/<run>/alignment_stats.csv [more runs' files ...]

train_mvtec.py --align ... writes alignment_stats.csv beside its table: per class and alignment, the
true u and gamma of the held-out normal test images beside each alignment's estimates, the spread over
those images of the true per-image u and of its estimate, their correlation, and (runs since these columns
exist) how well the estimates separate the class's anomalous test images and the error of u on training and
normal test images, and the clusters' k. This prints them,
one block per file, with the run folder's name as the heading.
"""
import sys
from pathlib import Path

import pandas as pd

COLUMNS = {"align": "align", "class": "class", "u_test_normal": "true u", "u_estimated": "u est.",
           "gamma_test_normal": "true gamma", "gamma_estimated": "gamma est.",
           "u_test_normal_std": "true u spread", "u_estimated_std": "u est. spread", "u_correlation": "corr.",
           "u_anomaly_auroc": "u vs anomaly", "gamma_anomaly_auroc": "gamma vs anomaly",
           "u_train_error": "u error train", "u_test_error": "u error test", "clusters": "k"}


def markdown(table):
    shown = table[[c for c in COLUMNS if c in table]].rename(columns=COLUMNS)  # older runs lack the later columns
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    for row in shown.itertuples(index=False):
        lines.append("| " + " | ".join(("" if v != v else f"{v:.4g}") if isinstance(v, float) else str(v) for v in row)
                     + " |")  # NaN: not defined there (a constant estimate has no correlation)
    return "\n".join(lines)


def main(paths):
    if not paths:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    for path in map(Path, paths):
        if not path.is_file():
            print(f"alignment_table.py: {path}: no such file (expected a run's alignment_stats.csv)", file=sys.stderr)
            return 2
        print(f"**{path.parent.name}**\n\n{markdown(pd.read_csv(path, dtype={'class': str}))}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

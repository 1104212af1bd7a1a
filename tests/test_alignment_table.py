"""benchmarks/alignment_table.py --fit: fitting seconds, k and ARI of many runs' alignment_stats.csv in one table,
the alignments labelled by their head options as seed_table.py labels them."""
import json

from benchmarks.alignment_table import main
from tests.test_seed_table import CONFIG


def write_stats(folder, seed, rows, **config):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"config": {**CONFIG, "seed": seed, **config}}))
    lines = ["model,align,class,u_test_normal,fit_seconds,clusters,cluster_ari"]
    lines += [",".join(map(str, row)) for row in rows]
    (folder / "alignment_stats.csv").write_text("\n".join(lines) + "\n")


def test_fit_gives_mean_min_max_seconds_and_each_seeds_k_and_ari(tmp_path, capsys):
    write_stats(tmp_path / "a1", 1, [("unified", "cada", "brick", 0.5, 20.0, "", ""),
                                     ("unified", "cada", "grass", 0.4, 20.0, "", ""),
                                     ("unified", "cluster", "brick", 0.5, 0.5, 3, 0.8)])
    write_stats(tmp_path / "a0", 0, [("unified", "cada", "brick", 0.5, 10.0, "", ""),
                                     ("unified", "cluster", "brick", 0.5, 1.5, 2, 0.25)])
    write_stats(tmp_path / "b0", 0, [("unified", "cada", "brick", 0.5, 40.0, "", "")], cada_pool="median")
    assert main(["--fit", *(str(tmp_path / run / "alignment_stats.csv") for run in ("a1", "a0", "b0"))]) == 0
    out = capsys.readouterr().out
    assert "| revdist | mvtec mixture | cada | 15.0 [10.0-20.0] |  |  |" in out  # one row per run, not per class
    assert "| revdist | mvtec mixture | cluster | 1.0 [0.5-1.5] | 2 3 | 0.25 0.80 |" in out  # in seed order
    assert "| revdist | mvtec mixture | cada [cada_pool=median] | 40.0 [40.0-40.0] |  |  |" in out
    assert main(["--fit", str(tmp_path / "nope.csv")]) == 2

"""benchmarks/seed_table.py: mean [min-max] over seeds and the per-seed absolute-unified gap."""
import json

import pytest

from benchmarks.seed_table import main

CONFIG = {"method": "revdist", "setting": "unified", "weights": "imagenet", "backbone": "efficientnet_lite0",
          "vit": "base", "image_size": 128, "crop_size": 0, "iters": 300, "epochs": 10}


def write_run(folder, seed, rows, **config):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"config": {**CONFIG, "seed": seed, **config}}))
    lines = ["setting,align,class,I-AUROC,P-AUROC"] + [",".join(map(str, row)) for row in rows]
    (folder / "results.csv").write_text("\n".join(lines) + "\n")


def unified_rows(mean_none, mixed_none, mixed_cada):
    return [("model-unified", "none", "mean", mean_none, 90.0), ("absolute-unified", "none", "mixed", mixed_none, 80.0),
            ("model-unified", "cada", "mean", mean_none, 90.0), ("absolute-unified", "cada", "mixed", mixed_cada, 85.0)]


def test_seeds_are_summarised_and_the_gap_is_given_per_seed(tmp_path, capsys):
    write_run(tmp_path / "s0", 0, unified_rows(80.0, 70.0, 76.0))
    write_run(tmp_path / "s1", 1, unified_rows(84.0, 72.0, 80.0))
    write_run(tmp_path / "other", 0, unified_rows(50.0, 50.0, 50.0), weights="none")  # a group of its own
    main([str(tmp_path), "--metrics", "I-AUROC,P-AUROC"])
    out = capsys.readouterr().out
    assert "**revdist, unified, efficientnet_lite0, imagenet, 128, 300 iters; seeds 0, 1**" in out
    assert "| none | mean | 82.0 [80.0-84.0] | 90.0 [90.0-90.0] |" in out
    assert "| cada | mixed | 78.0 [76.0-80.0] | 85.0 [85.0-85.0] |" in out
    assert "| none | 10.0 / 10.0 | 12.0 / 10.0 | 11.0 / 10.0 |" in out  # mean - mixed of seed 0, seed 1, their mean
    assert "| cada | 4.0 / 5.0 | 4.0 / 5.0 | 4.0 / 5.0 |" in out
    assert "revdist, unified, efficientnet_lite0, none, 128, 300 iters; seeds 0**" in out


def test_two_runs_of_one_seed_and_bad_paths_are_refused_in_one_line(tmp_path):
    write_run(tmp_path / "a", 0, unified_rows(80.0, 70.0, 76.0))
    write_run(tmp_path / "b", 0, unified_rows(80.0, 70.0, 76.0))
    with pytest.raises(SystemExit, match="two runs with the same seed"):
        main([str(tmp_path), "--metrics", "I-AUROC"])
    with pytest.raises(SystemExit, match="no such file or folder"):
        main([str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match="--metrics AUPRO: not a column"):
        main([str(tmp_path / "a"), "--metrics", "AUPRO"])


def test_summary_is_one_row_per_group_and_alignment_and_one_gap_row_per_seed(tmp_path, capsys):
    write_run(tmp_path / "s0", 0, unified_rows(80.0, 70.0, 76.0))
    write_run(tmp_path / "s1", 1, unified_rows(84.0, 72.0, 80.0))
    write_run(tmp_path / "sep", 0, [("separate", "none", "mean", 88.0, 91.0)], setting="separate")
    main([str(tmp_path), "--metrics", "I-AUROC,P-AUROC", "--summary"])
    out = capsys.readouterr().out
    assert "Every row: method revdist, encoder efficientnet_lite0, image_size 128" in out
    assert "| imagenet | separate | 10 epochs | none | 0 | 88.0 |  | 91.0 |  |" in out  # no pooled row per class
    assert ("| imagenet | unified | 300 iters | cada | 0,1 | 82.0 [80.0-84.0] | 78.0 [76.0-80.0] | 90.0 [90.0-90.0] "
            "| 85.0 [85.0-85.0] |") in out
    assert out.index("| imagenet | separate") < out.index("| imagenet | unified")
    assert "| imagenet | unified | 300 iters | 0 | 10.0 | 4.0 |" in out  # the gap in I-AUROC: none, cada
    assert "| imagenet | unified | 300 iters | 1 | 12.0 | 4.0 |" in out


def ideal_rows(seed_values):
    """Unified rows with `ideal`: {align: (I-AUROC mean, mixed, ideal), ...}; P-AUROC fixed per alignment."""
    pixels = {"none": (90.0, 80.0, 85.0), "cada": (90.0, 84.0, 85.0)}
    rows = []
    for align, (mean, mixed, ideal) in seed_values.items():
        p_mean, p_mixed, p_ideal = pixels[align]
        rows += [("model-unified", align, "mean", mean, p_mean), ("absolute-unified", align, "mixed", mixed, p_mixed),
                 ("absolute-unified", align, "ideal", ideal, p_ideal)]
    return rows


def test_what_is_left_and_the_fraction_of_the_none_gap_closed_per_seed(tmp_path, capsys):
    write_run(tmp_path / "s0", 0, ideal_rows({"none": (80.0, 70.0, 76.0), "cada": (80.0, 73.0, 76.5)}))
    write_run(tmp_path / "s1", 1, ideal_rows({"none": (84.0, 72.0, 80.0), "cada": (84.0, 80.0, 80.5)}))
    write_run(tmp_path / "s2", 2, ideal_rows({"none": (84.0, 72.0, 71.0), "cada": (84.0, 73.0, 74.0)}))
    main([str(tmp_path / "s0"), str(tmp_path / "s1"), "--metrics", "I-AUROC,P-AUROC"])
    out = capsys.readouterr().out
    assert "| none | ideal | 78.0 [76.0-80.0] | 85.0 [85.0-85.0] |" in out
    assert "| cada | 7.0 / 6.0 | 4.0 / 6.0 | 5.5 / 6.0 |" in out  # the old gap, mean - mixed, stays
    left = out[out.index("What is left, `ideal` - `mixed`, per seed (I-AUROC, P-AUROC):"):]
    assert "| none | 6.0 / 5.0 | 8.0 / 5.0 | 7.0 / 5.0 |" in left
    assert "| cada | 3.5 / 1.0 | 0.5 / 1.0 | 2.0 / 1.0 |" in left
    closed = out[out.index("Fraction of the `none` block's achievable gap closed"):]
    assert "| none | 0.00 / 0.00 | 0.00 / 0.00 | 0.00 / 0.00 |" in closed
    assert "| cada | 0.50 / 0.80 | 1.00 / 0.80 | 0.75 / 0.80 |" in closed  # (73 - 70) / (76 - 70), (80 - 72) / 8
    main([str(tmp_path), "--metrics", "I-AUROC", "--summary"])
    out = capsys.readouterr().out
    assert "What is left, `ideal` - `mixed` in I-AUROC, per seed:" in out
    assert "| imagenet | 1 | 8.0 | 0.5 |" in out
    closed = out[out.index("Fraction of the `none` block's achievable gap closed"):]
    assert "| imagenet | 0 | 0.00 | 0.50 |" in closed
    assert "| imagenet | 2 |  |  |" in closed  # ideal below mixed without alignment: no gap to close
    write_run(tmp_path / "old" / "s0", 0, unified_rows(80.0, 70.0, 76.0))  # a run from before the ideal row
    main([str(tmp_path / "old"), "--metrics", "I-AUROC"])
    out = capsys.readouterr().out
    assert "| cada | 4.0 | 4.0 |" in out and "What is left" not in out and "closed" not in out

"""benchmarks/seed_table.py: mean [min-max] over seeds and the per-seed absolute-unified gap."""
import json

import pytest

from benchmarks import seed_table
from benchmarks.seed_table import main

CONFIG = {"method": "revdist", "setting": "unified", "weights": "imagenet", "backbone": "efficientnet_lite0",
          "vit": "base", "image_size": 128, "crop_size": 0, "iters": 300, "epochs": 10, "dataset": "mvtec",
          "data_path": "/data/mixture"}


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
    assert "**revdist, unified, efficientnet_lite0, imagenet, 128, 300 iters, mvtec mixture; seeds 0, 1**" in out
    assert "| none | mean | 82.0 [80.0-84.0] | 90.0 [90.0-90.0] |" in out
    assert "| cada | mixed | 78.0 [76.0-80.0] | 85.0 [85.0-85.0] |" in out
    assert "| none | 10.0 / 10.0 | 12.0 / 10.0 | 11.0 / 10.0 |" in out  # mean - mixed of seed 0, seed 1, their mean
    assert "| cada | 4.0 / 5.0 | 4.0 / 5.0 | 4.0 / 5.0 |" in out
    assert "revdist, unified, efficientnet_lite0, none, 128, 300 iters, mvtec mixture; seeds 0**" in out


def test_two_different_runs_of_one_seed_and_bad_paths_are_refused_in_one_line(tmp_path):
    write_run(tmp_path / "a", 0, unified_rows(80.0, 70.0, 76.0))
    write_run(tmp_path / "b", 0, unified_rows(80.0, 70.0, 77.0))  # the same labels, one number apart
    for summary in ([], ["--summary"]):
        with pytest.raises(SystemExit, match=r"two runs with the same seed: seed 0, cada mixed differs between "
                                             r"\['\S+/a', '\S+/b'\]$"):
            main([str(tmp_path), "--metrics", "I-AUROC", *summary])
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


def test_the_label_options_are_train_mvtec_defaults_and_the_registry_alignment_kinds():
    import train_mvtec
    from models import cada
    assert set(seed_table.LABEL_OPTIONS) == train_mvtec.HEAD_ONLY - {"align"}  # every option of the head only
    assert {option: default for option, (default, _) in seed_table.LABEL_OPTIONS.items()} == {
        option: train_mvtec.OPTIONS[option].default for option in seed_table.LABEL_OPTIONS}
    kinds = cada.ALIGNMENTS.values()
    assert seed_table.TRAINED_HEADS == tuple(kind.name for kind in kinds if kind.trained)
    assert seed_table.REGRESSION_HEADS == tuple(kind.name for kind in kinds if kind.loss is cada._regression_loss)
    assert seed_table.FEATURE_CLUSTERS == tuple(kind.name for kind in kinds if kind.reads_features
                                                and not kind.trained)
    preset = {}  # the presets' values of these options: only a method's own ones, in every (unified) setting
    for condition, values, *_ in train_mvtec.PRESETS:
        for option in set(values) & set(seed_table.LABEL_OPTIONS):
            assert set(condition) <= {"method", "setting"} and condition.get("setting", "unified") == "unified"
            preset.setdefault(condition["method"], {})[option] = values[option]
    assert preset == seed_table.METHOD_HEAD_PRESETS


def test_alignment_labels_name_the_head_options_away_from_the_method_default():
    config = {"method": "revdist", "cada_pool": "median", "cada_standardise": True, "cluster_k": "calibration",
              "align_input": "bottleneck", "cada_iters": 5000, "cada_beta": 0.1, "cada_lr": 0.05}
    label = seed_table.align_label
    assert label("cada", config) == "cada [cada_pool=median, cada_standardise=True]"
    assert label("classifier", config) == "classifier [cada_pool=median, cada_standardise=True]"
    assert label("cluster", config) == "cluster [cluster_k=calibration]"
    assert label("none", config) == "none" and label("class_aware", config) == "class_aware"
    assert label("cada", {"method": "revdist"}) == "cada"  # an old config.json: no cada_pool, its default
    assert label("cluster", {**config, "cluster_k": "silhouette", "align_input": "encoder"}) == \
        "cluster [align_input=encoder]"
    uniad = {"method": "uniad", "cada_beta": 10.0, "cada_iters": 20000}  # UniAD's presets are its defaults
    assert label("cada", uniad) == "cada" and label("cada", {**uniad, "cada_iters": 5000}) == "cada [cada_iters=5000]"
    assert label("cada", {"method": "revdist", "cada_beta": 10.0}) == "cada [cada_beta=10.0]"
    assert label("classifier", {"method": "revdist", "cada_beta": 10.0}) == "classifier"  # cross-entropy: no beta


def pair_rows(none_values, aligned, align_classes=None):
    """A unified run's rows in I-AUROC (P-AUROC fixed): `none` (mean, mixed, ideal) with class rows brick 90,
    grass 80, and an alignment block each of `aligned` {align: (mean, mixed, ideal)} whose class rows are
    align_classes {align: (brick, grass)} (none's by default)."""
    rows = []
    for align, (mean, mixed, ideal) in {"none": none_values, **aligned}.items():
        brick, grass = (align_classes or {}).get(align, (90.0, 80.0))
        rows += [("model-unified", align, "brick", brick, 90.0), ("model-unified", align, "grass", grass, 90.0),
                 ("model-unified", align, "mean", mean, 90.0), ("absolute-unified", align, "mixed", mixed, 80.0),
                 ("absolute-unified", align, "ideal", ideal, 85.0)]
    return rows


def test_runs_a_and_b_of_one_base_are_merged_into_one_group(tmp_path, capsys):
    none = (85.0, 70.0, 80.0)
    for seed in (0, 1):  # the balanced mixture is drawn per seed (make_mixture.py --balanced --seed): one group
        write_run(tmp_path / f"s{seed}_A", seed, pair_rows(none, {"cada": (85.0, 75.0, 80.0),
                                                                  "cluster": (85.0, 72.0, 80.0)}),
                  data_path=f"/data/mix_bal_s{seed}")
        write_run(tmp_path / f"s{seed}_B", seed, pair_rows(none, {"cada": (85.0, 78.0, 80.0),
                                                                  "cluster": (85.0, 79.0, 80.0)}),
                  data_path=f"/data/mix_bal_s{seed}", cada_pool="median", cluster_k="calibration")
    write_run(tmp_path / "unbalanced_s0", 0, pair_rows((60.0, 50.0, 55.0), {"cada": (60.0, 51.0, 55.0)}),
              data_path="/data/mix_s1")  # other data (not drawn by seed 0): a group of its own, not a second run
    main([str(tmp_path), "--metrics", "I-AUROC", "--classes"])
    out = capsys.readouterr().out
    assert "**revdist, unified, efficientnet_lite0, imagenet, 128, 300 iters, mvtec mix_bal_s*; seeds 0, 1**" in out
    assert "**revdist, unified, efficientnet_lite0, imagenet, 128, 300 iters, mvtec mix_s1; seeds 0**" in out
    out = out[:out.index("mix_s1; seeds 0**")]
    assert out.count("| none | mixed | 70.0 [70.0-70.0] |") == 1  # the shared none block, once
    assert "| cada | mixed | 75.0 [75.0-75.0] |" in out
    assert "| cada [cada_pool=median] | mixed | 78.0 [78.0-78.0] |" in out
    assert "| cluster [cluster_k=calibration] | mixed | 79.0 [79.0-79.0] |" in out
    closed = out[out.index("Fraction of the `none` block's achievable gap closed"):]
    assert "| cada [cada_pool=median] | 0.80 | 0.80 | 0.80 |" in closed  # (78 - 70) / (80 - 70)
    main([str(tmp_path), "--metrics", "I-AUROC", "--summary"])
    out = capsys.readouterr().out
    assert "| imagenet | mvtec mix_bal_s* | 0 | 15.0 | 10.0 | 13.0 | 7.0 | 6.0 |" in out  # none, cada, cluster, B's
    assert "| imagenet | mvtec mix_s1 | 0 | 10.0 | 9.0 |  |  |  |" in out


def test_the_claims_tables_count_the_seeds_that_close_the_gap_and_that_drop_a_class(tmp_path, capsys):
    write_run(tmp_path / "s0", 0, pair_rows((85.0, 70.0, 80.0), {"cada": (84.0, 79.5, 80.0),
                                                                 "cada_sigma": (85.0, 75.0, 80.0)},
                                            {"cada": (87.0, 81.0), "cada_sigma": (91.0, 78.5)}))
    write_run(tmp_path / "s1", 1, pair_rows((85.0, 54.01, 64.01), {"cada": (85.0, 62.01, 64.01),
                                                                   "cada_sigma": (85.0, 63.01, 64.01)},
                                            {"none": (64.01, 80.0), "cada": (62.01, 80.0), "cada_sigma": (92.0, 82.0)}))
    main([str(tmp_path), "--metrics", "I-AUROC", "--summary"])
    out = capsys.readouterr().out
    claims = out[out.index("Claims in I-AUROC, per alignment"):]
    # cada closes (79.5 - 70) / 10 = 0.95 and 0.80; brick drops 3.0 at seed 0 (counted) and 64.01 - 62.01 = 2.0 at
    # seed 1 (not counted, though 2.000000000000007 in floating point)
    assert "| imagenet | cada | 0.80 min, 1 of 2 seeds >= 0.90 | 1 of 2 seeds > 2.0 |" in claims
    # cada_sigma closes 0.50 and (63.01 - 54.01) / 10 = 0.90 (counted, though 0.8999999999999994 in floating
    # point); grass drops 1.5 at seed 0 (not counted), and at seed 1 every class rises, grass the least (2.0)
    assert "| imagenet | cada_sigma | 0.50 min, 1 of 2 seeds >= 0.90 | 0 of 2 seeds > 2.0 |" in claims
    assert "| none |" not in claims
    drops = out[out.index("Largest drop of a class against the same class of `none`"):]
    assert "| imagenet | 0 | 3.0 (brick) | 1.5 (grass) |" in drops
    assert "| imagenet | 1 | 2.0 (brick) | -2.0 (grass) |" in drops

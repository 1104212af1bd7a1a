"""The three scripts end to end, as a user runs them, on generated data (CPU, random-init resnet18)."""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.test_datasets_semantic import idx_bytes

pytestmark = pytest.mark.slow  # every test here runs a training script

REPO = Path(__file__).resolve().parent.parent
SMALL = ["--weights", "none", "--backbone", "resnet18", "--device", "cpu", "--num_workers", "0"]


def small_for(args):
    """SMALL without the options that args gives (an option given twice is refused)."""
    given = {arg for arg in args if arg.startswith("--")}
    return [item for name, value in zip(SMALL[::2], SMALL[1::2]) if name not in given for item in (name, value)]


def run_script(script, *args, cwd=REPO, expect_ok=True):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TRACEBACK", None)
    done = subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    if expect_ok:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def results_path(done):
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("results: "), last
    path = Path(last.removeprefix("results: "))
    return path if path.is_absolute() else REPO / path


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return tmp_path_factory.mktemp("demo")


def test_train_mvtec_on_the_demo_set_writes_the_table_config_and_checkpoints(demo_root, tmp_path):
    old_umask = os.umask(0o022)
    try:
        done = run_script("train_mvtec.py", "--dataset", "demo", "--data_path", str(demo_root), "--classes",
                          "brick,grass", "--image_size", "64", "--crop_size", "0", "--epochs", "2",
                          "--out_dir", str(tmp_path), *SMALL)
    finally:
        os.umask(old_umask)
    csv = results_path(done)
    assert csv.parent.name.startswith(f"train_mvtec_{demo_root.name}_noco_separate_")  # named after the folder
    table = pd.read_csv(csv)
    assert not list(csv.parent.glob("*.png")) and not (csv.parent / "plot_data").exists()  # no --plots, no figures
    assert list(table.columns) == ["setting", "class", "I-AUROC", "I-AP", "P-AUROC", "P-AP", "AUPRO", "FAR@thr",
                                   "recall@thr"]
    assert table["class"].tolist() == ["brick", "grass", "mean"] and set(table["setting"]) == {"separate"}
    values = table.drop(columns=["setting", "class"]).to_numpy()
    assert np.isfinite(values).all() and (values >= 0).all() and (values <= 100).all()
    assert table.iloc[2, 2:].to_numpy() == pytest.approx(table.iloc[:2, 2:].to_numpy().mean(axis=0), abs=0.011)
    meta = json.loads((csv.parent / "config.json").read_text())
    assert meta["status"] == "complete"
    config = meta["config"]  # what ran, not the placeholders
    assert config["epochs"] == 2 and config["classes"] == ["brick", "grass"] and config["batch_size"] == 16
    assert config["crop_size"] == 0 and config["data_path"] == str(demo_root) and config["backbone"] == "resnet18"
    assert {"device", "git_commit", "wall_time_s", "versions"} <= meta.keys()
    checkpoint = torch.load(csv.parent / "checkpoints" / "brick.pt", weights_only=True)
    assert torch.linalg.vector_norm(checkpoint["model"]["target"]).item() == pytest.approx(1.0, rel=1e-5)
    for path in (csv, csv.parent / "config.json", csv.parent / "checkpoints" / "brick.pt"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path  # the user's umask, not 0600
    assert "F1" not in done.stdout  # printed only what the table holds


def test_norm_study_and_cold_start(demo_root, tmp_path):
    done = run_script("train_mvtec.py", "--dataset", "demo", "--data_path", str(demo_root), "--classes", "gravel",
                      "--image_size", "64", "--crop_size", "0", "--epochs", "0", "--target_norm", "1,8",
                      "--out_dir", str(tmp_path), *SMALL)
    study = pd.read_csv(results_path(done))
    assert results_path(done).name == "norm_study.csv"
    assert list(study.columns) == ["setting", "class", "I-AUROC norm=1", "I-AUROC norm=8", "P-AUROC norm=1",
                                   "P-AUROC norm=8"]
    assert study["class"].tolist() == ["gravel", "mean"] and study.notna().all().all()
    for norm in (1, 8):  # cold start: the untrained detector with its data-independent target
        checkpoint = torch.load(results_path(done).parent / "checkpoints" / f"gravel_norm{norm}.pt", weights_only=True)
        assert checkpoint["model"]["radius"].item() == pytest.approx(1e-5)
        assert torch.linalg.vector_norm(checkpoint["model"]["target"]).item() == pytest.approx(norm, rel=1e-5)


def test_same_seed_same_table_even_with_a_random_init_encoder(demo_root, tmp_path):
    args = ["--dataset", "demo", "--data_path", str(demo_root), "--classes", "grass", "--image_size", "64",
            "--epochs", "1", "--save_checkpoints", "false", *SMALL]
    first, second = (pd.read_csv(results_path(run_script("train_mvtec.py", *args, "--out_dir", str(tmp_path / name))))
                     for name in ("a", "b"))
    assert first.equals(second)


@pytest.mark.parametrize("method", ["revdist", "recontrast"])
def test_unified_run_has_per_class_rows_their_mean_and_the_pooled_mixed_row(method, demo_root, tmp_path):
    done = run_script("train_mvtec.py", "--method", method, "--dataset", "demo", "--data_path", str(demo_root),
                      "--image_size", "64", "--iters", "3", "--batch_size", "8", "--out_dir", str(tmp_path), *SMALL)
    csv = results_path(done)
    table = pd.read_csv(csv)
    assert table["class"].tolist() == ["brick", "grass", "gravel", "mean", "mixed", "ideal"]
    assert table["setting"].tolist() == ["model-unified"] * 4 + ["absolute-unified"] * 2
    assert table[table["class"] != "ideal"].drop(columns=["setting", "class"]).notna().all().all()
    assert table.loc[5, ["I-AUROC", "P-AUROC"]].notna().all()  # the perfect-alignment reference
    config = json.loads((csv.parent / "config.json").read_text())["config"]
    assert config["setting"] == "unified" and config["image_score"] == "top_mean" and config["iters"] == 3
    assert config["resize"] == "pil" and config["optimizer"] == "adamw" and config["lr"] == 2e-3
    assert [p.name for p in (csv.parent / "checkpoints").iterdir()] == ["unified.pt"]
    # evaluation-only changes reuse the trained model instead of training it again
    again = run_script("train_mvtec.py", "--method", method, "--dataset", "demo", "--data_path", str(demo_root),
                       "--image_size", "64", "--iters", "3", "--batch_size", "8", "--out_dir", str(tmp_path / "b"),
                       "--checkpoint", str(csv.parent), "--image_score", "max", *SMALL)
    assert "unified train" not in again.stderr  # neither features nor iterations
    assert not pd.read_csv(results_path(again)).equals(table)
    refused = run_script("train_mvtec.py", "--method", method, "--dataset", "demo", "--data_path", str(demo_root),
                         "--image_size", "64", "--iters", "4", "--batch_size", "8", "--out_dir", str(tmp_path / "c"),
                         "--checkpoint", str(csv.parent), *SMALL, expect_ok=False)
    assert "trained with another configuration (differs in ['iters'])" in refused.stderr


def test_alignments_share_one_base_model_and_write_a_row_block_each(demo_root, tmp_path):
    args = ["--method", "revdist", "--dataset", "demo", "--data_path", str(demo_root), "--image_size", "64",
            "--iters", "3", "--batch_size", "8", "--cada_iters", "5", *SMALL]
    done = run_script("train_mvtec.py", *args, "--align", "none,cada,class_aware", "--out_dir", str(tmp_path / "a"))
    csv = results_path(done)
    table = pd.read_csv(csv)
    assert list(table.columns[:3]) == ["setting", "align", "class"]
    assert table["align"].tolist() == ["none"] * 6 + ["cada"] * 6 + ["class_aware"] * 6
    assert table["class"].tolist() == ["brick", "grass", "gravel", "mean", "mixed", "ideal"] * 3
    assert table[table["class"] != "ideal"].drop(columns=["setting", "align", "class"]).notna().all().all()
    assert sorted(p.name for p in (csv.parent / "checkpoints").iterdir()) == ["unified.pt", "unified_cada.pt"]
    stats = pd.read_csv(csv.parent / "alignment_stats.csv")
    assert stats[["align", "class"]].values.tolist() == [[a, c] for a in ("cada", "class_aware")
                                                          for c in ("brick", "grass", "gravel")]
    # the head options are not part of the base model: without --align, the same base and the same `none` rows,
    # also when the base trains with --recompute (the same model, trained with less memory)
    plain = pd.read_csv(results_path(run_script("train_mvtec.py", *args, "--recompute", "--out_dir", str(tmp_path / "b"))))
    none_block = table[table["align"] == "none"].drop(columns="align").reset_index(drop=True)
    pd.testing.assert_frame_equal(plain.drop(columns="align"), none_block)
    # reused: the base and the cada head from the first run; only the new head trains
    again = run_script("train_mvtec.py", *args, "--align", "cada_sigma,cada", "--checkpoint", str(csv.parent),
                       "--out_dir", str(tmp_path / "c"))
    assert "unified train" not in again.stderr and "unified_cada train" not in again.stderr
    assert "unified_cada_sigma train" in again.stderr
    reused = pd.read_csv(results_path(again))
    pd.testing.assert_frame_equal(reused[reused["align"] == "cada"].reset_index(drop=True),
                                  table[table["align"] == "cada"].reset_index(drop=True))


def test_uniad_trains_on_cached_tokens_in_both_settings_and_with_cada(demo_root, tmp_path):
    args = ["--method", "uniad", "--dataset", "demo", "--data_path", str(demo_root), "--classes", "brick,grass",
            "--batch_size", "8", *SMALL[:2], *SMALL[4:]]  # the demo preset picks efficientnet_lite0 at 128 px
    done = run_script("train_mvtec.py", *args, "--iters", "2", "--align", "none,cada", "--cada_iters", "3",
                      "--out_dir", str(tmp_path / "u"))
    csv = results_path(done)
    table = pd.read_csv(csv)
    assert table["class"].tolist() == ["brick", "grass", "mean", "mixed", "ideal"] * 2
    assert table[table["class"] != "ideal"].drop(columns=["setting", "align", "class"]).notna().all().all()
    config = json.loads((csv.parent / "config.json").read_text())["config"]
    assert (config["backbone"], config["lr"], config["weight_decay"], config["blur_sigma"]) == ("efficientnet_lite0", 3e-4, 1e-4, 0.0)
    assert (config["cada_beta"], config["cada_iters"]) == (10.0, 3)
    one_class = [arg if arg != "brick,grass" else "brick" for arg in args]
    separate = run_script("train_mvtec.py", *one_class, "--setting", "separate", "--epochs", "0",
                          "--out_dir", str(tmp_path / "s"))
    table = pd.read_csv(results_path(separate))
    assert table["class"].tolist() == ["brick", "mean"]
    assert json.loads((results_path(separate).parent / "config.json").read_text())["config"]["image_score"] == "pooled_max"


def test_dinomaly_on_the_demo_preset_with_cada(demo_root, tmp_path):
    done = run_script("train_mvtec.py", "--method", "dinomaly", "--dataset", "demo", "--data_path", str(demo_root),
                      "--weights", "none", "--iters", "3", "--batch_size", "4", "--classes", "brick,grass",
                      "--align", "none,cada", "--cada_iters", "3", "--device", "cpu", "--num_workers", "0",
                      "--out_dir", str(tmp_path))
    csv = results_path(done)
    table = pd.read_csv(csv)
    assert table["align"].tolist() == ["none"] * 5 + ["cada"] * 5
    assert table["class"].tolist() == ["brick", "grass", "mean", "mixed", "ideal"] * 2
    assert table[table["class"] != "ideal"].drop(columns=["setting", "align", "class"]).dropna(axis=1, how="all"
                                                                                              ).notna().all().all()
    config = json.loads((csv.parent / "config.json").read_text())["config"]
    assert (config["vit"], config["image_size"], config["crop_size"], config["setting"]) == ("small", 112, 0, "unified")
    assert (config["optimizer"], config["lr_schedule"], config["warmup_iters"], config["final_lr"]) == (
        "stable_adamw", "warmup_cosine", 100, 2e-4)
    assert (config["hm_factor"], config["adam_eps"], config["image_score"], config["blur_kernel"]) == (
        0.1, 1e-10, "top_mean", 5)
    assert sorted(p.name for p in (csv.parent / "checkpoints").iterdir()) == ["unified.pt", "unified_cada.pt"]


def write_pattern_mnist(root, n_train=30, n_test=20):
    """MNIST-format files whose classes 0-2 are faint bars at three heights on strong noise."""
    rng = np.random.default_rng(0)

    def images(labels):
        x = rng.integers(0, 120, (len(labels), 28, 28))
        for i, label in enumerate(labels):
            row = 4 + 8 * label + rng.integers(-1, 2)
            x[i, row:row + 4, 3:25] += 60
        return np.clip(x, 0, 255)

    train_labels, test_labels = np.arange(3 * n_train) % 3, np.arange(3 * n_test) % 3
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, array in {"train-images-idx3-ubyte": images(train_labels), "train-labels-idx1-ubyte": train_labels,
                        "t10k-images-idx3-ubyte": images(test_labels), "t10k-labels-idx1-ubyte": test_labels}.items():
        (raw / name).write_bytes(idx_bytes(array))

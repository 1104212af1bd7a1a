"""The scripts end to end, continued (a second file so that the test workers share the script runs evenly):
interruptions and --resume, --help, the semantic scripts, bad input, folders of mixed images, checkpoint reuse."""
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.test_scripts import (REPO, SMALL, demo_root, results_path, run_script, small_for,  # noqa: F401 (a fixture)
                                write_pattern_mnist)

pytestmark = pytest.mark.slow  # every test here runs a training script


def interrupt_when(args, out_dir, pattern):
    """Start train_mvtec.py, press Ctrl-C once a file matching `pattern` appears in out_dir, and check
    that it stops with exit status 130 and the one line "interrupted"; return its stderr."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, str(REPO / "train_mvtec.py"), *args, "--out_dir", str(out_dir)],
                               cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not list(out_dir.glob(pattern)) and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and stderr.rstrip().endswith("interrupted"), stderr[-2000:]
    return stderr


def test_a_run_killed_mid_training_resumes_from_its_snapshot_and_ends_with_the_same_table(demo_root, tmp_path):
    # UniAD draws random numbers in training (feature jitter, dropout) and --lr_drop_at adds a schedule:
    # the same table needs the model, optimiser, schedule, batch order and RNG all restored
    args = ["--method", "uniad", "--dataset", "demo", "--data_path", str(demo_root), "--classes", "brick,grass",
            "--iters", "30", "--batch_size", "8", "--lr_drop_at", "0.5", "--checkpoint_every", "5",
            *SMALL[:2], *SMALL[4:]]
    whole = pd.read_csv(results_path(run_script("train_mvtec.py", *args, "--out_dir", str(tmp_path / "whole"))))
    interrupt_when(args, tmp_path / "cut", "*/checkpoints/unified.train.pt")  # in the middle of training
    (run_dir,) = (tmp_path / "cut").iterdir()
    assert not (run_dir / "results.csv").exists() and not (run_dir / "checkpoints" / "unified.pt").exists()
    assert not [p for p in run_dir.rglob("*") if ".tmp" in p.name]
    resumed = run_script("train_mvtec.py", "--resume", str(run_dir), "--num_workers", "0")
    start = int(resumed.stdout.split("resuming training at iteration ")[1].split()[0])
    assert 5 <= start < 30 and start % 5 == 0
    pd.testing.assert_frame_equal(pd.read_csv(results_path(resumed)), whole)  # the same table, to the last digit
    assert not (run_dir / "checkpoints" / "unified.train.pt").exists()  # the snapshot goes once training ends


def test_interrupted_run_keeps_finished_classes_and_resume_ends_with_the_same_table(demo_root, tmp_path):
    args = ["--dataset", "demo", "--data_path", str(demo_root), "--image_size", "64", "--epochs", "3", *SMALL]
    whole = pd.read_csv(results_path(run_script("train_mvtec.py", *args, "--out_dir", str(tmp_path / "whole"))))
    stderr = interrupt_when(args, tmp_path / "cut", "*/results.partial.csv")  # after the first class
    assert "Traceback" not in stderr
    (run_dir,) = (tmp_path / "cut").iterdir()
    assert not (run_dir / "results.csv").exists()
    finished = pd.read_csv(run_dir / "results.partial.csv")["class"].tolist()
    assert 1 <= len(finished) < 3
    assert not [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]
    (run_dir / "checkpoints" / f"{finished[0]}.pt").unlink()  # a finished model whose file is lost: trained again
    resumed = run_script("train_mvtec.py", "--resume", str(run_dir), "--num_workers", "0")
    assert f"{finished[0]}: checkpoints/{finished[0]}.pt missing" in resumed.stdout
    assert (run_dir / "checkpoints" / f"{finished[0]}.pt").is_file()
    assert results_path(resumed) == run_dir / "results.csv"
    assert pd.read_csv(results_path(resumed)).equals(whole)
    assert not (run_dir / "results.partial.csv").exists()


def test_help_explains_every_option_on_stdout(tmp_path):
    done = run_script("train_mvtec.py", "--help")
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith("usage: ")
    assert "--iters" in done.stdout and "5000" in done.stdout and "iterations over the union" in done.stdout
    assert "demo" in done.stdout and "efficientnet_lite0" in done.stdout  # the demo preset
    assert "sec. 3.3)" in done.stdout  # a wrapped constant comment is shown whole
    never_retrain = " ".join(done.stdout.split("Options that never retrain a saved model")[1].split())
    assert "data_path," in never_retrain and "cada_dropout," in never_retrain


def test_train_mnist_learns_what_the_cold_start_detector_cannot_see(tmp_path):
    write_pattern_mnist(tmp_path / "data")
    mean_auroc = {}
    for epochs in (0, 15):
        done = run_script("train_mnist.py", "--dataset", "mnist", "--data_path", str(tmp_path / "data"),
                          "--classes", "0,1,2", "--image_size", "32", "--crop_size", "0", "--epochs", str(epochs),
                          "--batch_size", "16", "--out_dir", str(tmp_path / "results"), *SMALL)
        table = pd.read_csv(results_path(done))
        assert table["class"].tolist() == ["0", "1", "2", "mean"]
        assert table[["P-AUROC", "P-AP", "AUPRO"]].isna().all().all()  # semantic task: no pixel metrics
        mean_auroc[epochs] = table.loc[3, "I-AUROC"]
    # untrained, every class gets the same score function, so the mean over classes is chance (~50);
    # measured here: 50.0 untrained, 96.9 after 15 epochs
    assert mean_auroc[0] < 65 and mean_auroc[15] > 85, mean_auroc


def test_train_cifar10_on_a_cats_vs_dogs_folder_learns(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "cvd"
    for split, count in (("train", 16), ("test", 12)):
        for animal, level in (("cat", 60), ("dog", 190)):
            for i in range(count):
                path = root / split / (animal if split == "train" else "") / f"{animal}.{i}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.clip(rng.normal(level, 30, (40, 48, 3)), 0, 255).astype(np.uint8)).save(path)
    mean_auroc = {}
    for epochs in (0, 10):
        done = run_script("train_cifar10.py", "--dataset", "cats_vs_dogs", "--data_path", str(root), "--image_size",
                          "32", "--crop_size", "0", "--epochs", str(epochs), "--batch_size", "8",
                          "--out_dir", str(tmp_path / "results"), *SMALL)
        table = pd.read_csv(results_path(done))
        assert table["class"].tolist() == ["cat", "dog", "mean"]
        mean_auroc[epochs] = table.loc[2, "I-AUROC"]
    # untrained, both classes share one score function on one test set with swapped labels, so the
    # two AUROCs add up to 100 and their mean is 50 exactly; trained, each class learns its own
    assert mean_auroc[0] == pytest.approx(50.0, abs=0.01) and mean_auroc[10] > 90, mean_auroc


@pytest.mark.parametrize("args, message", [
    (["--learning_rate", "1"], "unknown option --learning_rate; valid options: --method"),
    (["--epochs", "ten"], "--epochs: expected int, got 'ten'"),
    (["--epochs", "-3"], "--epochs"),
    (["--batch_size", "0"], "--batch_size"),
    (["--lr", "0"], "--lr"),
    (["--target_norm", "1,-2"], "--target_norm"),
    (["--setting", "both"], "--setting"),
    (["--data_path", "/no/such/folder"], "dataset not found at /no/such/folder"),
    (["--dataset", "demo", "--classes", "brick,Grass,marble"], "Grass"),
    (["--weights", "/no/weights.pth", "--dataset", "demo"], "--weights /no/weights.pth: no such file"),
    (["--method", "revdist", "--target_norm", "1,8", "--dataset", "demo"], "--target_norm"),
    (["--method", "revdist", "--align", "cada,cadaa", "--dataset", "demo"], "--align: expected a comma list of none"),
    (["--method", "revdist", "--setting", "separate", "--align", "cada", "--dataset", "demo"], "--align"),
    (["--method", "revdist", "--cada_beta", "0", "--dataset", "demo"], "--cada_beta"),
    (["--method", "revdist", "--cada_batch_size", "0", "--dataset", "demo"], "--cada_batch_size: expected a positive"),
    (["--method", "revdist", "--cada_convs", "-1", "--dataset", "demo"], "--cada_convs: expected a non-negative"),
    (["--method", "revdist", "--cada_linears", "0", "--dataset", "demo"], "--cada_linears: expected a positive"),
    (["--method", "revdist", "--cada_dropout", "1", "--dataset", "demo"], "--cada_dropout: expected a value below 1.0"),
    (["--method", "revdist", "--cada_dropout", "-0.1", "--dataset", "demo"], "--cada_dropout: expected a non-negative"),
    (["--method", "revdist", "--cada_dropout_at", "last", "--dataset", "demo"], "--cada_dropout_at: expected one of"),
    (["--method", "uniad", "--dataset", "demo", "--image_size", "96"], "--backbone/--image_size: UniAD reads EfficientNet-B4"),
    (["--recompute", "--dataset", "demo"], "--recompute: an option of revdist, recontrast; --method noco does not use it"),
    (["--image_size", "0", "--dataset", "demo", "--image_size", "64"], "--image_size is given twice (0 and 64)"),
    (["--method", "patchcore", "--dataset", "demo"], "--method: expected one of noco, revdist, recontrast, uniad"),
    (["--method", "revdist", "--hm_factor", "0.1", "--dataset", "demo"], "--hm_factor: an option of recontrast,"),
    (["--method", "dinomaly", "--dataset", "demo"], "--backbone: --method dinomaly does not read it (its encoder is"),
    (["--lr_schedule", "warmup_cosine", "--lr_drop_at", "0.5", "--dataset", "demo"], "--lr_drop_at 0.5: --lr_sched"),
])
def test_bad_input_ends_in_one_clear_line_before_any_folder_is_made(args, message, demo_root, tmp_path):
    if "demo" in args:
        args = [*args, "--data_path", str(demo_root)]
    done = run_script("train_mvtec.py", *small_for(args), *args, "--out_dir", str(tmp_path / "out"), expect_ok=False)
    assert done.returncode != 0
    assert done.stderr.startswith("error: ") and message in done.stderr.splitlines()[0], done.stderr
    assert len(done.stderr.strip().splitlines()) == 2 and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_more_bad_input_out_dir_layout_weights_and_a_corrupt_image_in_a_worker(demo_root, tmp_path):
    def one_line(done, message):
        assert done.returncode != 0 and done.stderr.startswith("error: "), done.stderr[-2000:]
        assert message in done.stderr.splitlines()[0] and len(done.stderr.strip().splitlines()) == 2, done.stderr

    demo = ["--dataset", "demo", "--data_path", str(demo_root), "--classes", "grass", "--image_size", "64", *SMALL]
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    one_line(run_script("train_mvtec.py", *demo, "--out_dir", str(a_file), expect_ok=False), "--out_dir")
    (tmp_path / "flat").mkdir()
    write_jpeg = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    write_jpeg.save(tmp_path / "flat" / "photo.png")
    one_line(run_script("train_mvtec.py", *SMALL, "--data_path", str(tmp_path / "flat"), "--out_dir",
                        str(tmp_path / "out"), expect_ok=False), "not in MVTec layout")
    one_line(run_script("train_mvtec.py", *demo[:-len(SMALL)], *SMALL[2:], "--weights", str(a_file), "--out_dir",
                        str(tmp_path / "out"),
                        expect_ok=False), "not a PyTorch checkpoint")
    broken = tmp_path / "broken"
    shutil.copytree(demo_root / "grass", broken / "grass")
    victim = sorted((broken / "grass" / "train" / "good").iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated PNG, read inside a DataLoader worker
    done = run_script("train_mvtec.py", *SMALL[:-2], "--num_workers", "2", "--data_path", str(broken),
                      "--image_size", "64", "--crop_size", "0", "--out_dir", str(tmp_path / "out"), expect_ok=False)
    error = done.stderr.strip().splitlines()[-2:]  # after the progress bar of the pass that met the image
    assert done.returncode == 1 and error[0].startswith(f"error: cannot read image {victim}"), done.stderr
    assert error[1] == "(set TRACEBACK=1 for the traceback)" and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_unified_run_on_a_folder_whose_classes_differ_in_size_and_channels(tmp_path):
    from tests.test_datasets_structured import make_mvtec_class, write_image, write_mask
    make_mvtec_class(tmp_path / "parts", "gray_widget", n_train=4)  # 40 x 30, the first image grayscale
    big = tmp_path / "parts" / "rgb_bolt"
    for i in range(4):
        write_image(big / "train" / "good" / f"{i}.png", seed=40 + i, size=(70, 90))
    write_image(big / "test" / "good" / "0.png", seed=50, size=(70, 90))
    write_image(big / "test" / "dent" / "0.png", seed=51, size=(70, 90))
    write_mask(big / "ground_truth" / "dent" / "0_mask.png", size=(70, 90))
    # four training images a class: none held out for thresholds (two of four would be)
    done = run_script("train_mvtec.py", "--method", "revdist", "--val_fraction", "0", "--data_path",
                      str(tmp_path / "parts"), "--image_size",
                      "64", "--iters", "2", "--batch_size", "4", "--out_dir", str(tmp_path / "out"), *SMALL)
    csv = results_path(done)
    assert csv.parent.name.startswith("train_mvtec_parts_revdist_unified_")
    table = pd.read_csv(csv)
    assert table["class"].tolist() == ["gray_widget", "rgb_bolt", "mean", "mixed", "ideal"]
    rates = ["FAR@thr", "recall@thr"]
    assert table[table["class"] != "ideal"].drop(columns=["setting", "class", *rates]).notna().all().all()
    assert table[["FAR@thr", "recall@thr"]].isna().all().all()  # no held-out images, no threshold


def test_a_checkpoint_is_reused_only_for_the_classes_it_was_trained_on(demo_root, tmp_path):
    args = ["--dataset", "demo", "--data_path", str(demo_root), "--image_size", "64", "--epochs", "1", *SMALL]
    csv = results_path(run_script("train_mvtec.py", *args, "--classes", "brick", "--out_dir", str(tmp_path / "a")))
    brick = csv.parent / "checkpoints" / "brick.pt"
    moved = tmp_path / "moved"  # the same images under another path: the data enter the fingerprint by content
    shutil.copytree(demo_root, moved)
    moved_args = [arg if arg != str(demo_root) else str(moved) for arg in args]
    again = run_script("train_mvtec.py", *moved_args, "--classes", "brick", "--checkpoint", str(brick),
                       "--out_dir", str(tmp_path / "b"))
    assert "brick train" not in again.stderr  # reused, not trained
    assert pd.read_csv(results_path(again)).equals(pd.read_csv(csv))  # the same model, evaluated again
    with open(moved / "brick" / "train" / "good" / "000.png", "ab") as image:  # other data, same class name
        image.write(b"another camera")
    other = run_script("train_mvtec.py", *moved_args, "--classes", "brick", "--checkpoint", str(brick),
                       "--out_dir", str(tmp_path / "c"), expect_ok=False)
    assert "trained with another configuration (differs in ['training_data'])" in other.stderr
    refused = run_script("train_mvtec.py", *args, "--classes", "grass", "--checkpoint", str(brick),
                         "--out_dir", str(tmp_path / "c"), expect_ok=False)
    assert "trained with another configuration (differs in ['classes', 'training_data'])" in refused.stderr
    missing = run_script("train_mvtec.py", *args, "--classes", "grass", "--checkpoint", str(csv.parent),
                         "--out_dir", str(tmp_path / "c"), expect_ok=False)
    assert "expected a .pt file or a run folder with checkpoints/{grass}.pt" in missing.stderr
    assert not (tmp_path / "c").exists()

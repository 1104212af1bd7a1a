"""The semantic scripts' models go through the Trainer as train_mvtec.py's do: fingerprinted checkpoints that
--checkpoint reuses (and refuses when trained otherwise, or on other images), training snapshots that --resume
continues from to the same table. Tiny generated MNIST files, no download."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from datasets.oneclass import OneClassDataset, SemanticDataset
from tests.test_datasets_semantic import mnist_raw_files, write_mnist_raw
from tests.test_scripts import REPO, SMALL, results_path, run_script, write_pattern_mnist
from utils.semantic import one_class_fingerprint, split_fingerprint


def mnist_split(root, split="train"):
    return SemanticDataset("mnist", root, split, image_size=32, crop_size=0)


def test_the_training_data_fingerprint_is_the_images_not_their_folder(tmp_path):
    write_mnist_raw(tmp_path / "a", "MNIST")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    a, b = mnist_split(tmp_path / "a"), mnist_split(tmp_path / "b")
    assert one_class_fingerprint(OneClassDataset(a, 1)) == one_class_fingerprint(OneClassDataset(b, 1))
    assert one_class_fingerprint(OneClassDataset(a, 1)) != one_class_fingerprint(OneClassDataset(a, 2))
    tests = [split_fingerprint(mnist_split(tmp_path / folder, "test")) for folder in ("a", "b")]
    assert tests[0] == tests[1]
    # one pixel of one class-1 training image changed: class 1's fingerprint changes, class 2's does not
    raw = tmp_path / "b" / "MNIST" / "raw" / "train-images-idx3-ubyte"
    data = bytearray(raw.read_bytes())
    first_one = int(np.flatnonzero(np.arange(40) % 5 == 1)[0])
    data[16 + first_one * 28 * 28 + 5] ^= 1  # after the 16-byte idx header
    raw.write_bytes(bytes(data))
    changed = mnist_split(tmp_path / "b")
    assert one_class_fingerprint(OneClassDataset(changed, 1)) != one_class_fingerprint(OneClassDataset(a, 1))
    assert one_class_fingerprint(OneClassDataset(changed, 2)) == one_class_fingerprint(OneClassDataset(a, 2))
    # the test split's labels are part of its fingerprint: same images, classes 4 and 5 swapped
    test_labels = np.arange(30) % 6
    swapped = np.where(test_labels == 4, 5, np.where(test_labels == 5, 4, test_labels))
    (tmp_path / "c" / "MNIST" / "raw").mkdir(parents=True)
    for name, content in mnist_raw_files(test_labels=swapped).items():
        (tmp_path / "c" / "MNIST" / "raw" / name).write_bytes(content)
    relabelled = mnist_split(tmp_path / "c", "test")
    relabelled.torchvision_set.data = mnist_split(tmp_path / "a", "test").torchvision_set.data  # same images
    assert split_fingerprint(relabelled) != split_fingerprint(mnist_split(tmp_path / "a", "test"))


def trained(done):
    """The progress bars of training and of the training features' extraction that a run showed, in order."""
    found = re.findall(r"(train features|class\d+(?:_norm[\d.]+)? train):", done.stderr)
    return list(dict.fromkeys(found))


def constant_lines(script):
    """{constant: its line with the comment beside it} of a script's block of constants."""
    block = (REPO / script).read_text().split("# " + "-" * 77 + "\n")[1]
    return {line.split(" = ")[0]: line for line in block.splitlines() if " = " in line and not line.startswith(" ")}


def test_the_two_semantic_scripts_differ_only_in_their_datasets_and_reference_constants():
    """Both run utils/semantic.py; their constants are the same option table, line for line, but for these."""
    mnist, cifar = constant_lines("train_mnist.py"), constant_lines("train_cifar10.py")
    assert list(mnist) == list(cifar)
    assert [name for name in mnist if mnist[name] != cifar[name]] == [
        "dataset", "data_path", "download", "epochs", "radius_penalty"]


MNIST_ARGS = ["--dataset", "mnist", "--classes", "0,1", "--image_size", "32", "--crop_size", "0", *SMALL]


@pytest.mark.slow
def test_a_semantic_checkpoint_is_reused_and_one_trained_otherwise_is_refused(tmp_path):
    write_pattern_mnist(tmp_path / "data")
    args = [*MNIST_ARGS, "--data_path", str(tmp_path / "data"), "--epochs", "2", "--batch_size", "8"]
    first = run_script("train_mnist.py", *args, "--out_dir", str(tmp_path / "first"))
    assert trained(first) == ["train features", "class0 train", "class1 train"]
    run_dir = results_path(first).parent
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["class0.pt", "class1.pt"]
    # the same data in another folder, another --cache_memory_gb: both models reused, the same table
    shutil.copytree(tmp_path / "data", tmp_path / "moved")
    moved = [*MNIST_ARGS, "--data_path", str(tmp_path / "moved"), "--epochs", "2", "--batch_size", "8"]
    again = run_script("train_mnist.py", *moved, "--cache_memory_gb", "4", "--checkpoint", str(run_dir),
                       "--out_dir", str(tmp_path / "again"))
    assert not {"class0 train", "class1 train", "train features"} & set(trained(again))  # nothing trained or encoded
    pd.testing.assert_frame_equal(pd.read_csv(results_path(again)), pd.read_csv(results_path(first)))
    # another learning rate: refused in one line naming the option, before anything is trained or written
    other = run_script("train_mnist.py", *args, "--lr", "0.01", "--checkpoint", str(run_dir),
                       "--out_dir", str(tmp_path / "other"), expect_ok=False)
    assert other.returncode == 1 and "\nerror: --checkpoint " + str(run_dir / "checkpoints" / "class0.pt") + (
        ": trained with another configuration (differs in ['lr'])\n") in other.stderr
    assert not trained(other) and not (tmp_path / "other").exists()
    # other images of class 0: the data fingerprint differs
    raw = tmp_path / "moved" / "MNIST" / "raw" / "train-images-idx3-ubyte"
    data = bytearray(raw.read_bytes())
    data[16 + 5] ^= 1  # a pixel of the first training image, a 0
    raw.write_bytes(bytes(data))
    changed = run_script("train_mnist.py", *moved, "--checkpoint", str(run_dir), "--out_dir", str(tmp_path / "changed"),
                         expect_ok=False)
    assert changed.returncode == 1 and "(differs in ['training_data'])\n" in changed.stderr


@pytest.mark.slow
def test_a_semantic_run_interrupted_mid_training_resumes_to_the_same_table(tmp_path):
    write_pattern_mnist(tmp_path / "data")
    args = [*MNIST_ARGS, "--data_path", str(tmp_path / "data"), "--epochs", "50", "--batch_size", "4",
            "--checkpoint_every", "40", "--target_norm", "1,4"]  # 30 images: 8 batches an epoch, 400 iterations
    whole = results_path(run_script("train_mnist.py", *args, "--out_dir", str(tmp_path / "whole")))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cut = tmp_path / "cut"
    process = subprocess.Popen([sys.executable, str(REPO / "train_mnist.py"), *args, "--out_dir", str(cut)],
                               cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not list(cut.glob("*/checkpoints/class1_norm1.train.pt")) and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)  # class 0 finished, class 1 in the middle of its first model
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and stderr.rstrip().endswith("interrupted"), stderr[-2000:]
    (run_dir,) = cut.iterdir()
    assert pd.read_csv(run_dir / "results.partial.csv")["model"].tolist() == ["class0_norm1", "class0_norm4"]
    resumed = run_script("train_mnist.py", "--resume", str(run_dir))
    start = int(resumed.stdout.split("class1_norm1: resuming training at iteration ")[1].split()[0])
    assert 40 <= start < 400 and start % 40 == 0
    assert "class0_norm1 train" not in resumed.stderr
    for table in ("norm_study.csv", "results_norm1.csv", "results_norm4.csv"):  # the same tables, to the last digit
        pd.testing.assert_frame_equal(pd.read_csv(run_dir / table), pd.read_csv(whole.parent / table))
    assert results_path(resumed) == run_dir / "norm_study.csv"
    assert not list((run_dir / "checkpoints").glob("*.train.pt"))  # snapshots go once training ends


@pytest.mark.slow
def test_two_processes_train_the_semantic_model_one_process_trains_and_write_one_table(tmp_path):
    write_pattern_mnist(tmp_path / "data")
    args = [*MNIST_ARGS, "--data_path", str(tmp_path / "data"), "--epochs", "2", "--batch_size", "4"]  # 30 = 7*4 + 2
    one = results_path(run_script("train_mnist.py", *args, "--out_dir", str(tmp_path / "one"))).parent
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(REPO / "train_mnist.py"), *args, "--out_dir", str(tmp_path / "two")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("results: ") == 1  # one voice
    (two,) = (tmp_path / "two").iterdir()
    assert results_path(done) == two / "results.csv"
    for name in ("class0.pt", "class1.pt"):
        reference, parallel = (torch.load(run / "checkpoints" / name, weights_only=True)["model"] for run in (one, two))
        for key in reference:
            torch.testing.assert_close(parallel[key], reference[key], rtol=1e-5, atol=1e-7)
    pd.testing.assert_frame_equal(pd.read_csv(two / "results.csv"), pd.read_csv(one / "results.csv"))

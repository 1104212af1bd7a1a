"""torchrun: two CPU processes (gloo) train the model one process trains on the same total batch,
and write one table."""
import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from tests.test_scripts import REPO, SMALL, results_path, run_script
from utils import distributed
from utils.evaluation import ClassMaps
from utils.training import check_batches

ARGS = ["--dataset", "demo", "--setting", "unified", "--classes", "brick,grass", "--image_size", "64", "--iters", "4",
        "--batch_size", "8", *SMALL]  # NoCo: no BatchNorm, so two processes must equal one exactly (to rounding)


def trained_state(run_dir):
    return torch.load(run_dir / "checkpoints" / "unified.pt", weights_only=True)["model"]


@pytest.mark.slow
def test_two_processes_equal_one_process_on_the_same_total_batch_and_write_one_table(tmp_path):
    data = ["--data_path", str(tmp_path / "demo")]
    one = results_path(run_script("train_mvtec.py", *ARGS, *data, "--out_dir", str(tmp_path / "one"))).parent
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(REPO / "train_mvtec.py"), *ARGS, *data, "--out_dir", str(tmp_path / "two")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("results: ") == 1  # one voice
    (two,) = (tmp_path / "two").iterdir()  # one run folder, one table, one checkpoint
    assert sorted(p.name for p in two.iterdir()) == ["checkpoints", "config.json", "results.csv", "thresholds.json"]
    assert results_path(done).parent == two
    reference, parallel = trained_state(one), trained_state(two)
    for name in reference:
        torch.testing.assert_close(parallel[name], reference[name], rtol=1e-5, atol=1e-7)
    pd.testing.assert_frame_equal(pd.read_csv(two / "results.csv"), pd.read_csv(one / "results.csv"))
    # the comparison can fail: a single process on one process's share of the batch trains another model
    half = results_path(run_script("train_mvtec.py", *ARGS[:-len(SMALL) - 2], "--batch_size", "4", *SMALL, *data,
                                   "--out_dir", str(tmp_path / "half"))).parent
    assert not torch.allclose(trained_state(half)["projector.weight"], reference["projector.weight"], atol=1e-6)


@pytest.mark.slow
def test_a_batch_that_does_not_split_over_the_processes_is_refused(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = [a if a != "8" else "7" for a in ARGS]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(REPO / "train_mvtec.py"), *args, "--data_path", str(tmp_path / "demo"),
                           "--out_dir", str(tmp_path / "out")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if line.removeprefix("[rank0]: ").startswith("error: ")]
    assert [line.removeprefix("[rank0]: ") for line in ours] == [
        "error: --batch_size 7: it must split evenly over the 2 processes"]  # rank 0's line, once (rank0: torchrun's)
    root_cause = done.stderr.split("Root Cause")[1]  # torchrun's own report names our line, not its docs
    assert "traceback : error: --batch_size 7: it must split evenly" in root_cause, done.stderr[-2000:]
    assert not (tmp_path / "out").exists()


def torchrun(args, out_dir):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(REPO / "train_mvtec.py"), *args, "--out_dir", str(out_dir)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=400)


def our_lines(stderr):
    return [line.removeprefix("[rank0]: ") for line in stderr.splitlines()
            if line.removeprefix("[rank0]: ").startswith("error: ")]


@pytest.mark.slow
def test_an_alignment_head_trains_over_two_processes_when_the_set_leaves_a_short_batch(tmp_path):
    """63 training images (three demo classes of 21): batches of 8 leave one of 7, which the base drops; the
    head dropped it too late before: `--batch_size 7 does not split over 2 processes` after the base."""
    args = ["--dataset", "demo", "--setting", "unified", "--image_size", "64", "--iters", "2", "--batch_size", "8",
            "--align", "none,cada", "--cada_iters", "9", "--cada_batch_size", "8", "--val_fraction", "0.1",
            "--data_path", str(tmp_path / "demo"), *SMALL]
    done = torchrun(args, tmp_path / "two")
    assert done.returncode == 0, done.stderr[-3000:]
    table = pd.read_csv(results_path(done))
    assert table["align"].tolist() == ["none"] * 6 + ["cada"] * 6  # 3 classes, mean, mixed, ideal: a block each
    assert table["I-AUROC"].notna().all()
    run_dir = results_path(done).parent
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["unified.pt", "unified_cada.pt"]


@pytest.mark.slow
def test_a_separate_run_whose_last_short_batch_does_not_split_is_refused_before_any_work(tmp_path):
    """NoCo keeps the last short batch: brick's 21 training images in batches of 8 end in one of 5."""
    args = ["--dataset", "demo", "--classes", "brick", "--image_size", "64", "--epochs", "1", "--batch_size", "8",
            "--data_path", str(tmp_path / "demo"), *SMALL]
    done = torchrun(args, tmp_path / "out")
    assert done.returncode != 0
    assert our_lines(done.stderr) == [
        "error: --batch_size 8: brick's 21 training images end in a short batch of 5, which does not split over 2 "
        "processes (the separate setting keeps it, as NoCo and RD4AD do, and no --batch_size splits it: 21 is not a "
        "multiple of 2); run it on one process"]
    assert "brick train" not in done.stderr and not (tmp_path / "out").exists()  # no training began


def test_batch_sizes_that_would_fail_mid_run_are_refused_naming_the_option():
    check_batches({"brick": 20, "grass": 21}, 8, "batch_size", False, world=1)  # one process takes any batch
    check_batches({"the union of the classes": 63}, 8, "cada_batch_size", True, world=2)  # the 7 are dropped
    with pytest.raises(ValueError, match=r"^--batch_size 8: grass's 21 training images end in a short batch of 5"):
        check_batches({"brick": 20, "grass": 21}, 8, "batch_size", False, world=2)
    check_batches({"brick": 20, "grass": 28}, 8, "batch_size", False, world=4)  # short batches of 4: one row each
    with pytest.raises(ValueError, match=r"^--cada_batch_size 16: the union of the classes has 15 training images, "
                                         r"not one full batch \(the last short batch is dropped\); lower "
                                         r"--cada_batch_size$"):
        check_batches({"the union of the classes": 15}, 16, "cada_batch_size", True)


@pytest.mark.slow
def test_every_process_evaluates_the_model_rank_0_saves(tmp_path):
    """RevDist has BatchNorm: under DistributedDataParallel on CPUs each process ends training with the
    running statistics of its own slice of the last batch; evaluated so, each shard would meet another
    model. The table of two processes equals one process re-evaluating their checkpoint."""
    args = ["--method", "revdist", "--dataset", "demo", "--classes", "brick,grass", "--image_size", "64",
            "--iters", "3", "--batch_size", "8", "--data_path", str(tmp_path / "demo"), *SMALL]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(REPO / "train_mvtec.py"), *args, "--out_dir", str(tmp_path / "two")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    two = results_path(done).parent
    assert json.loads((two / "config.json").read_text())["processes"] == 2
    again = run_script("train_mvtec.py", *args, "--checkpoint", str(two), "--out_dir", str(tmp_path / "one"))
    assert json.loads((results_path(again).parent / "config.json").read_text())["processes"] == 1
    pd.testing.assert_frame_equal(pd.read_csv(results_path(again)), pd.read_csv(two / "results.csv"))


@pytest.mark.parametrize("world", [2, 3])
def test_gathered_maps_come_back_in_the_dataset_order(world, monkeypatch):
    """utils.distributed.gathered reassembles the interleaved shards (all_gather_object stubbed)."""
    n = 7
    whole = ClassMaps(torch.arange(n * 4.0).view(n, 2, 2), torch.arange(n) % 2, torch.zeros(n, 2, 2, dtype=torch.bool),
                      torch.arange(n * 3.0).view(n, 3), None)
    shards = [ClassMaps(whole.maps[r::world], whole.labels[r::world], whole.masks[r::world], whole.features[r::world])
              for r in range(world)]
    monkeypatch.setattr(distributed.dist, "all_gather_object", lambda parts, mine: parts.__setitem__(slice(None), shards))
    joined = distributed.gathered(shards[0], n, world)
    assert torch.equal(joined.maps, whole.maps) and torch.equal(joined.labels, whole.labels)
    assert torch.equal(joined.features, whole.features) and joined.probe is None


def write_in_rank_order(rank, world, folder):
    """One torchrun-like process: rank 0 writes a file slowly inside rank0_first; every rank records whether the
    file was complete when its own block began."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world)
    try:
        with distributed.rank0_first(rank, world):
            seen = (folder / "made").exists()
            if rank == 0:
                time.sleep(1.0)  # a dataset being written
                (folder / "made").write_text("done")
        (folder / f"seen{rank}").write_text(str(seen))
    finally:
        torch.distributed.destroy_process_group()


def test_rank0_writes_the_data_before_the_other_processes_read_it(tmp_path):
    """The demo set, a download: written by rank 0 while the others wait (two writers raced before: a half-written
    PNG)."""
    torch.multiprocessing.spawn(write_in_rank_order, args=(2, tmp_path), nprocs=2)
    assert (tmp_path / "seen0").read_text() == "False"  # rank 0 made it
    assert (tmp_path / "seen1").read_text() == "True"   # rank 1 began after it was complete

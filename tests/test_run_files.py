"""A run's own folder (exclusive creation, even for runs started together) and the files read back
(checkpoints, training snapshots, the partial table, config.json): a damaged one is refused in one line."""
import json
import os
import re
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import torch

from utils import results
from utils.results import PARTIAL_NAME, RunFolder, metrics_row, new_run_path, read_run_config, save_checkpoint
from utils.training import check_saved_files, fingerprint, restore_snapshot, saved_state, training_snapshot

REPO = Path(__file__).resolve().parent.parent
CONFIG = {"method": "noco", "lr": 1e-3, "classes": ("brick",), "out_dir": "results"}
IGNORE = {"out_dir"}


def row(name, i_auroc):
    return metrics_row(name, {"I-AUROC": i_auroc, "I-AP": 0.5}, model=name)


@pytest.mark.parametrize("one_stamp", [False, True])
def test_run_folder_names_are_readable_and_runs_started_together_get_a_folder_each(tmp_path, monkeypatch, one_stamp):
    """The promise is exclusive creation, not a random suffix: 50 runs started at once get 50 folders, even
    when every one wants the same name (then <name>, <name>_2, ..., <name>_50)."""
    if one_stamp:
        monkeypatch.setattr(results, "_stamp", lambda: "20250101-120000-000_abcd")
    runs, barrier = 50, threading.Barrier(50)

    def start_run(_):
        barrier.wait()  # all 50 ask for their folder at once
        return results._create_new_folder(new_run_path(tmp_path, "train_mvtec", "demo", "noco", "separate"))

    with ThreadPoolExecutor(runs) as pool:
        folders = list(pool.map(start_run, range(runs)))
    assert len(set(folders)) == runs and sorted(tmp_path.iterdir()) == sorted(folders)
    assert all(re.fullmatch(r"train_mvtec_demo_noco_separate_\d{8}-\d{6}-\d{3}_[0-9a-f]{4}(_\d+)?", path.name)
               for path in folders)
    if one_stamp:
        wanted = "train_mvtec_demo_noco_separate_20250101-120000-000_abcd"
        assert sorted(path.name for path in folders) == sorted([wanted] + [f"{wanted}_{n}" for n in range(2, 51)])


def test_two_runs_wanting_one_name_at_the_same_time_get_a_folder_and_a_table_each(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "_stamp", lambda: "20250101-120000-000_abcd")  # same millisecond, same suffix
    first, second = (RunFolder(new_run_path(tmp_path, "train_mvtec", "demo"), {"run": run}, "cpu", 0.0)
                     for run in ("first", "second"))
    assert not list(tmp_path.iterdir())  # no folder before the first result
    first.add_rows([row("brick", 0.9)])
    second.add_rows([row("brick", 0.6)])
    assert first.path != second.path and second.path.name == first.path.name + "_2"
    for run, auroc in ((first, 90.0), (second, 60.0)):
        table = pd.read_csv(run.finish())
        assert table.loc[0, "I-AUROC"] == auroc
        assert json.loads((run.path / "config.json").read_text())["config"] == run.config
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.path.name, second.path.name]


def test_runs_racing_for_one_name_in_threads_never_share_a_folder(tmp_path):
    runs = [RunFolder(tmp_path / "run", {}, "cpu", 0.0) for _ in range(8)]
    start = threading.Barrier(len(runs))
    paths = []

    def create(run):
        start.wait()
        paths.append(run.path)

    threads = [threading.Thread(target=create, args=(run,)) for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(paths)) == 8 and all(path.is_dir() for path in paths)


def test_only_the_writer_creates_and_removing_a_snapshot_creates_nothing(tmp_path):
    reader = RunFolder(tmp_path / "run", {}, "cpu", 0.0, writer=False)
    reader.add_rows([row("brick", 0.9)])
    reader.finish()
    writer = RunFolder(tmp_path / "run", {}, "cpu", 0.0)
    writer.remove_checkpoint("brick.train")
    assert not (tmp_path / "run").exists()
    writer.save_checkpoint({"x": 1}, "brick.train")
    writer.remove_checkpoint("brick.train")
    assert writer.path == tmp_path / "run" and not (tmp_path / "run" / "checkpoints" / "brick.train.pt").exists()


@pytest.mark.slow
def test_two_script_runs_started_together_write_two_folders(tmp_path):
    from datasets.demo import make_demo
    make_demo(tmp_path / "demo")  # once, so the two runs do not race on generating it
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("TRACEBACK", None)
    same_name = ("import runpy, sys, utils.results; utils.results._stamp = lambda: '20250101-120000-000_abcd'; "
                 "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")  # force a collision
    command = [sys.executable, "-c", same_name, str(REPO / "train_mvtec.py"), "--dataset", "demo", "--data_path",
               str(tmp_path / "demo"), "--weights", "none", "--image_size", "64", "--classes", "brick", "--epochs", "1",
               "--device", "cpu", "--num_workers", "0", "--out_dir", str(tmp_path / "out")]
    processes = [subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], [err[-2000:] for _, err in outputs]
    reported = [Path(out.strip().splitlines()[-1].removeprefix("results: ")) for out, _ in outputs]
    assert sorted(path.parent.name for path in reported) == ["train_mvtec_demo_noco_separate_20250101-120000-000_abcd",
                                                           "train_mvtec_demo_noco_separate_20250101-120000-000_abcd_2"]
    assert sorted((tmp_path / "out").glob("*/results.csv")) == sorted(reported)
    for path in reported:
        assert json.loads((path.parent / "config.json").read_text())["status"] == "complete"
        assert (path.parent / "checkpoints" / "brick.pt").is_file()


# --- files read back -------------------------------------------------------------------------------

def train_steps(model, optimizer, scheduler, steps):
    for _ in range(steps):
        loss = torch.nn.functional.dropout(model(torch.randn(4, 3)), 0.5).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()


def fresh_training():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, amsgrad=True)
    return model, optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, [4], gamma=0.1)


def write_checkpoint(path, config=CONFIG):
    state = {"model": torch.nn.Linear(3, 2).state_dict(), "training_config": config,
             "fingerprint": fingerprint(config, IGNORE)}
    return save_checkpoint(state, path)


def write_snapshot(path):
    model, optimizer, scheduler = fresh_training()
    train_steps(model, optimizer, scheduler, 2)
    return save_checkpoint(training_snapshot(model, optimizer, scheduler, 2, "abc"), path)


def damage(path, how):
    """Turn the file at `path` into a text file, random bytes, a pickled module, or its first half."""
    if how == "text":
        path.write_text("this is not a checkpoint\n")
    elif how == "random":
        path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(1),
                                       dtype=torch.uint8).numpy().tobytes())
    elif how == "module":  # a whole model object: weights_only refuses it, and torch's message advises otherwise
        torch.save(torch.nn.Linear(3, 2), path)
    else:
        path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    return path


def refused(call, path):
    with pytest.raises(ValueError) as error:
        call()
    message = str(error.value)
    assert len(message.splitlines()) == 1 and path.name in message and "weights_only" not in message, message
    return message


def test_a_snapshot_round_trips_with_weights_only_and_resumes_to_the_same_numbers(tmp_path):
    model, optimizer, scheduler = fresh_training()
    train_steps(model, optimizer, scheduler, 8)  # the milestone at step 4 lies after the snapshot
    whole = model.state_dict()

    model, optimizer, scheduler = fresh_training()
    train_steps(model, optimizer, scheduler, 3)
    snapshot = tmp_path / "run" / "checkpoints" / "unified.train.pt"
    save_checkpoint(training_snapshot(model, optimizer, scheduler, 3, "abc"), snapshot)
    assert torch.load(snapshot, weights_only=True)["scheduler"]["milestones"] == {4: 1}

    model, optimizer, scheduler = fresh_training()
    torch.manual_seed(123)  # restore_snapshot puts the saved RNG state back
    assert restore_snapshot(snapshot, "abc", model, optimizer, scheduler) == 3
    train_steps(model, optimizer, scheduler, 5)
    assert all(torch.equal(whole[k], v) for k, v in model.state_dict().items())
    assert scheduler.get_last_lr() == [pytest.approx(0.01)]
    assert restore_snapshot(snapshot, "other fingerprint", *fresh_training()) == 0


@pytest.mark.parametrize("how", ["text", "random", "half", "module"])
@pytest.mark.parametrize("given", ["file", "folder"])
def test_a_damaged_checkpoint_is_refused_in_one_line(tmp_path, how, given):
    path = damage(write_checkpoint(tmp_path / "run" / "checkpoints" / "brick.pt"), how)
    source = path if given == "file" else tmp_path / "run"
    message = refused(lambda: saved_state((None, source), "brick", CONFIG, IGNORE), path)
    assert message.startswith(f"--checkpoint {source}") and "not a model checkpoint of this suite" in message
    refused(lambda: check_saved_files(None, source, CONFIG), path)
    refused(lambda: saved_state((tmp_path / "run", None), "brick", CONFIG, IGNORE), path)  # --resume's own


@pytest.mark.parametrize("how", ["text", "random", "half"])
def test_a_damaged_snapshot_is_refused_in_one_line(tmp_path, how):
    path = damage(write_snapshot(tmp_path / "run" / "checkpoints" / "unified.train.pt"), how)
    message = refused(lambda: restore_snapshot(path, "abc", *fresh_training()), path)
    assert message.startswith(f"--resume {tmp_path / 'run'}: checkpoints/unified.train.pt: not a training snapshot")
    refused(lambda: check_saved_files(tmp_path / "run", None, CONFIG), path)


def test_a_snapshot_given_as_a_checkpoint_and_the_reverse_are_refused(tmp_path):
    snapshot = write_snapshot(tmp_path / "a.pt")
    message = refused(lambda: saved_state((None, snapshot), "brick", CONFIG, IGNORE), snapshot)
    assert "not a model checkpoint of this suite (no training_config: it is a training snapshot)" in message
    checkpoint = write_checkpoint(tmp_path / "run" / "checkpoints" / "unified.train.pt")
    message = refused(lambda: restore_snapshot(checkpoint, "abc", *fresh_training()), checkpoint)
    assert "not a training snapshot of this suite (no optimizer, scheduler, iteration, rng, cuda_rng: " \
           "it is a model checkpoint)" in message
    refused(lambda: check_saved_files(tmp_path / "run", None, CONFIG), checkpoint)


def test_a_checkpoint_of_another_script_or_method_is_refused_naming_that(tmp_path):
    other_script = write_checkpoint(tmp_path / "script.pt", {**CONFIG, "superclasses": True})
    message = refused(lambda: saved_state((None, other_script), "brick", CONFIG, IGNORE), other_script)
    assert "a checkpoint of another script or version (options differ: ['superclasses'])" in message
    refused(lambda: check_saved_files(None, other_script, CONFIG), other_script)
    other_method = write_checkpoint(tmp_path / "method.pt", {**CONFIG, "method": "revdist"})
    message = refused(lambda: saved_state((None, other_method), "brick", CONFIG, IGNORE), other_method)
    assert "a checkpoint of --method revdist, this run is --method noco" in message
    semantic = save_checkpoint({"model": {}, "training_config": CONFIG, "class_name": "cat"}, tmp_path / "cat.pt")
    assert "(no fingerprint)" in refused(lambda: saved_state((None, semantic), "brick", CONFIG, IGNORE), semantic)
    assert saved_state((None, write_checkpoint(tmp_path / "good.pt")), "brick", CONFIG, IGNORE) is not None


def partial_table(run_dir):
    run = RunFolder(run_dir, CONFIG, "cpu", 0.0)
    run.add_rows([row("brick", 0.9), row("grass", 0.8)])
    return run_dir / PARTIAL_NAME


@pytest.mark.parametrize("how", ["random", "no columns", "half", "text in a metric"])
def test_a_damaged_partial_table_is_refused_in_one_line(tmp_path, how):
    path = partial_table(tmp_path / "run")
    if how == "no columns":
        path.write_text("model,score\nbrick,0.9\n")
    elif how == "text in a metric":
        path.write_text(path.read_text().replace("90.0", "ninety"))
    else:
        damage(path, "random" if how == "random" else "half")
    message = refused(lambda: RunFolder(tmp_path / "run", CONFIG, "cpu", 0.0, resume=True), path)
    assert message.startswith(f"--resume {tmp_path / 'run'}: {PARTIAL_NAME} is damaged")
    refused(lambda: check_saved_files(tmp_path / "run", None, CONFIG), path)


def test_a_whole_partial_table_is_read_back(tmp_path):
    partial_table(tmp_path / "run")
    resumed = RunFolder(tmp_path / "run", CONFIG, "cpu", 0.0, resume=True)
    assert resumed.finished("brick") and resumed.finished("grass") and not resumed.finished("gravel")


@pytest.mark.parametrize("text", ['{"status": "partial", "config": {"lr"', "[1, 2]", '{"status": "partial"}', None])
def test_a_damaged_config_json_is_refused_in_one_line(tmp_path, text):
    path = tmp_path / "run" / "config.json"
    path.parent.mkdir()
    if text is None:
        path.write_bytes(bytes(range(128, 256)))
    else:
        path.write_text(text)
    message = refused(lambda: read_run_config(tmp_path / "run"), path)
    assert message.startswith(f"--resume {tmp_path / 'run'}: config.json")

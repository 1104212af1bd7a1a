"""A run's own folder (exclusive creation, even for runs started together) and the files read back
(checkpoints, training snapshots, the partial table, config.json): a damaged one is refused in one line."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import torch

from utils import results
from utils.results import PARTIAL_NAME, RunFolder, metrics_row, new_run_path, read_run_config, save_checkpoint
from utils.training import (check_saved_files, class_data_fingerprint, fingerprint, restore_snapshot, saved_state,
                            training_snapshot)

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


def test_a_snapshot_round_trips_with_weights_only_and_resumes_to_the_same_numbers(tmp_path, capsys):
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
    assert capsys.readouterr().out == (f"--resume {tmp_path / 'run'}: checkpoints/unified.train.pt: saved while "
                                       "training with other options or data; training starts again\n")


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


# --- a run in progress, and a resume on changed data -------------------------------------------------

def test_a_run_in_progress_holds_its_folder_and_a_second_resume_is_refused_in_one_line(tmp_path):
    running = RunFolder(tmp_path / "run", CONFIG, "cpu", 0.0)
    running.add_rows([row("brick", 0.9)])
    message = refused(lambda: RunFolder(tmp_path / "run", CONFIG, "cpu", 0.0, resume=True), tmp_path / "run")
    assert message == (f"--resume {tmp_path / 'run'}: that run is still in progress (pid {os.getpid()} on "
                       f"{socket.gethostname()} holds its run.lock); resume it once that process has ended")
    assert RunFolder(tmp_path / "run", CONFIG, "cpu", 0.0, resume=True, writer=False).finished("brick")  # torchrun
    resumed = RunFolder(tmp_path / "run", CONFIG, "cpu", 0.0, resume=True, writer=False)  # rank > 0: no lock taken
    running.finish()  # the lock goes with the run: a resume now finds it complete
    assert not (tmp_path / "run" / "run.lock").exists() and resumed.rows
    with pytest.raises(ValueError, match="that run is complete"):
        RunFolder(tmp_path / "run", CONFIG, "cpu", 0.0, resume=True)


def test_a_killed_run_leaves_no_stuck_lock(tmp_path):
    holder = ("import sys, time; from utils.results import RunFolder, metrics_row; "
              "run = RunFolder(sys.argv[1], {}, 'cpu', 0.0); run.add_rows([metrics_row('brick', {'I-AUROC': 0.9}, "
              "model='brick')]); print('ready', flush=True); time.sleep(300)")
    process = subprocess.Popen([sys.executable, "-c", holder, str(tmp_path / "run")], cwd=REPO, text=True,
                               stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert process.stdout.readline().strip() == "ready"
        assert f"pid {process.pid} on" in refused(lambda: RunFolder(tmp_path / "run", {}, "cpu", 0.0, resume=True),
                                                  tmp_path / "run")
    finally:
        process.kill()  # SIGKILL: no handler runs; the lock file stays, its lock goes
        process.wait(timeout=60)
    assert (tmp_path / "run" / "run.lock").read_text().startswith(f"pid {process.pid} ")
    resumed = RunFolder(tmp_path / "run", {}, "cpu", 0.0, resume=True)
    assert resumed.finished("brick")
    assert (tmp_path / "run" / "run.lock").read_text() == f"pid {os.getpid()} on {socket.gethostname()}\n"


def test_resume_refuses_a_finished_class_whose_images_changed(tmp_path, capsys):
    running = RunFolder(tmp_path / "run", CONFIG, "cpu", 0.0)
    running.add_rows([row("brick", 0.9), row("grass", 0.8)], {"brick": "1234567890e1", "grass": "00aa"})
    del running
    resumed = RunFolder(tmp_path / "run", CONFIG, "cpu", 0.0, resume=True)
    assert [r["data"] for r in resumed.rows] == ["1234567890e1", "00aa"]  # read back as text, not a number
    resumed.check_finished_data({"brick": "1234567890e1", "grass": "00aa", "gravel": "ffff"})  # the same data
    message = refused(lambda: resumed.check_finished_data({"brick": "1234567890e1", "grass": "00ab"}),
                      tmp_path / "run")
    assert message == (f"--resume {tmp_path / 'run'}: the images of grass changed since its row was computed "
                       "(files added, removed or resized); start a new run for the changed data")
    assert "data" not in pd.read_csv(resumed.finish()).columns  # the final table leaves the fingerprints out
    older = RunFolder(tmp_path / "old", CONFIG, "cpu", 0.0)
    older.add_rows([row("brick", 0.9)])  # a table of an older version: no fingerprint
    del older
    RunFolder(tmp_path / "old", CONFIG, "cpu", 0.0, resume=True).check_finished_data({"brick": "1234"})
    assert "records no fingerprint of the data (an older version)" in capsys.readouterr().out


def test_the_class_fingerprint_follows_every_image_and_mask_of_the_class(tmp_path):
    from datasets.demo import make_demo
    from datasets.mvtec import MVTecDataset
    root = make_demo(tmp_path / "demo", image_size=32, n_train=4, n_test_good=2, n_test_defect=3, classes=("brick",))

    def fingerprint_now():
        return class_data_fingerprint([MVTecDataset(root, "brick", split, 32, 0) for split in ("train", "test")])

    first = fingerprint_now()
    assert fingerprint_now() == first
    for change in (lambda: (root / "brick/train/good/003.png").unlink(),
                   lambda: (root / "brick/test/good/001.png").unlink(),
                   lambda: (root / "brick/ground_truth/scratch/000_mask.png").write_bytes(b"\0" * 10),
                   lambda: [((root / f"brick/{folder}/crack").mkdir(),  # the same files in another defect type
                             (root / f"brick/{folder}/blob/000{end}").rename(root / f"brick/{folder}/crack/000{end}"))
                            for folder, end in (("test", ".png"), ("ground_truth", "_mask.png"))]):
        before = fingerprint_now()
        change()
        assert fingerprint_now() != before


@pytest.mark.slow
def test_a_second_resume_of_a_running_run_and_a_resume_on_changed_data_are_refused_before_any_work(tmp_path):
    from datasets.demo import make_demo
    demo = make_demo(tmp_path / "demo")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("TRACEBACK", None)
    args = ["--dataset", "demo", "--data_path", str(demo), "--image_size", "64", "--epochs", "4", "--weights", "none",
            "--backbone", "resnet18", "--device", "cpu", "--num_workers", "0", "--out_dir", str(tmp_path / "out")]
    running = subprocess.Popen([sys.executable, str(REPO / "train_mvtec.py"), *args], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def resume(run_dir):
        return subprocess.run([sys.executable, str(REPO / "train_mvtec.py"), "--resume", str(run_dir)], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=300)

    try:
        deadline = time.time() + 240
        while not list((tmp_path / "out").glob("*/results.partial.csv")) and time.time() < deadline:
            time.sleep(0.05)
        running.send_signal(signal.SIGSTOP)  # the first class is finished; the run, paused, is still in progress
        (run_dir,) = (tmp_path / "out").iterdir()
        second = resume(run_dir)
        assert second.returncode == 1 and second.stderr.splitlines() == [
            f"error: --resume {run_dir}: that run is still in progress (pid {running.pid} on {socket.gethostname()} "
            "holds its run.lock); resume it once that process has ended", "(set TRACEBACK=1 for the traceback)"]
    finally:
        running.send_signal(signal.SIGCONT)
        running.send_signal(signal.SIGINT)  # interrupted: the finished classes stay
        running.communicate(timeout=120)
    before = (run_dir / PARTIAL_NAME).read_text()
    finished = pd.read_csv(run_dir / PARTIAL_NAME)["class"].tolist()[0]
    for path in [*sorted((demo / finished / "train" / "good").iterdir())[:10],
                 *sorted((demo / finished / "test" / "good").iterdir())[:2]]:
        path.unlink()  # ten training and two test images of the finished class removed
    changed = resume(run_dir)
    assert changed.returncode == 1 and changed.stderr.splitlines()[0] == (
        f"error: --resume {run_dir}: the images of {finished} changed since its row was computed (files added, "
        "removed or resized); start a new run for the changed data"), changed.stderr[-2000:]
    assert (run_dir / PARTIAL_NAME).read_text() == before and not (run_dir / "results.csv").exists()  # no work

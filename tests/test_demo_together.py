"""Runs started together on a new demo folder: each makes the demo set at once, all succeed and every
image decodes (two of three died on a half-written PNG before)."""
import json
import multiprocessing

import numpy as np
import pytest
from PIL import Image

from datasets.demo import MARKER_NAME, make_demo

DEMO = dict(image_size=128, n_train=12, n_test_good=2, n_test_defect=6)
WRITERS = 4


def make_after(start, root, demo, results):
    start.wait()  # every process begins at the same moment
    try:
        decoded(make_demo(root, **demo))  # what a run reads as soon as the set is there
        results.put("ok")
    except Exception as error:  # reported back: the test shows what broke
        results.put(f"{type(error).__name__}: {error}")


def make_together(root, demo):
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(WRITERS), context.Queue()
    processes = [context.Process(target=make_after, args=(start, root, demo, results)) for _ in range(WRITERS)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    return outcomes


def decoded(root):
    """Every PNG under root, fully decoded (a truncated one raises)."""
    images = {}
    for path in sorted(root.rglob("*.png")):
        with Image.open(path) as image:
            images[path.relative_to(root).as_posix()] = np.asarray(image)
    return images


@pytest.mark.parametrize("existing", ["new folder", "older set"])
def test_runs_making_the_demo_into_one_folder_at_once_all_succeed_and_every_image_decodes(tmp_path, existing):
    root = tmp_path / "demo"
    if existing == "older set":  # a set made with other parameters is replaced, not mixed
        make_demo(root, **{**DEMO, "n_train": 20, "seed": 5})
    assert make_together(root, DEMO) == ["ok"] * WRITERS
    images = decoded(root)
    per_class = 12 + 2 + 6 + 6  # train, test good, test defects and their masks
    assert len(images) == 3 * per_class
    assert json.loads((root / MARKER_NAME).read_text())["n_train"] == 12
    reference = decoded(make_demo(tmp_path / "alone", **DEMO))  # one process alone writes the same bytes
    assert images.keys() == reference.keys()
    assert all(np.array_equal(images[name], reference[name]) for name in reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".alone.lock", ".demo.lock", "alone", "demo"]  # no temp

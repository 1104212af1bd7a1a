"""Bad options and bad files end the three scripts in one line naming them, before any work: no class is trained
and no run folder is made (issue 27: items 4 and 7)."""
import shutil

import numpy as np
import pytest
from PIL import Image

from datasets.demo import make_demo
from tests.test_scripts import SMALL, run_script

pytestmark = pytest.mark.slow  # every test here starts a script


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    make_demo(root)
    return root


def assert_one_line(done, message, cwd):
    assert done.returncode == 1 and done.stderr.startswith("error: "), done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert lines == [f"error: {message}", "(set TRACEBACK=1 for the traceback)"], done.stderr[-2000:]
    assert not (cwd / "out").exists() and not (cwd / "results").exists()


@pytest.mark.parametrize("script, args, message", [
    ("train_mvtec.py", ["--layers", "layer9"], "--layers: expected each one of layer1, layer2, layer3, layer4, "
                                               "avgpool (the taps of resnet18), got 'layer9' (in layer9)"),
    ("train_mvtec.py", ["--layers", "layer2,avgpool"], "--layers avgpool: the pooled vector is the semantic scripts' "
     "tap (one score per image); structured AD needs spatial taps (layer1-layer4)"),
    ("train_mvtec.py", ["--dataset", "cifar10", "--data_path", "{demo}"],
     "--dataset: expected one of mvtec, mpdd, visa, btad, demo, got 'cifar10'"),
    ("train_mvtec.py", ["--seed", "-1"], "--seed: expected a non-negative int, got -1"),
    ("train_mvtec.py", ["--blur_kernel", "3"], "--blur_kernel: expected one of 0, 5, got 3"),
    ("train_mvtec.py", ["--out_dir", ""], '--out_dir: expected a folder, got ""'),
    ("train_mnist.py", ["--seed", "-1"], "--seed: expected a non-negative int, got -1"),
    ("train_cifar10.py", ["--out_dir", ""], '--out_dir: expected a folder, got ""'),
])
def test_a_bad_option_is_one_line_naming_it(script, args, message, demo_root, tmp_path):
    args = [arg.format(demo=demo_root) for arg in args]
    out = [] if "--out_dir" in args else ["--out_dir", str(tmp_path / "out")]
    data = ["--dataset", "demo", "--data_path", str(demo_root)] if script == "train_mvtec.py" else []
    data = data if "--dataset" not in args else []
    done = run_script(script, *SMALL, *data, *args, *out, cwd=tmp_path, expect_ok=False)
    assert_one_line(done, message, tmp_path)


def cut_body(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])  # the header is whole: only decoding finds it


@pytest.mark.parametrize("damage", ["a truncated defect image", "every mask empty"])  # the others: test_image_modes
def test_a_damaged_file_of_the_second_class_stops_the_run_before_the_first_class_trains(damage, demo_root,
                                                                                       tmp_path):
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    grass = root / "grass"
    defect = sorted((grass / "test").glob("[!g]*/*.png"))[0]  # the first image of a defect folder
    if damage == "a truncated defect image":
        cut_body(defect)
        message = f"cannot read image {defect}: image file is truncated"
    else:
        masks = sorted((grass / "ground_truth").glob("*/*_mask.png"))
        for each in masks:
            Image.fromarray(np.zeros(Image.open(each).size[::-1], np.uint8)).save(each)
        message = (f"every defect mask of class grass is empty (first: {masks[0]}): expected the defects' pixels > 0 "
                   "in its ground_truth masks; the pixel metrics need marked pixels")
    done = run_script("train_mvtec.py", *SMALL, "--dataset", "demo", "--data_path", str(root), "--classes",
                      "brick,grass", "--out_dir", str(tmp_path / "out"), cwd=tmp_path, expect_ok=False)
    assert "brick train" not in done.stderr  # the first class never started
    assert_one_line(done, message, tmp_path)

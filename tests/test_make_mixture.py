"""benchmarks/make_mixture.py: the balanced cut of a Magnetic-Tile-like class, its counts, seeds and masks."""
import json

import numpy as np
import pytest
from PIL import Image

from benchmarks.make_mixture import balanced_selection, class_samples, copy_selection, main, proportional_counts

KINDS = {"blowhole": 33, "crack": 11, "fray": 16}  # 60 anomalous test images, in proportion 6.6 : 2.2 : 3.2 of 12


def write_png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 6), value, dtype=np.uint8)).save(path)


@pytest.fixture
def fake_tile(tmp_path):
    """A small Magnetic-Tile-like class: 40 training images, 15 normal test images, KINDS anomalous, with masks."""
    root = tmp_path / "source" / "magnetic_tile"
    for i in range(40):
        write_png(root / "train" / "good" / f"train_{i}.png", i)
    for i in range(15):
        write_png(root / "test" / "good" / f"good_{i}.png", 100 + i)
    for k, (kind, count) in enumerate(KINDS.items()):
        for i in range(count):
            write_png(root / "test" / kind / f"{kind}_{i}.png", i)
            write_png(root / "ground_truth" / kind / f"{kind}_{i}_mask.png", 50 * k + i)  # each mask its own bytes
    return root


def test_proportional_counts_use_the_largest_remainders():
    assert proportional_counts(KINDS, 12) == {"blowhole": 7, "crack": 2, "fray": 3}
    assert proportional_counts({"b": 1, "a": 1}, 1) == {"a": 1, "b": 0}  # a tie goes to the first name
    assert proportional_counts({"blowhole": 115, "break": 85, "crack": 57, "fray": 32, "uneven": 103}, 12) == {
        "blowhole": 3, "break": 3, "crack": 2, "fray": 1, "uneven": 3}  # Magnetic Tile's kinds
    with pytest.raises(ValueError, match="cannot draw 61 images from 60"):
        proportional_counts(KINDS, 61)


def test_the_balanced_cut_draws_each_folder_in_proportion_the_same_files_for_the_same_seed(fake_tile, tmp_path):
    samples = class_samples(fake_tile)
    first = balanced_selection(samples, 24, 8, 12, seed=0)
    assert {folder: len(files) for folder, files in first.items()} == {
        "train/good": 24, "test/good": 8, "test/blowhole": 7, "test/crack": 2, "test/fray": 3}
    assert balanced_selection(samples, 24, 8, 12, seed=0) == first
    other = balanced_selection(samples, 24, 8, 12, seed=1)
    assert other["train/good"] != first["train/good"] and other["test/blowhole"] != first["test/blowhole"]
    with pytest.raises(ValueError, match="test/good holds 15 images, fewer than the 16 wanted"):
        balanced_selection(samples, 24, 16, 12, seed=0)
    copy_selection(first, fake_tile, tmp_path / "cut")
    copied = sorted(p.relative_to(tmp_path / "cut").as_posix() for p in (tmp_path / "cut").rglob("*.png"))
    masks = [p for p in copied if p.startswith("ground_truth/")]
    assert len(copied) == 24 + 8 + 12 + 12 and len(masks) == 12
    for kind in KINDS:  # every anomalous image copied with its own mask, byte for byte
        images = sorted(p.split("/")[-1][:-4] for p in copied if p.startswith(f"test/{kind}/"))
        assert sorted(p.split("/")[-1][:-len("_mask.png")] for p in masks if f"/{kind}/" in p) == images
        for name in images:
            mask = f"ground_truth/{kind}/{name}_mask.png"
            assert (tmp_path / "cut" / mask).read_bytes() == (fake_tile / mask).read_bytes()


def test_one_command_makes_the_balanced_mixture_and_refuses_bad_input_in_one_line(fake_tile, tmp_path, capsys):
    out = tmp_path / "mixture"
    main([str(fake_tile), str(out), "--balanced", "--seed", "3"])
    printed = capsys.readouterr().out
    assert "magnetic_tile (train/good 24, test/good 8, test/blowhole 7, test/crack 2, test/fray 3)" in printed
    assert sorted(p.name for p in out.iterdir()) == ["brick", "demo.json", "grass", "gravel", "magnetic_tile",
                                                      "mixture.json"]
    manifest = json.loads((out / "mixture.json").read_text())
    assert manifest["request"]["seed"] == 3 and len(manifest["files"]["magnetic_tile"]) == 24 + 8 + 12
    assert len(list((out / "brick" / "train" / "good").iterdir())) == 24  # the size the cut follows
    main([str(fake_tile), str(out), "--balanced", "--seed", "3"])  # made already: nothing to do
    with pytest.raises(SystemExit, match="exists and is not this mixture"):
        main([str(fake_tile), str(out), "--balanced", "--seed", "4"])
    with pytest.raises(SystemExit, match="dataset not found"):
        main([str(tmp_path / "missing" / "magnetic_tile"), str(tmp_path / "other"), "--balanced"])
    with pytest.raises(SystemExit, match="--seed draws the balanced cut only"):
        main([str(fake_tile), str(tmp_path / "other"), "--seed", "2"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixture", "source"]  # nothing half-written

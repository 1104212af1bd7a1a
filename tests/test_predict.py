"""Issue 19: thresholds from held-out normal images, the test set's rates at them, predict.py and its ONNX export."""
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from datasets.demo import make_demo
from datasets.mvtec import MVTecDataset
from tests.test_scripts import SMALL, results_path, run_script
from utils.evaluation import ClassMaps, held_out_thresholds
from utils.thresholds import hold_out, threshold_at, threshold_entry, too_few
from utils.training import data_fingerprint

TINY = ["--dataset", "demo", "--image_size", "64", *SMALL]
REVDIST = ["--method", "revdist", "--iters", "4", "--batch_size", "8", "--classes", "brick,grass", "--align",
           "none,cada", "--cada_iters", "5"]
# one tiny unified run per base, every alignment predict.py exports trained in it (class_aware needs the class)
BASE_ALIGNS = ("none", "cada", "classifier", "cluster")
UNIFIED = ["--weights", "none", "--device", "cpu", "--num_workers", "0", "--iters", "2", "--cada_iters", "3",
           "--classes", "brick,grass", "--align", ",".join(BASE_ALIGNS)]
BASES = {"uniad": ["--backbone", "efficientnet_lite0"],  # the demo preset's 128 px: UniAD's 7x7 mask needs >= 128
         "recontrast": ["--backbone", "resnet18", "--image_size", "64", "--batch_size", "8"],
         "dinomaly": ["--image_size", "56", "--batch_size", "4"]}  # the demo preset's ViT-S at 4 x 4 patches


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    make_demo(root)
    return root


def test_the_held_out_split_is_seeded_disjoint_and_never_takes_every_image(demo_root):
    train = MVTecDataset(demo_root, "brick", "train")
    kept, held = hold_out(train, 0.1, seed=0)
    assert len(held.samples) == 3 and len(kept.samples) == 21  # max(3, round(0.1 * 24))
    assert sorted(kept.samples + held.samples) == sorted(train.samples) and not set(kept.samples) & set(held.samples)
    assert hold_out(train, 0.1, seed=0)[1].samples == held.samples != hold_out(train, 0.1, seed=1)[1].samples
    assert len(hold_out(train, 0.5, seed=0)[1].samples) == 12 and hold_out(train, 0.0, seed=0)[1].samples == []
    assert data_fingerprint([kept]) != data_fingerprint([train])  # another training set: another checkpoint
    train.samples, train.labels = train.samples[:4], train.labels[:4]
    assert len(hold_out(train, 0.1, seed=0)[0].samples) == 2  # at most half of a small class
    train.samples, train.labels = train.samples[:2], train.labels[:2]
    assert len(hold_out(train, 0.1, seed=0)[0].samples) == 1  # never all of them
    train.samples, train.labels = train.samples[:1], train.labels[:1]
    with pytest.raises(ValueError, match="--val_fraction 0"):
        hold_out(train, 0.1, seed=0)


def test_a_threshold_is_the_score_that_the_false_alarm_rate_of_held_out_normals_exceed():
    scores = torch.arange(1.0, 201.0)
    assert threshold_at(scores, 0.01) == 198.0  # two of 200 above it
    assert threshold_at(scores, 0.0) == 200.0 and threshold_at(scores[:3], 0.01) == 3.0
    held = {"a": ClassMaps(torch.rand(5, 8, 8), torch.zeros(5), torch.zeros(5, 8, 8, dtype=torch.bool)),
            "b": ClassMaps(torch.rand(4, 8, 8) + 1, torch.zeros(4), torch.zeros(4, 8, 8, dtype=torch.bool))}
    cfg = SimpleNamespace(blur_sigma=0.0, blur_kernel=0, image_score="max", top_fraction=0.01)
    entry = held_out_thresholds(held, cfg, None, 0.01)
    assert entry["held_out_images"] == 9 and entry["image"] == held["b"].maps.max().item()  # one over every class
    pixels = torch.cat([class_maps.maps.flatten() for class_maps in held.values()])
    assert entry["pixel"] == pixels.sort().values[-6].item()  # floor(1 % of 576) = 5 pixels above it
    # 9 < 1 / 0.01 images: the threshold is their maximum, and thresholds.json says so
    assert (entry["image_rank"], entry["image_above"]) == (1, 0.0) and entry["image_quantile"].startswith(
        "maximum of 9 images") and too_few(9, 0.01)
    assert (entry["pixel_rank"], entry["pixel_above"]) == (6, 5 / 576)
    assert entry["pixel_quantile"].startswith("6th highest of 576 pixels")


def test_the_rank_a_threshold_reached_counts_the_scores_above_it_ties_included():
    entry = threshold_entry(torch.arange(1.0, 301.0), torch.arange(1.0, 1001.0), 0.01)
    assert (entry["image"], entry["image_rank"], entry["image_above"]) == (297.0, 4, 0.01)  # 3 of 300 above
    assert entry["image_quantile"] == "4th highest of 300 images (1 % above it)" and not too_few(300, 0.01)
    assert (entry["pixel"], entry["pixel_rank"], entry["pixel_above"]) == (990.0, 11, 0.01)
    tied = threshold_entry(torch.tensor([1.0, 2.0, 2.0, 2.0]), torch.ones(4), 0.5)
    assert (tied["image"], tied["image_rank"], tied["image_above"]) == (2.0, 3, 0.0)  # 3rd highest: a tie, none above
    assert too_few(99, 0.01) and not too_few(100, 0.01) and too_few(9, 0.1) and not too_few(10, 0.1)


@pytest.fixture(scope="module")
def revdist_run(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    done = run_script("train_mvtec.py", *TINY, "--data_path", str(demo_root), *REVDIST, "--out_dir", str(out))
    (out / "stdout.txt").write_text(done.stdout)  # what the training printed, for the tests that read it
    return results_path(done).parent


def predict(*args, expect_ok=True):
    return run_script("predict.py", *args, expect_ok=expect_ok)


def held_out_files(demo_root, classes, fraction=0.1, seed=0):
    return [str(path) for c in classes for path, *_ in hold_out(MVTecDataset(demo_root, c, "train"), fraction,
                                                                  seed)[1].samples]


@pytest.mark.slow
def test_thresholds_come_from_held_out_normals_which_never_train_and_predict_scores_them_alike(
        revdist_run, demo_root, tmp_path):
    saved = json.loads((revdist_run / "thresholds.json").read_text())
    assert saved["false_alarm_rate"] == 0.01 and set(saved["models"]["unified"]) == {"none", "cada"}
    checkpoint = torch.load(revdist_run / "checkpoints" / "unified.pt", weights_only=True)
    kept = [hold_out(MVTecDataset(demo_root, c, "train"), 0.1, 0)[0] for c in ("brick", "grass")]
    assert checkpoint["training_config"]["training_data"] == data_fingerprint(kept)  # trained without them
    held = held_out_files(demo_root, ("brick", "grass"))
    for align, column in (("none", "score"), ("cada", "calibrated_score")):
        done = predict("--run", str(revdist_run), "--align", align, *held, "--out_dir", str(tmp_path / align),
                       "--device", "cpu")
        scores = pd.read_csv(results_path(done))[column]
        entry = saved["models"]["unified"][align]
        # 6 held-out images at a 1 % false-alarm rate: the threshold is their highest score, not a test image's
        assert entry["held_out_images"] == 6 and entry["image"] == pytest.approx(scores.max(), abs=1e-5)
        assert (entry["image_rank"], entry["image_quantile"]) == (1, "maximum of 6 images (0 % above it)")
    printed = (revdist_run.parent / "stdout.txt").read_text()  # once per model, not per alignment
    assert printed.count("unified: the image threshold is the maximum of the 6 held-out images, fewer than "
                         "1 / false_alarm_rate = 100: it cannot reach a false-alarm rate of 0.01") == 1
    table = pd.read_csv(revdist_run / "results.csv")
    rates = table[["FAR@thr", "recall@thr"]]
    assert list(table.columns[-2:]) == list(rates.columns)
    assert rates[table["class"] != "ideal"].notna().all().all() and rates[table["class"] == "ideal"].isna().all().all()


@pytest.mark.slow
def test_predict_reports_a_corrupt_file_and_scores_the_others_with_maps(revdist_run, demo_root, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(demo_root / "brick" / "test" / "good" / "000.png", folder / "a_good.png")
    (folder / "b_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    grey16 = (np.arange(90 * 70).reshape(90, 70) * 10 % 65536).astype(np.uint16)
    Image.fromarray(grey16).save(folder / "c_grey16.png")
    (folder / "d_notes.txt").write_text("a note left beside the images")
    done = predict("--run", str(revdist_run), str(folder), "--maps", "--out_dir", str(tmp_path / "out"),
                   "--device", "cpu", "--batch_size", "2")
    assert "2 of 4 files scored" in done.stdout and "images per second" in done.stdout
    assert "2 skipped (reasons in the skipped column): b_broken.png (cannot read image" in done.stdout
    assert "; d_notes.txt (not an image file name: expected .png" in done.stdout
    table = pd.read_csv(results_path(done), keep_default_na=False)
    assert [Path(p).name for p in table["path"]] == ["a_good.png", "b_broken.png", "c_grey16.png", "d_notes.txt"]
    assert table["skipped"][0] == table["skipped"][2] == "" and "b_broken.png" in table["skipped"][1]
    assert table["skipped"][3].startswith("not an image file name")
    assert table["score"][1] == table["score"][3] == ""
    assert all(np.isfinite(float(table["calibrated_score"][i])) for i in (0, 2))
    assert sorted(p.name for p in (tmp_path / "out" / "maps").iterdir()) == [
        "00000_a_good_mask.png", "00000_a_good_overlay.png", "00002_c_grey16_mask.png", "00002_c_grey16_overlay.png"]
    assert Image.open(tmp_path / "out" / "maps" / "00002_c_grey16_mask.png").size == (64, 64)
    # a second call: refused while the first one's outputs are there; --overwrite leaves none of its maps behind
    again = predict("--run", str(revdist_run), str(folder / "c_grey16.png"), "--out_dir", str(tmp_path / "out"),
                    "--device", "cpu", expect_ok=False)
    assert again.returncode == 1 and "holds predictions.csv and 4 more files of an earlier predict.py call" in (
        again.stderr) and "--overwrite" in again.stderr
    again = predict("--run", str(revdist_run), str(folder / "c_grey16.png"), "--out_dir", str(tmp_path / "out"),
                    "--device", "cpu", "--overwrite")
    assert len(pd.read_csv(results_path(again))) == 1 and not (tmp_path / "out" / "maps").exists()
    # every file skipped: one line, no pandas warning
    nothing = predict("--run", str(revdist_run), str(folder / "b_broken.png"), str(folder / "d_notes.txt"),
                      "--out_dir", str(tmp_path / "none"), "--device", "cpu")
    assert "no file scored: all 2 skipped (reasons in the skipped column): b_broken.png" in nothing.stdout
    assert "Warning" not in nothing.stderr and len(pd.read_csv(results_path(nothing))) == 2


@pytest.mark.slow
def test_a_run_folder_without_its_checkpoint_or_of_other_options_is_refused_before_any_work(revdist_run, tmp_path):
    image = str(next((revdist_run.parent.parent).rglob("*.png"), revdist_run / "none.png"))
    broken = tmp_path / "run"
    shutil.copytree(revdist_run, broken)
    (broken / "checkpoints" / "unified_cada.pt").unlink()
    done = predict("--run", str(broken), image, expect_ok=False)
    assert done.returncode == 1 and "no checkpoints/unified_cada.pt" in done.stderr
    assert not (broken / "predictions").exists()
    assert "error: --class_name" in predict("--run", str(revdist_run), "--class_name", "brick", image,
                                            expect_ok=False).stderr
    meta = json.loads((broken / "config.json").read_text())
    meta["config"]["an_option_of_another_version"] = 1
    (broken / "config.json").write_text(json.dumps(meta))
    assert "another script or version" in predict("--run", str(broken), "--align", "none", image,
                                                  expect_ok=False).stderr


def scoring_images(demo_root, trained, per_class=3):
    from utils.inference import run_transform
    transform = run_transform(trained.cfg)
    return torch.stack([transform.image(Image.open(path).convert("RGB")) for c in trained.classes
                        for path, *_ in MVTecDataset(demo_root, c, "test").samples[:per_class]])


def assert_onnx_gives_pytorch(onnx_path, scorer, images, threshold):
    """ONNX Runtime's maps within 1e-4 of the PyTorch scorer's and the same decisions at the image threshold."""
    import onnxruntime
    with torch.no_grad():
        maps, scores = (out.numpy() for out in scorer(images))
    onnx_maps, onnx_scores = onnxruntime.InferenceSession(str(onnx_path)).run(None, {"image": images.numpy()})
    assert onnx_maps.shape == maps.shape and onnx_scores.shape == scores.shape
    # a head trained 3 steps may predict gamma <= u: eq. 5 then divides by MIN_SPREAD and the maps reach 1e7,
    # where float32's spacing alone is above 1e-4, so the bound is relative to the maps' scale above 1
    assert np.abs(onnx_maps - maps).max() <= 1e-4 * max(1.0, np.abs(maps).max())
    assert ((onnx_scores > threshold) == (scores > threshold)).all()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["noco", "revdist"])
def test_the_onnx_export_gives_the_pytorch_maps_and_decisions(method, revdist_run, demo_root, tmp_path):
    pytest.importorskip("onnxruntime")
    from utils.inference import build_scorer, load_run
    if method == "revdist":
        run_dir, class_name = revdist_run, ""
    else:
        done = run_script("train_mvtec.py", *TINY, "--data_path", str(demo_root), "--classes", "grass", "--epochs",
                          "1", "--out_dir", str(tmp_path / "runs"))
        run_dir, class_name = results_path(done).parent, "grass"
    done = predict("--run", str(run_dir), "--class_name", class_name, "--export", "onnx", "--out_dir",
                   str(tmp_path / "onnx")) if class_name else predict("--run", str(run_dir), "--export", "onnx",
                                                                      "--out_dir", str(tmp_path / "onnx"))
    trained = load_run(run_dir, "", class_name)
    assert_onnx_gives_pytorch(results_path(done), build_scorer(trained, torch.device("cpu")),
                              scoring_images(demo_root, trained, per_class=5), trained.thresholds["image"])


@pytest.fixture(scope="module")
def unified_run(demo_root, tmp_path_factory):
    """base -> the folder of its one tiny unified run with BASE_ALIGNS, trained on first use."""
    runs = {}

    def run(base):
        if base not in runs:
            out = tmp_path_factory.mktemp(base)
            done = run_script("train_mvtec.py", "--method", base, "--dataset", "demo", "--data_path", str(demo_root),
                              *UNIFIED, *BASES[base], "--out_dir", str(out))
            runs[base] = results_path(done).parent
        return runs[base]
    return run


@pytest.mark.slow
@pytest.mark.parametrize("base,align", [(base, align) for base in BASES for align in BASE_ALIGNS])
def test_every_base_and_alignment_exports_to_onnx_with_the_pytorch_maps_and_decisions(
        base, align, unified_run, demo_root, tmp_path, one_thread):
    pytest.importorskip("onnxruntime")
    from utils.inference import build_scorer, export_onnx, load_run
    run_dir = unified_run(base)
    trained = load_run(run_dir, align)
    scorer = build_scorer(trained, torch.device("cpu"))
    if align == "cada":  # predict.py's default for a run with a cada head: its command line, once per base
        onnx_path = results_path(predict("--run", str(run_dir), "--export", "onnx", "--out_dir", str(tmp_path)))
        assert onnx_path.name == "unified_cada.onnx"
    else:  # the calls predict.py makes, without a process of its own
        onnx_path = export_onnx(scorer, trained.cfg.crop_size or trained.cfg.image_size, tmp_path / "model.onnx")
    assert_onnx_gives_pytorch(onnx_path, scorer, scoring_images(demo_root, trained), trained.thresholds["image"])


@pytest.mark.slow
def test_the_exported_classifier_alignment_picks_each_images_class_by_argmax(unified_run, demo_root, tmp_path,
                                                                             one_thread):
    pytest.importorskip("onnxruntime")
    from utils.inference import build_scorer, export_onnx, load_run
    trained = load_run(unified_run("recontrast"), "classifier")
    scorer = build_scorer(trained, torch.device("cpu"))
    images, alignment = scoring_images(demo_root, trained), scorer.alignment
    assert (alignment.class_stats[0] - alignment.class_stats[1]).abs().max() > 1e-3  # a wrong pick shows in the map
    with torch.no_grad():  # the 3-step head picks one class for every image: move its boundary into the batch
        features = scorer.method.head_input(scorer.model, scorer.model_input(images), scorer.align_input)
        logits = alignment.head(features)
        margins = (logits[:, 1] - logits[:, 0]).sort().values
        gap = (margins[1:] - margins[:-1]).argmax()
        assert margins[gap + 1] - margins[gap] > 1e-3
        alignment.head.mlp[-1].bias[1] -= (margins[gap] + margins[gap + 1]) / 2
        picked = alignment.head(features).argmax(dim=1)
    assert 0 < picked.sum() < len(picked)
    onnx_path = export_onnx(scorer, trained.cfg.crop_size or trained.cfg.image_size, tmp_path / "split.onnx")
    assert_onnx_gives_pytorch(onnx_path, scorer, images, trained.thresholds["image"])


def test_a_folder_given_to_predict_yields_its_images_and_its_subfolders_images_and_lists_other_files(tmp_path):
    from utils.config import ConfigError
    from utils.inference import image_files
    for relative in ("top.png", "good/000.png", "scratch/000.PNG", "scratch/notes.txt", "text/only.txt"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"x")
    files, skipped = image_files([tmp_path / "good", tmp_path / "scratch", tmp_path / "top.png"])
    # an MVTec test/ folder: one folder per defect; a folder's file of another name is listed, with its reason
    assert [str(p.relative_to(tmp_path)) for p in files] == ["good/000.png", "scratch/000.PNG", "scratch/notes.txt",
                                                             "top.png"]
    assert list(skipped) == [2] and skipped[2].startswith("not an image file name: expected .png")
    assert image_files([tmp_path / "text" / "only.txt"]) == ([tmp_path / "text" / "only.txt"], {})  # given by name
    with pytest.raises(ConfigError, match="no image to score in .*text: .* \\(1 file there, none named as an image\\)"):
        image_files([tmp_path / "text"])


def test_the_readme_recipe_for_the_onnx_input_gives_predicts_own_input(tmp_path):
    """README, "Scoring new images": what to do to an image before the exported ONNX model, written out with
    PIL, OpenCV and NumPy; predict.py's transform (run_transform) must give the same array."""
    from datasets.common import load_rgb
    from utils.inference import run_transform
    pixels = np.random.default_rng(0).integers(0, 256, (90, 70, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "colour.png")
    Image.fromarray((pixels[:, :, 0].astype(np.uint16) * 257 + 100)).save(tmp_path / "grey16.png")

    def recipe(path, image_size, crop_size, resize):
        image = Image.open(path)
        if image.mode.startswith("I"):  # 16 bits: round(v / 257) to 8 bits
            image = Image.fromarray(((np.asarray(image).astype(np.int64) + 128) // 257).astype(np.uint8))
        rgb = image.convert("RGB")
        if resize == "pil":
            array = np.asarray(rgb.resize((image_size, image_size), Image.BILINEAR))
            top = round((image_size - crop_size) / 2)
        else:
            array = cv2.resize(np.asarray(rgb), (image_size, image_size), interpolation=cv2.INTER_LINEAR)
            top = (image_size - crop_size) // 2
        if crop_size:
            array = array[top:top + crop_size, top:top + crop_size]
        normalised = (array.astype(np.float32) / 255 - np.float32([0.485, 0.456, 0.406])) / np.float32(
            [0.229, 0.224, 0.225])
        return normalised.transpose(2, 0, 1)[None]  # (1, 3, S, S), RGB

    for resize in ("pil", "cv2"):
        for image_size, crop_size in ((64, 0), (64, 49), (80, 56)):
            cfg = SimpleNamespace(image_size=image_size, crop_size=crop_size, resize=resize)
            for name in ("colour.png", "grey16.png"):
                ours = run_transform(cfg).image(load_rgb(tmp_path / name))[None].numpy()
                assert ours.shape == (1, 3, crop_size or image_size, crop_size or image_size)
                assert np.abs(recipe(tmp_path / name, image_size, crop_size, resize) - ours).max() < 1e-5


def darkened(files, folder, start=0):
    """Copies of image files 60 grey levels darker (a line's lighting, not the training images'), as PNGs."""
    from datasets.common import load_rgb
    folder.mkdir(parents=True, exist_ok=True)
    for index, path in enumerate(files, start):
        pixels = np.asarray(load_rgb(path)).astype(np.int16) - 60
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{index:03d}.png")
    return sorted(folder.iterdir())


def test_thresholds_calibrated_on_a_shifted_lines_normals_alarm_near_the_asked_rate_on_its_other_normals(
        demo_root, tmp_path, one_thread):
    """Issue 27.12 without a script: a tiny (untrained, 64 px) RevDist as predict's Scorer; the thresholds of
    normal training images alarm on every darkened normal image, those of half the darkened ones (calibration,
    at 10 %) on about 10 % of the other half."""
    from models import METHODS
    from utils.config import seed_everything
    from utils.inference import ImageFiles, Scorer, calibration, collate, run_transform, script_defaults
    cfg = SimpleNamespace(**{**script_defaults(), "method": "revdist", "backbone": "resnet18", "weights": "none",
                             "image_size": 64, "crop_size": 0, "resize": "pil", "target_norm": (1.0,)})
    method, device = METHODS["revdist"], torch.device("cpu")
    seed_everything(0)
    encoder = method.build_encoder(cfg).eval()
    model = method.build_model(cfg, encoder, 1.0, torch.Generator().manual_seed(0)).eval()
    scorer = Scorer(method, encoder, model, None, cfg).eval()
    normals = [path for c in ("brick", "grass") for split in ("train", "test") for path in
               sorted((demo_root / c / split / "good").iterdir())]

    def batches(files):
        loader = torch.utils.data.DataLoader(ImageFiles(files, run_transform(cfg)), batch_size=16, collate_fn=collate)
        return (batch for _, batch, _ in loader)

    held_out = calibration(scorer, batches(normals[::3]), device, 0.01)
    line = darkened(normals, tmp_path / "line")
    order = torch.randperm(len(line), generator=torch.Generator().manual_seed(0)).tolist()
    first, rest = [line[i] for i in sorted(order[:32])], [line[i] for i in sorted(order[32:])]
    calibrated = calibration(scorer, batches(first), device, 0.1)
    assert calibrated["calibration_images"] == 32 and calibrated["image_rank"] == 4  # floor(3.2) + 1
    assert calibrated["image_above"] == 3 / 32 and calibrated["pixel_above"] <= 0.1
    with torch.no_grad():
        scores = torch.cat([scorer(batch)[1] for batch in batches(rest)])
    assert (scores > held_out["image"]).float().mean() > 0.9  # the training normals' threshold: (nearly) all alarm
    # the line's: near the 10 % asked (5 of 32 here; over 200 random halves the mean is 12 %, 95 % of them <= 25 %)
    assert 0.0 < (scores > calibrated["image"]).float().mean() <= 0.25


@pytest.mark.slow
def test_predict_calibrates_thresholds_on_the_lines_normals_without_touching_the_runs(revdist_run, demo_root,
                                                                                      tmp_path):
    """Issue 27.12 through predict.py: --calibrate on the held-out images gives thresholds.json's thresholds;
    on a darkened line, where the held-out threshold alarms on every normal image, thresholds calibrated on
    part of its normals alarm near the asked rate on the rest; the run's thresholds.json never changes."""
    saved = (revdist_run / "thresholds.json").read_bytes()
    held = tmp_path / "held"
    held.mkdir()
    for path in held_out_files(demo_root, ("brick", "grass")):
        shutil.copy(path, held / f"{Path(path).parent.parent.parent.name}_{Path(path).name}")
    done = predict("--run", str(revdist_run), "--calibrate", str(held), "--align", "none", "--out_dir",
                   str(tmp_path / "held_out"), "--device", "cpu")
    assert "unified [none]: the image threshold is the maximum of the 6 normal images" in done.stdout
    calibration = json.loads(results_path(done).read_text())
    assert results_path(done).name == "thresholds_unified_none.json" and calibration["false_alarm_rate"] == 0.01
    entry, run_entry = calibration["models"]["unified"]["none"], json.loads(saved)["models"]["unified"]["none"]
    for key in ("image", "pixel"):
        assert entry[key] == pytest.approx(run_entry[key], rel=1e-6)
        assert entry[f"{key}_rank"] == run_entry[f"{key}_rank"] and entry[f"{key}_above"] == run_entry[f"{key}_above"]

    normals = [path for c in ("brick", "grass") for split in ("train", "test") for path in
               sorted((demo_root / c / split / "good").iterdir())]
    line = darkened(normals, tmp_path / "line")
    order = torch.randperm(len(line), generator=torch.Generator().manual_seed(0)).tolist()
    (tmp_path / "calibrate").mkdir()
    for index in order[:32]:
        line[index].rename(tmp_path / "calibrate" / line[index].name)
    args = ("--run", str(revdist_run), "--align", "none", "--device", "cpu")
    before = pd.read_csv(results_path(predict(*args, str(tmp_path / "line"), "--out_dir", str(tmp_path / "p0"))))
    assert before["anomalous"].mean() > 0.9  # the held-out threshold: (nearly) every normal image of the line alarms
    done = predict(*args, "--calibrate", str(tmp_path / "calibrate"), "--false_alarm_rate", "0.1", "--out_dir",
                   str(tmp_path / "line_thresholds"))
    line_thresholds = results_path(done)
    assert json.loads(line_thresholds.read_text())["models"]["unified"]["none"]["image_quantile"] == (
        "4th highest of 32 images (9.38 % above it)")
    done = predict(*args, str(tmp_path / "line"), "--thresholds", str(line_thresholds), "--out_dir",
                   str(tmp_path / "p1"))
    after = pd.read_csv(results_path(done))
    assert len(after) == 32 and 0.0 < after["anomalous"].mean() <= 0.25  # near the 10 % asked
    assert (after["anomalous"] == (after["score"] > json.loads(line_thresholds.read_text())["models"]["unified"]
                                   ["none"]["image"])).all()
    assert f"(--thresholds {line_thresholds}: 4th highest of 32 images" in done.stdout
    assert (revdist_run / "thresholds.json").read_bytes() == saved
    refused = predict("--run", str(revdist_run), "--thresholds", str(line_thresholds), str(tmp_path / "line"),
                      expect_ok=False)  # the default alignment of this run is cada: another head, another model
    assert refused.returncode == 1 and "calibrated for unified [none]" in refused.stderr
    refused = predict(*args, "--thresholds", str(tmp_path / "none.json"), str(tmp_path / "line"), expect_ok=False)
    assert "--thresholds " in refused.stderr and "none.json: no such file" in refused.stderr


@pytest.mark.slow
def test_an_interrupted_run_is_named_as_the_reason_it_has_no_threshold(revdist_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(revdist_run, run)
    (run / "thresholds.json").unlink()
    meta = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**meta, "status": "partial"}))
    image = str(next((revdist_run.parent.parent).rglob("*.png")))
    done = predict("--run", str(run), image, expect_ok=False)
    assert "the run did not finish (config.json status 'partial')" in done.stderr and "--resume" in done.stderr
    assert "--val_fraction 0" not in done.stderr and not (run / "predictions").exists()
    meta["config"]["val_fraction"] = 0.0
    (run / "config.json").write_text(json.dumps(meta))
    assert "trained with --val_fraction 0" in predict("--run", str(run), image, expect_ok=False).stderr

"""Issue 19: thresholds from held-out normal images, the test set's rates at them, predict.py and its ONNX export."""
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from datasets.demo import make_demo
from datasets.mvtec import MVTecDataset
from tests.test_scripts import SMALL, results_path, run_script
from utils.evaluation import ClassMaps, held_out_thresholds
from utils.thresholds import hold_out, threshold_at
from utils.training import data_fingerprint

TINY = ["--dataset", "demo", "--image_size", "64", *SMALL]
REVDIST = ["--method", "revdist", "--iters", "4", "--batch_size", "8", "--classes", "brick,grass", "--align",
           "none,cada", "--cada_iters", "5"]
# one tiny unified run per base, every alignment predict.py exports trained in it (class_aware needs the class)
BASE_ALIGNS = ("none", "cada", "classifier")
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
    image, pixel, n = held_out_thresholds(held, cfg, None, 0.01)
    assert n == 9 and image == held["b"].maps.max().item()  # one threshold over every class
    pixels = torch.cat([class_maps.maps.flatten() for class_maps in held.values()])
    assert pixel == pixels.sort().values[-6].item()  # floor(1 % of 576) = 5 pixels above it


@pytest.fixture(scope="module")
def revdist_run(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    done = run_script("train_mvtec.py", *TINY, "--data_path", str(demo_root), *REVDIST, "--out_dir", str(out))
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
    table = pd.read_csv(revdist_run / "results.csv")
    rates = table[["FAR@thr", "recall@thr"]]
    assert list(table.columns[-2:]) == list(rates.columns) and rates.notna().all().all()


@pytest.mark.slow
def test_predict_reports_a_corrupt_file_and_scores_the_others_with_maps(revdist_run, demo_root, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(demo_root / "brick" / "test" / "good" / "000.png", folder / "a_good.png")
    (folder / "b_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    grey16 = (np.arange(90 * 70).reshape(90, 70) * 10 % 65536).astype(np.uint16)
    Image.fromarray(grey16).save(folder / "c_grey16.png")
    done = predict("--run", str(revdist_run), str(folder), "--maps", "--out_dir", str(tmp_path / "out"),
                   "--device", "cpu", "--batch_size", "2")
    assert "images per second" in done.stdout
    table = pd.read_csv(results_path(done), keep_default_na=False)
    assert [Path(p).name for p in table["path"]] == ["a_good.png", "b_broken.png", "c_grey16.png"]
    assert table["error"][0] == table["error"][2] == "" and "b_broken.png" in table["error"][1]
    assert table["score"][1] == "" and all(np.isfinite(float(table["calibrated_score"][i])) for i in (0, 2))
    assert sorted(p.name for p in (tmp_path / "out" / "maps").iterdir()) == [
        "00000_a_good_mask.png", "00000_a_good_overlay.png", "00002_c_grey16_mask.png", "00002_c_grey16_overlay.png"]
    assert Image.open(tmp_path / "out" / "maps" / "00002_c_grey16_mask.png").size == (64, 64)


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


def test_a_folder_given_to_predict_yields_its_images_and_its_subfolders_images(tmp_path):
    from utils.inference import image_files
    for relative in ("top.png", "good/000.png", "scratch/000.png", "scratch/notes.txt"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"x")
    found = [str(p.relative_to(tmp_path)) for p in image_files([tmp_path])]
    assert found == ["top.png", "good/000.png", "scratch/000.png"]  # an MVTec test/ folder: one folder per defect

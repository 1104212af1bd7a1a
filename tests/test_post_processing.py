"""One post-processing (utils.maps.PostProcessor) for train_mvtec.py's evaluation and predict.py's Scorer: on a
tiny untrained RevDist (resnet18, random weights, 64 px) and the same images, the test-set maps and image
scores the evaluation computes (collect_maps, evaluate) equal the Scorer's, and the held-out thresholds equal
predict --calibrate's, for every alignment of models.cada.ALIGNMENTS."""
from types import SimpleNamespace

import pytest
import torch

from models import METHODS
from models.cada import ALIGNMENTS, Alignment, map_statistics
from utils.config import seed_everything
from utils.evaluation import collect_maps, evaluate, held_out_thresholds
from utils.inference import Scorer, calibration, script_defaults

pytestmark = pytest.mark.usefixtures("one_thread")
SIDE, PER_CLASS, CLASSES = 64, 3, ("a", "b")
SETTINGS = {"blur5_top_mean": {"blur_kernel": 5, "image_score": "top_mean", "eval_size": 0},
            "scipy_blur_max_resized": {"blur_kernel": 0, "image_score": "max", "eval_size": 80}}


@pytest.fixture(scope="module")
def tiny():
    cfg = SimpleNamespace(**{**script_defaults(), "method": "revdist", "backbone": "resnet18", "weights": "none",
                             "image_size": SIDE, "crop_size": 0, "target_norm": (1.0,)})
    method = METHODS["revdist"]
    seed_everything(0)
    encoder = method.build_encoder(cfg).eval()
    model = method.build_model(cfg, encoder, 1.0, torch.Generator().manual_seed(0)).eval()
    generator = torch.Generator().manual_seed(1)
    images = {c: torch.randn(PER_CLASS, 3, SIDE, SIDE, generator=generator) + i for i, c in enumerate(CLASSES)}
    return cfg, method, encoder, model, images


def alignment_of(kind, tiny):
    """An alignment of `kind` as train_mvtec.py builds it (None for a kind that does not calibrate), its head
    random, its statistics fitted on the images' head inputs and made-up maps whose statistics differ per class."""
    cfg, method, encoder, model, images = tiny
    if not ALIGNMENTS[kind].calibrates:
        return None
    batch = torch.cat([images[c] for c in CLASSES])
    with torch.no_grad():
        features = method.head_input(model, encoder(batch), cfg.align_input)
    labels = torch.arange(len(CLASSES)).repeat_interleave(PER_CLASS)
    maps = (1.0 + 2 * labels.float())[:, None, None] * (1 + torch.rand(len(labels), 4, 4,
                                                                        generator=torch.Generator().manual_seed(3)))
    torch.manual_seed(2)
    alignment = Alignment(kind, features.shape[1], len(CLASSES)).eval()
    alignment.fit_statistics({**map_statistics(maps), "label": labels.float(), "features": features}, seed=0)
    return alignment


def evaluation_path(tiny, alignment, settings):
    """What train_mvtec.py computes: the frozen model's ClassMaps per class, then evaluate's final maps/scores."""
    cfg, method, encoder, model, images = tiny
    run_cfg = SimpleNamespace(**{**vars(cfg), **settings})
    head_input = (lambda m, batch: method.head_input(m, batch, cfg.align_input)) if alignment is not None else None
    tested = {}
    for index, (name, batch) in enumerate(images.items()):
        labels = torch.tensor([0, 1, 0][:len(batch)])
        masks = torch.zeros(len(batch), SIDE, SIDE, dtype=torch.bool)
        masks[1, 10:20, 10:20] = True
        with torch.no_grad():
            tested[name] = collect_maps(model, [(encoder(batch), labels, masks)], head_input)
    _, _, kept = evaluate(tested, run_cfg, alignment, keep={c: list(range(PER_CLASS)) for c in CLASSES})
    return tested, kept, run_cfg


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("kind", ALIGNMENTS)
def test_the_evaluations_test_maps_are_predicts_maps_of_the_same_images(tiny, kind, setting):
    cfg, method, encoder, model, images = tiny
    alignment = alignment_of(kind, tiny)
    tested, kept, run_cfg = evaluation_path(tiny, alignment, SETTINGS[setting])
    unaligned = evaluation_path(tiny, None, SETTINGS[setting])[1]
    scorer = Scorer(method, encoder, model, alignment, run_cfg).eval()
    side = SETTINGS[setting]["eval_size"] or SIDE
    for index, name in enumerate(CLASSES):
        labels = torch.full((PER_CLASS,), index) if ALIGNMENTS[kind].needs_labels else None
        with torch.no_grad():
            maps, scores = scorer(images[name], labels)
            _, predicted, raw_scores, u, gamma = (scorer.predict(images[name]) if labels is None else
                                                  (None, scores, unaligned[name]["scores"], None, None))
        assert maps.shape == (PER_CLASS, side, side)
        assert torch.equal(maps, kept[name]["maps"]), (kind, setting, (maps - kept[name]["maps"]).abs().max())
        assert torch.equal(scores, kept[name]["scores"]) and torch.equal(predicted, scores)
        assert torch.equal(raw_scores, unaligned[name]["scores"])  # predictions.csv's `score`: the base's own
        if alignment is not None and labels is None:
            expected = alignment.statistics(tested[name].features)
            assert torch.equal(u, expected[0]) and torch.equal(gamma, expected[1])
    if kind == "cada":  # the calibration changes the maps: the equalities above are not of unaligned maps
        assert not torch.equal(kept[CLASSES[1]]["scores"], unaligned[CLASSES[1]]["scores"])


@pytest.mark.parametrize("kind", [kind for kind, spec in ALIGNMENTS.items() if not spec.needs_labels])
def test_held_out_thresholds_are_predicts_calibration_of_the_same_images(tiny, kind):
    cfg, method, encoder, model, images = tiny
    alignment = alignment_of(kind, tiny)
    tested, _, run_cfg = evaluation_path(tiny, alignment, SETTINGS["blur5_top_mean"])
    held = held_out_thresholds(tested, run_cfg, alignment, 0.2)
    scorer = Scorer(method, encoder, model, alignment, run_cfg).eval()
    calibrated = calibration(scorer, [images[c] for c in CLASSES], torch.device("cpu"), 0.2)
    assert held.pop("held_out_images") == calibrated.pop("calibration_images") == PER_CLASS * len(CLASSES)
    assert held == calibrated


@pytest.mark.parametrize("kind", ["cluster"])  # none, cada and classifier: tests/test_predict.py, on trained runs
def test_an_alignment_exports_to_onnx_with_the_pytorch_maps(tiny, kind, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    from utils.inference import export_onnx
    cfg, method, encoder, model, images = tiny
    scorer = Scorer(method, encoder, model, alignment_of(kind, tiny), cfg).eval()
    path = export_onnx(scorer, SIDE, tmp_path / f"{kind}.onnx")
    batch = torch.cat([images[c] for c in CLASSES])
    with torch.no_grad():
        maps, scores = scorer(batch)
    onnx_maps, onnx_scores = onnxruntime.InferenceSession(str(path)).run(None, {"image": batch.numpy()})
    assert abs(onnx_maps - maps.numpy()).max() <= 1e-4 * max(1.0, maps.abs().max().item())
    assert abs(onnx_scores - scores.numpy()).max() <= 1e-4 * max(1.0, scores.abs().max().item())

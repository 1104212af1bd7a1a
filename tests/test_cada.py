"""CADA and its variants (models/cada.py) and the aligned evaluation (utils/evaluation.py), on
hand-made maps whose classes differ only by an affine score scale: the case alignment exists for."""
from types import SimpleNamespace

import pytest
import torch

from models.cada import (ALIGNMENTS, MIN_SPREAD, Alignment, StatsHead, calibrate, class_statistics,
                         map_statistics)
from utils.evaluation import ClassMaps, evaluate

pytestmark = pytest.mark.usefixtures("one_thread")

EVAL = SimpleNamespace(blur_sigma=4.0, blur_kernel=5, image_score="top_mean", top_fraction=0.01)
SCALES = [(1.0, 0.0), (0.5, 0.6), (2.0, -0.8)]  # (a_c, b_c): class c's maps are a_c * M + b_c
SIZE = 32


def base_maps(generator, n, anomalous):
    """Normal maps: noise around 1; anomalous ones (every other image when asked) add a bright blob."""
    maps = 1 + 0.1 * torch.rand(n, SIZE, SIZE, generator=generator)
    labels = torch.zeros(n, dtype=torch.long)
    masks = torch.zeros(n, SIZE, SIZE, dtype=torch.bool)
    if anomalous:
        for i in range(1, n, 2):
            y, x = torch.randint(4, SIZE - 12, (2,), generator=generator).tolist()
            strength = 0.05 + 0.3 * torch.rand((), generator=generator).item()  # some anomalies are subtle
            maps[i, y:y + 8, x:x + 8] += strength
            masks[i, y:y + 8, x:x + 8] = True
            labels[i] = 1
    return maps, labels, masks


def class_features(generator, class_index, n, channels=8):
    """Features that tell the classes apart (a class-specific pattern) plus per-image noise."""
    pattern = torch.zeros(channels, 2, 2)
    pattern[class_index] = 2.0
    return pattern + 0.3 * torch.randn(n, channels, 2, 2, generator=generator)


@pytest.fixture(scope="module")
def mixture():
    generator = torch.Generator().manual_seed(0)
    train_maps, _, _ = base_maps(generator, 60, anomalous=False)
    test_maps, test_labels, test_masks = base_maps(generator, 40, anomalous=True)
    train, tested = {"maps": [], "labels": [], "features": []}, {}
    for c, (a, b) in enumerate(SCALES):
        train["maps"].append(a * train_maps + b)
        train["labels"].append(torch.full((60,), c))
        train["features"].append(class_features(generator, c, 60))
        tested[f"class{c}"] = ClassMaps(a * test_maps + b, test_labels, test_masks, class_features(generator, c, 40))
    return {k: torch.cat(v) for k, v in train.items()}, tested


def train_head(alignment, train, iters=1500, seed=0, lr=1e-2):
    """What train_mvtec.py's loop does with a head: batches of 16, SGD with the paper's momentum and
    weight decay. lr 1e-2, not the paper's 5e-2: these 8-channel features make a head whose last
    layer oscillates at 5e-2 (the step there scales with the hidden activations' squared norm)."""
    torch.manual_seed(seed)
    stats = map_statistics(train["maps"])
    optimizer, _ = alignment.configure_optimizers(SimpleNamespace(cada_lr=lr, cada_momentum=0.9,
                                                                  cada_weight_decay=1e-4))
    alignment.train()
    generator = torch.Generator().manual_seed(seed)
    for _ in range(iters):
        rows = torch.randint(len(train["maps"]), (16,), generator=generator)
        batch = {"features": train["features"][rows], "label": train["labels"][rows],
                 **{k: v[rows] for k, v in stats.items()}}
        loss = alignment.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return alignment.eval()


def pooled_and_mean(tested, alignment):
    """The pooled I-AUROC under `alignment`, and the per-class mean without alignment (the target:
    each class judged on its own)."""
    _, pooled, _ = evaluate(tested, EVAL, alignment)
    per_class, _, _ = evaluate(tested, EVAL, None, pooled=False)
    mean = sum(m["I-AUROC"] for m in per_class.values()) / len(per_class)
    return pooled["I-AUROC"], mean, pooled


def test_unaligned_pooled_auroc_falls_below_the_per_class_mean(mixture):
    _, tested = mixture
    pooled, mean, _ = pooled_and_mean(tested, None)
    assert mean > 0.9  # the blobs are detectable within a class ...
    assert pooled < mean - 0.15  # ... but not across classes whose scores sit at different levels


def test_class_aware_statistics_make_pooled_equal_per_class(mixture):
    train, tested = mixture
    alignment = Alignment("class_aware", n_classes=len(SCALES))
    alignment.set_class_statistics(map_statistics(train["maps"]), train["labels"])
    pooled, mean, _ = pooled_and_mean(tested, alignment)
    assert pooled == pytest.approx(mean, abs=1e-6)
    unaligned, _, _ = pooled_and_mean(tested, None)
    assert pooled > unaligned + 0.15


def test_class_statistics_are_per_class_mean_and_mean_of_maxima():
    maps = torch.tensor([[[0.0, 2.0]], [[1.0, 5.0]], [[10.0, 10.0]]])
    table = class_statistics(map_statistics(maps), torch.tensor([0, 0, 1]), 2)
    assert table.tolist() == [[2.0, 3.5], [10.0, 10.0]]
    with pytest.raises(ValueError, match="class index 2"):
        class_statistics(map_statistics(maps), torch.tensor([0, 0, 1]), 3)


def test_trained_cada_recovers_the_class_aware_result(mixture):
    train, tested = mixture
    cada = train_head(Alignment("cada", channels=8, smooth_l1_beta=0.1), train)
    pooled, mean, _ = pooled_and_mean(tested, cada)
    assert pooled == pytest.approx(mean, abs=0.02)
    # the regressor predicts each class's (u, gamma), not each image's own
    for c, (a, b) in enumerate(SCALES):
        u, gamma = cada.statistics(tested[f"class{c}"].features)
        true_u, true_gamma = a * 1.05 + b, a * 1.0995 + b  # noise uniform on [1, 1.1] over 32x32 pixels
        assert u.mean().item() == pytest.approx(true_u, abs=0.05 * a)
        assert gamma.mean().item() == pytest.approx(true_gamma, abs=0.05 * a)


def test_untrained_cada_head_does_not_align(mixture):
    """The test above cannot pass by accident: an untrained regressor leaves the gap open."""
    train, tested = mixture
    cada = Alignment("cada", channels=8).eval()
    pooled, mean, _ = pooled_and_mean(tested, cada)
    assert pooled < mean - 0.1


def test_cada_sigma_and_classifier_align_too(mixture):
    train, tested = mixture
    sigma = train_head(Alignment("cada_sigma", channels=8), train)
    pooled, mean, _ = pooled_and_mean(tested, sigma)
    assert pooled == pytest.approx(mean, abs=0.03)
    classifier = Alignment("classifier", channels=8, n_classes=len(SCALES))
    classifier.set_class_statistics(map_statistics(train["maps"]), train["labels"])
    train_head(classifier, train, iters=200)
    pooled, mean, _ = pooled_and_mean(tested, classifier)
    assert pooled == pytest.approx(mean, abs=1e-6)  # every test image classified right: CaDA-A's numbers


def test_calibration_is_eq5_and_guarded():
    maps = torch.tensor([[[1.0, 3.0]], [[1.0, 3.0]]])
    out = calibrate(maps, torch.tensor([1.0, 2.0]), torch.tensor([3.0, 2.0]))  # second: gamma == u
    assert out[0].tolist() == [[0.0, 1.0]]
    assert torch.isfinite(out).all()
    assert out[1].tolist() == [[-1.0 / MIN_SPREAD, 1.0 / MIN_SPREAD]]  # order kept, no inf or nan
    inverted = calibrate(maps[:1], torch.tensor([3.0]), torch.tensor([1.0]))  # gamma < u
    assert inverted[0, 0, 1] > inverted[0, 0, 0]


def test_head_parameter_count_for_the_wrn50_revdist_bottleneck():
    head = StatsHead(2048)
    # conv 2048*2048 + BN 2*2048 + linear 2048*256+256 + linear 256*2+2
    assert sum(p.numel() for p in head.parameters()) == 4_723_458
    assert head(torch.randn(2, 2048, 8, 8)).shape == (2, 2)


def test_none_is_the_identity_and_unknown_kinds_are_refused():
    u, gamma = Alignment("none").statistics(labels=torch.zeros(3))
    assert u.tolist() == [0, 0, 0] and gamma.tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="alignment must be one of"):
        Alignment("cada2")
    assert ALIGNMENTS == ("none", "cada", "cada_sigma", "class_aware", "classifier")


def test_dropout_is_active_in_training_only():
    head = StatsHead(8).train()
    x = torch.randn(4, 8, 2, 2)
    torch.manual_seed(0)
    assert not torch.equal(head(x), head(x))
    head.eval()
    assert torch.equal(head(x), head(x))

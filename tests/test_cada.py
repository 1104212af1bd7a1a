"""CADA and its variants (models/cada.py) and the aligned evaluation (utils/evaluation.py), on
hand-made maps whose classes differ only by an affine score scale: the case alignment exists for."""
import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.cada import (ALIGNMENTS, MIN_SPREAD, Alignment, StatsHead, calibrate, class_statistics,
                         map_statistics)
from tests.test_scripts import SMALL, results_path, run_script
from utils.evaluation import ClassMaps, aligned_maps, evaluate, sample_pixels, scored
from utils.training import fit

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
    optimizer, scheduler = alignment.configure_optimizers(SimpleNamespace(cada_lr=lr, cada_momentum=0.9,
                                                                          cada_weight_decay=1e-4))
    generator = torch.Generator().manual_seed(seed)
    rows = (torch.randint(len(train["maps"]), (16,), generator=generator) for _ in range(iters))
    batches = ({"features": train["features"][picked], "label": train["labels"][picked],
                **{k: v[picked] for k, v in stats.items()}} for picked in rows)
    return fit(alignment, batches, optimizer, scheduler, iters, show=False)


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


CONV = 2048 * 2048 + 2 * 2048                      # a 1x1 conv keeping 2048 channels, no bias, and its BatchNorm
FIRST, MIDDLE, LAST = 2048 * 256 + 256, 256 * 256 + 256, 256 * 2 + 2


@pytest.mark.parametrize("convs, linears, count", [
    (0, 1, 2048 * 2 + 2), (0, 2, FIRST + LAST), (0, 3, FIRST + MIDDLE + LAST),  # Table 3's "n linear" rows
    (1, 2, CONV + FIRST + LAST), (2, 2, 2 * CONV + FIRST + LAST)])              # "1 conv, 2 linear", "2 conv, 2 linear"
def test_every_table3_structure_has_its_hand_counted_parameters(convs, linears, count):
    head = StatsHead(2048, convs=convs, linears=linears)
    assert sum(p.numel() for p in head.parameters()) == count
    assert head(torch.randn(2, 2048, 4, 4)).shape == (2, 2)


def layer_kinds(head):
    return [type(m).__name__ for m in head.mlp]


def test_a_dropout_precedes_every_linear_layer_by_default_or_the_first_only():
    assert layer_kinds(StatsHead(8)) == ["Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert layer_kinds(StatsHead(8, linears=3, dropout_at="first_linear")) == [
        "Dropout", "Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert layer_kinds(StatsHead(8, linears=1)) == layer_kinds(StatsHead(8, linears=1, dropout_at="first_linear"))
    with pytest.raises(ValueError, match="dropout_at"):
        StatsHead(8, dropout_at="last_linear")


@pytest.mark.parametrize("kind", ["cada", "classifier"])  # CaDA-B's classifier has the regressor's structure
def test_alignment_builds_the_head_it_is_given(kind):
    head = Alignment(kind, channels=8, n_classes=3, convs=2, linears=3, dropout=0.5, dropout_at="first_linear").head
    assert [type(m).__name__ for m in head.conv] == ["Conv2d", "BatchNorm2d", "ReLU"] * 2
    assert layer_kinds(head) == ["Dropout", "Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert head.mlp[0].p == 0.5 and head.mlp[-1].out_features == (3 if kind == "classifier" else 2)
    plain = Alignment(kind, channels=8, n_classes=3, convs=0, dropout=0.0).head
    assert len(plain.conv) == 0 and [m.p for m in plain.mlp if isinstance(m, nn.Dropout)] == [0.0, 0.0]


def test_cada_sigma_loss_is_eq3_with_u_plus_3_sigma_and_gamma_hat_is_its_second_output():
    torch.manual_seed(0)
    alignment = Alignment("cada_sigma", channels=8, smooth_l1_beta=0.1).eval()  # eval: no dropout
    batch = {"features": torch.randn(5, 8, 2, 2), "mean": torch.rand(5), "max": torch.rand(5) + 2,
             "std": torch.rand(5)}
    out = alignment.head(batch["features"])
    expected = (F.smooth_l1_loss(out[:, 0], batch["mean"], beta=0.1)
                + F.smooth_l1_loss(out[:, 1], batch["mean"] + 3 * batch["std"], beta=0.1))
    assert alignment.loss(batch).item() == pytest.approx(expected.item(), rel=1e-6)
    u, gamma = alignment.statistics(batch["features"])
    assert torch.equal(u, out[:, 0]) and torch.equal(gamma, out[:, 1])


def test_cada_sigma_recovers_each_class_u_and_u_plus_3_sigma():
    """Maps uniform around u_c with standard deviation sigma_c: their maximum (u + 1.7 sigma) is far from
    u + 3 sigma, so a head regressing the maximum would fail here."""
    classes = [(1.0, 0.05), (0.3, 0.4), (2.0, 0.1)]  # (u_c, sigma_c)
    generator = torch.Generator().manual_seed(0)
    noise = math.sqrt(3) * (2 * torch.rand(60 * len(classes), SIZE, SIZE, generator=generator) - 1)  # std 1
    scale = torch.tensor(classes).repeat_interleave(60, dim=0)
    train = {"maps": scale[:, 0, None, None] + scale[:, 1, None, None] * noise,
             "labels": torch.arange(len(classes)).repeat_interleave(60),
             "features": torch.cat([class_features(generator, c, 60) for c in range(len(classes))])}
    # no dropout: this tiny problem then converges without noise; dropout is checked on its own above
    sigma = train_head(Alignment("cada_sigma", channels=8, dropout=0.0), train)
    for c, (u, s) in enumerate(classes):
        u_hat, gamma_hat = sigma.statistics(class_features(generator, c, 40))
        assert u_hat.mean().item() == pytest.approx(u, abs=0.02)
        assert gamma_hat.mean().item() == pytest.approx(u + 3 * s, abs=0.03)
        assert ((gamma_hat - u_hat) / 3).mean().item() == pytest.approx(s, abs=0.01)


def test_none_is_the_identity_and_unknown_kinds_are_refused():
    u, gamma = Alignment("none").statistics(labels=torch.zeros(3))
    assert u.tolist() == [0, 0, 0] and gamma.tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="alignment must be one of"):
        Alignment("cada2")
    assert tuple(ALIGNMENTS) == ("none", "cada", "cada_sigma", "class_aware", "classifier", "cluster")


def test_dropout_is_active_in_training_only():
    head = StatsHead(8).train()
    x = torch.randn(4, 8, 2, 2)
    torch.manual_seed(0)
    assert not torch.equal(head(x), head(x))
    head.eval()
    assert torch.equal(head(x), head(x))


def test_dropout_zero_leaves_a_training_head_deterministic():
    head = StatsHead(8, dropout=0.0).train()
    x = torch.randn(4, 8, 2, 2)
    assert torch.equal(head(x), head(x))


def test_pixel_sample_is_seeded_bounded_and_read_from_the_final_maps(mixture):
    _, tested = mixture
    every, first = {name: torch.arange(len(m.maps)) for name, m in tested.items()}, {}
    for alignment in (None, Alignment("class_aware", n_classes=len(SCALES))):
        _, _, kept = evaluate(tested, EVAL, alignment, keep=every, pixels=300)
        for class_index, (name, class_maps) in enumerate(tested.items()):
            final, _ = scored(aligned_maps(class_maps, alignment, class_index), EVAL)
            assert torch.equal(kept[name]["maps"], final)  # the aligned, blurred maps the metrics read
            index = kept[name]["pixel_index"]
            anomalous = class_maps.masks.flatten()[index]
            assert int((~anomalous).sum()) == 300 and int(anomalous.sum()) == 300
            assert len(set(index.tolist())) == 600
            assert torch.equal(kept[name]["pixel_scores"], kept[name]["maps"].flatten()[index])
            assert torch.equal(kept[name]["pixel_labels"], anomalous)
            flat = kept[name]["maps"].flatten(1)
            assert torch.equal(kept[name]["image_mean"], flat.mean(dim=1))
            assert torch.equal(kept[name]["image_max"], flat.amax(dim=1))
            assert torch.equal(first.setdefault(name, index), index)  # the same pixels under every alignment
    assert sample_pixels(torch.eye(4, dtype=torch.bool)[None], 300, seed=0).tolist() == [  # all of a short kind
        1, 2, 3, 4, 6, 7, 8, 9, 11, 12, 13, 14, 0, 5, 10, 15]


@pytest.mark.slow
def test_head_options_train_the_head_only_and_the_head_batch_is_cada_batch_size(tmp_path_factory):
    """--cada_* options reach the head (its saved structure) and leave the base model alone; the head's
    batches are --cada_batch_size images, whatever the base's --batch_size."""
    demo_root, out = tmp_path_factory.mktemp("demo"), tmp_path_factory.mktemp("out")
    args = ["--method", "revdist", "--dataset", "demo", "--data_path", str(demo_root), "--classes", "brick,grass",
            "--image_size", "64",
            "--iters", "2", "--batch_size", "8", "--align", "cada", "--cada_iters", "3", "--cada_convs", "0",
            "--cada_linears", "3", "--cada_dropout", "0.5", "--cada_dropout_at", "first_linear", *SMALL]
    first = results_path(run_script("train_mvtec.py", *args, "--cada_batch_size", "4", "--out_dir", str(out / "a")))
    config = json.loads((first.parent / "config.json").read_text())["config"]
    assert (config["cada_batch_size"], config["cada_convs"], config["cada_linears"], config["cada_dropout"],
            config["cada_dropout_at"]) == (4, 0, 3, 0.5, "first_linear")
    head = torch.load(first.parent / "checkpoints" / "unified_cada.pt", weights_only=False)["model"]
    assert sorted(k for k in head if k.startswith("head.")) == [f"head.mlp.{i}.{p}" for i in (1, 3, 5)
                                                               for p in ("bias", "weight")]
    again = run_script("train_mvtec.py", *args, "--cada_batch_size", "8", "--checkpoint", str(first.parent),
                       "--out_dir", str(out / "b"))
    assert "unified train" not in again.stderr and "unified_cada train" in again.stderr
    other = torch.load(results_path(again).parent / "checkpoints" / "unified_cada.pt", weights_only=False)["model"]
    # the same base, seed and batch order: only batches of 4 against batches of 8 make the heads differ
    assert not torch.equal(head["head.mlp.5.weight"], other["head.mlp.5.weight"])


def test_the_registry_declares_what_each_alignment_trains_reads_and_needs():
    assert [kind for kind, spec in ALIGNMENTS.items() if spec.trained] == ["cada", "cada_sigma", "classifier"]
    assert [kind for kind, spec in ALIGNMENTS.items() if spec.needs_labels] == ["class_aware"]
    assert [kind for kind, spec in ALIGNMENTS.items() if not spec.calibrates] == ["none"]
    for kind, spec in ALIGNMENTS.items():  # a trained kind has a head, a loss and an optimiser; the others none
        parts = (spec.head_outputs, spec.loss, spec.optimizer)
        assert [part is not None for part in parts] == [spec.trained] * 3
        assert (Alignment(kind, channels=8, n_classes=3).head is not None) == spec.trained
    assert ALIGNMENTS["classifier"].head_outputs(5) == 5 and ALIGNMENTS["cada"].head_outputs(5) == 2
    settings = SimpleNamespace(cada_lr=0.05, cada_momentum=0.9, cada_weight_decay=1e-4)
    optimizer, scheduler = Alignment("cada", channels=8).configure_optimizers(settings, 10)
    assert isinstance(optimizer, torch.optim.SGD) and scheduler is None
    assert (optimizer.defaults["lr"], optimizer.defaults["momentum"], optimizer.defaults["weight_decay"]) == (
        0.05, 0.9, 1e-4)
    stats = {"mean": torch.tensor([1.0]), "max": torch.tensor([4.0]), "std": torch.tensor([0.5])}
    assert [t.item() for t in ALIGNMENTS["cada_sigma"].targets(stats)] == [1.0, 2.5]
    assert [t.item() for t in ALIGNMENTS["class_aware"].targets(stats)] == [1.0, 4.0]


def three_groups(n=(12, 9, 15), channels=6, seed=0):
    """Head inputs (N, channels, 2, 2) in 3 well-separated groups, maps whose statistics differ per group, and
    the group of each image (the class label the cluster alignment never reads)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((count,), g) for g, count in enumerate(n)])
    centres = 10.0 * torch.eye(channels)[:3]
    features = centres[labels][:, :, None, None] + 0.3 * torch.randn(len(labels), channels, 2, 2, generator=generator)
    maps = (1.0 + labels.float())[:, None, None] * (1 + torch.rand(len(labels), 8, 8, generator=generator))
    return {**map_statistics(maps), "label": labels.float(), "features": features}, labels


def test_cluster_finds_the_three_groups_without_labels_and_gives_each_its_class_aware_statistics():
    table, labels = three_groups()
    cluster = Alignment("cluster", channels=6)
    cluster.fit_statistics({**table, "label": torch.zeros(len(labels))}, seed=0)  # the labels are not read ...
    assert cluster.record["clusters"] == 3 and cluster.record["cluster_ari"] == 0.0
    cluster.fit_statistics(table, seed=0)  # ... only recorded: the ARI against them
    assert cluster.record == {"clusters": 3, "cluster_ari": 1.0}
    class_aware = class_statistics(table, labels, 3)
    u, gamma = cluster.statistics(table["features"])  # each training image: its own cluster's statistics
    assert torch.equal(u, class_aware[labels, 0]) and torch.equal(gamma, class_aware[labels, 1])
    assert sorted(map(tuple, cluster.cluster_stats.tolist())) == sorted(map(tuple, class_aware.tolist()))


def test_a_test_image_near_a_centroid_takes_its_statistics_also_after_a_checkpoint_round_trip():
    table, _ = three_groups()
    cluster = Alignment("cluster", channels=6)
    cluster.fit_statistics(table, seed=3)
    near = cluster.centroids * cluster.feature_std + cluster.feature_mean + 0.05  # back to head-input units
    features = near[:, :, None, None].expand(-1, -1, 3, 3)
    loaded = Alignment("cluster", channels=6)
    loaded.load_state_dict(cluster.state_dict())
    for alignment in (cluster, loaded):
        u, gamma = alignment.statistics(features)
        assert torch.equal(torch.stack([u, gamma], dim=1), cluster.cluster_stats)


def test_cluster_chooses_k_by_silhouette_from_two_to_ten_and_refuses_too_few_images():
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score
    from models.cada import choose_clusters
    points = torch.randn(40, 3, generator=torch.Generator().manual_seed(1)).numpy()  # no structure: any k
    k, labels, centroids = choose_clusters(points, seed=0)
    scores = {j: silhouette_score(points, KMeans(j, random_state=0, n_init=10).fit(points).labels_)
              for j in range(2, 11)}
    assert k == max(scores, key=scores.get) and centroids.shape == (k, 3) and len(set(labels.tolist())) == k
    assert choose_clusters(points[:4], seed=0)[0] in (2, 3)  # k <= n - 1
    with pytest.raises(ValueError, match="at least 3 training images"):
        choose_clusters(points[:2], seed=0)


def test_train_mvtec_accepts_align_cluster():
    from utils.checks import check_structured
    from utils.config import ConfigError
    from utils.inference import script_defaults
    cfg = SimpleNamespace(**{**script_defaults(), "setting": "unified", "align": ("none", "cluster")})
    check_structured(cfg, ALIGNMENTS)
    with pytest.raises(ConfigError, match="--align: expected a comma list of none, cada, cada_sigma, class_aware, "
                                          "classifier, cluster, got clusters"):
        check_structured(SimpleNamespace(**{**vars(cfg), "align": ("clusters",)}), ALIGNMENTS)

"""What tells why an alignment reorders a class (alignment_stats.csv's diagnostic columns) and the head options
that change what the head sees (--cada_pool median, --cada_standardise), against scikit-learn and torch oracles;
checkpoints saved before an option was added are read as trained with its default."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from sklearn.metrics import roc_auc_score

from models.cada import Alignment, StatsHead, alignment_of, map_statistics
from tests.test_cada import base_maps
from utils.evaluation import ClassMaps, alignment_statistics, head_training_table
from utils.training import load_our_file, saved_state

pytestmark = pytest.mark.usefixtures("one_thread")


class MapStatistics(nn.Module):
    """A 'head' whose input is the map itself (N, 1, H, W): it returns each image's true (mean, max)."""

    def forward(self, features):
        flat = features.flatten(1)
        return torch.stack([flat.mean(dim=1), flat.amax(dim=1)], dim=1)


def two_classes():
    generator = torch.Generator().manual_seed(0)
    train, tested = [], {}
    for c, scale in enumerate((1.0, 3.0)):
        maps, _, _ = base_maps(generator, 20, anomalous=False)
        train.append(ClassMaps(scale * maps, torch.zeros(20), torch.zeros(20, 32, 32, dtype=torch.bool),
                               scale * maps[:, None]))
        maps, labels, masks = base_maps(generator, 16, anomalous=True)
        tested[f"class{c}"] = ClassMaps(scale * maps, labels, masks, scale * maps[:, None])
    return head_training_table(train), tested


def test_an_estimate_that_follows_each_image_is_reported_as_seeing_the_anomaly_and_fitting_training_exactly():
    table, tested = two_classes()
    per_image = Alignment("cada", channels=1)
    per_image.head = MapStatistics()  # the estimates are each image's own statistics
    rows = alignment_statistics(tested, per_image, table)
    for row, class_maps in zip(rows, tested.values()):
        stats = map_statistics(class_maps.maps)
        assert row["u_anomaly_auroc"] == pytest.approx(roc_auc_score(class_maps.labels, stats["mean"]))
        assert row["gamma_anomaly_auroc"] == pytest.approx(roc_auc_score(class_maps.labels, stats["max"]))
        assert row["u_anomaly_auroc"] > 0.9  # a blob raises the image's mean: eq. 5 then divides it away
        assert row["u_train_error"] == 0 and row["u_test_error"] == 0
        assert row["u_estimated_train"] == pytest.approx(row["u_train"])


def test_class_statistics_are_blind_to_the_anomaly_and_their_errors_are_each_images_distance_to_them():
    table, tested = two_classes()
    class_aware = Alignment("class_aware", n_classes=2)
    class_aware.fit_statistics(table)
    rows = alignment_statistics(tested, class_aware, table)
    for c, (row, class_maps) in enumerate(zip(rows, tested.values())):
        assert row["u_anomaly_auroc"] == 0.5 and row["gamma_anomaly_auroc"] == 0.5
        train_u = table["mean"][table["label"] == c]
        assert row["u_train"] == pytest.approx(train_u.mean().item())
        assert row["u_train_error"] == pytest.approx((train_u - train_u.mean()).abs().mean().item(), rel=1e-5)
        test_u = map_statistics(class_maps.maps[class_maps.labels == 0])["mean"]
        assert row["u_test_error"] == pytest.approx((test_u - class_aware.class_stats[c, 0]).abs().mean().item(),
                                                    rel=1e-5)
    assert "u_train" not in alignment_statistics(tested, class_aware)[0]  # no table given: no training columns


@pytest.mark.parametrize("side", [3, 2])  # an odd and an even number of positions
def test_median_pooling_is_the_median_of_each_channel_and_ignores_one_outlying_position(side):
    torch.manual_seed(0)
    head = StatsHead(4, outputs=2, convs=0, linears=1, pool="median").eval()
    features = torch.randn(5, 4, side, side)
    median = torch.quantile(features.flatten(2), 0.5, dim=2)  # the mean of the middle two when even
    assert torch.allclose(head(features), head.mlp(median), atol=1e-6)
    if side == 3:
        spiked, raised = features.clone(), features.clone()
        spiked[:, :, 0, 0] = 1e3  # an anomaly at one position: however strong, it counts as one high value
        raised[:, :, 0, 0] = features.amax() + 0.1
        assert torch.allclose(head(spiked), head(raised), atol=1e-6)
        mean_head = StatsHead(4, outputs=2, convs=0, linears=1, pool="mean").eval()
        mean_head.load_state_dict(head.state_dict())
        assert (mean_head(spiked) - mean_head(features)).abs().max() > 1
    with pytest.raises(ValueError, match="pool in"):
        StatsHead(4, pool="max")


def cfg(**changes):
    return SimpleNamespace(**{"cada_beta": 0.1, "cada_convs": 1, "cada_linears": 2, "cada_dropout": 0.25,
                              "cada_dropout_at": "every_linear", "cada_pool": "mean", "cada_standardise": False,
                              "cluster_k": "silhouette",
                              **changes})


def test_a_standardised_head_reads_its_input_less_the_training_mean_over_the_training_std_also_after_loading():
    torch.manual_seed(0)
    features = 5 + 3 * torch.randn(30, 4, 2, 2)
    table = {"features": features, "mean": torch.rand(30), "max": torch.rand(30) + 1, "std": torch.rand(30),
             "label": torch.zeros(30)}
    alignment = alignment_of("cada", 4, 1, cfg(cada_standardise=True)).eval()
    alignment.fit_statistics(table)
    assert torch.allclose(alignment.input_mean, features.mean(dim=(0, 2, 3)))
    assert torch.allclose(alignment.input_std, features.std(dim=(0, 2, 3)))
    standardised = (features - features.mean(dim=(0, 2, 3), keepdim=True)) / features.std(dim=(0, 2, 3), keepdim=True)
    assert torch.allclose(alignment.head_output(features), alignment.head(standardised), atol=1e-5)
    loaded = alignment_of("cada", 4, 1, cfg(cada_standardise=True)).eval()
    loaded.load_state_dict(alignment.state_dict())
    assert torch.equal(torch.stack(loaded.statistics(features), 1), torch.stack(alignment.statistics(features), 1))
    plain = alignment_of("cada", 4, 1, cfg()).eval()  # the paper's head reads the features as they are
    assert not hasattr(plain, "input_mean")
    plain.head.load_state_dict(alignment.head.state_dict())
    assert not torch.allclose(plain.head_output(features), alignment.head_output(features), atol=1e-3)


def test_a_checkpoint_saved_before_an_option_was_added_is_read_as_trained_with_its_default(tmp_path):
    now = {"method": "revdist", "lr": 0.005, "cada_pool": "mean"}
    path = tmp_path / "checkpoints" / "unified.pt"
    path.parent.mkdir()
    older = {"method": "revdist", "lr": 0.005}
    from utils.training import fingerprint
    torch.save({"model": {}, "training_config": older, "fingerprint": fingerprint(older, set())}, path)
    with pytest.raises(ValueError, match=r"another script or version \(options differ: \['cada_pool'\]\)"):
        load_our_file(path, "f", "checkpoint", now)
    assert load_our_file(path, "f", "checkpoint", now, {"cada_pool": "mean"})["training_config"] == now
    assert saved_state(("", tmp_path), "unified", now, set(), added={"cada_pool": "mean"}) is not None
    with pytest.raises(ValueError, match=r"differs in \['cada_pool'\]"):  # it ran the default, not median
        saved_state(("", tmp_path), "unified", {**now, "cada_pool": "median"}, set(), added={"cada_pool": "mean"})


def test_the_new_head_options_are_checked_from_the_option_table():
    import train_mvtec
    from utils.config import ConfigError
    from utils.options import added_options, check_options
    from utils.inference import script_defaults
    assert added_options(train_mvtec.OPTIONS) == {"cada_pool": "mean", "cada_standardise": False,
                                                  "cluster_k": "silhouette"}
    assert {"cada_pool", "cada_standardise", "cluster_k"} <= train_mvtec.HEAD_ONLY  # a base model is reused across them
    with pytest.raises(ConfigError, match="--cada_pool: expected one of mean, median, got 'max'"):
        check_options(SimpleNamespace(**{**script_defaults(), "cada_pool": "max"}), train_mvtec.OPTIONS)


def near_groups_of_different_levels():
    """Groups A and B close in feature space (a small offset) but of very different map levels, C far away:
    silhouette sees two groups; calibration sees that A and B must not share statistics."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [3.0, 0.0], [30.0, 30.0]])
    labels = torch.arange(3).repeat_interleave(torch.tensor([60, 20, 40]))
    points = centres[labels] + 0.3 * torch.randn(len(labels), 2, generator=generator)
    level = torch.tensor([0.2, 0.8, 0.5])[labels]
    u = level + 0.01 * torch.randn(len(labels), generator=generator)
    return points.numpy(), u, u + 0.3, labels


def test_calibration_chooses_the_k_that_keeps_groups_of_different_levels_apart_where_silhouette_merges_them():
    from sklearn.metrics import adjusted_rand_score
    from models.cada import calibration_error, choose_clusters
    points, u, gamma, labels = near_groups_of_different_levels()
    k, _, _ = choose_clusters(points, seed=0)
    assert k == 2  # A and B look like one group
    k, found, centroids = choose_clusters(points, seed=0, criterion="calibration", u=u, gamma=gamma)
    assert k == 3 and adjusted_rand_score(labels.numpy(), found.numpy()) == 1.0 and centroids.shape == (3, 2)
    errors = {k: calibration_error(points, u, gamma, k, 0) for k in (2, 3)}
    assert errors[3].shape == (len(points),) and errors[3].mean() < 0.2 < 1.0 < errors[2].mean()
    rows = labels == 1  # B's images pay for sharing A's statistics: |0.8 - 0.2-ish| over a spread of 0.3
    assert errors[2][rows].mean() > 1.5 and errors[3][rows].mean() < 0.2
    with pytest.raises(ValueError, match="criterion must be one of"):
        choose_clusters(points, seed=0, criterion="gap")


def test_the_cluster_alignment_fits_by_the_criterion_it_is_built_with():
    points, u, gamma, labels = near_groups_of_different_levels()
    table = {"features": torch.as_tensor(points)[:, :, None, None], "mean": u, "max": gamma, "std": u,
             "label": labels.float()}
    found = {}
    for criterion in ("silhouette", "calibration"):
        alignment = alignment_of("cluster", 2, 3, cfg(cluster_k=criterion))
        alignment.fit_statistics(table, seed=0)
        found[criterion] = alignment.record["clusters"]
    assert found == {"silhouette": 2, "calibration": 3}

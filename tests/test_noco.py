
import itertools

import pytest
import torch
from sklearn.metrics import roc_auc_score

from models.backbones import build_encoder
from models.cada import Alignment
from models.noco import NoCo, aggregate_patch_features
from utils.optim import optimizer_settings
from utils.training import fit


def trainable_parameters(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_parameter_counts_match_the_brief():
    assert trainable_parameters(NoCo(1792, structured=True)) == 3_213_057
    assert trainable_parameters(NoCo(2048, structured=False)) == 4_196_353


def test_patch_aggregation_of_wide_resnet_layers_gives_1792_channels_on_the_layer1_grid():
    features = {"layer1": torch.randn(2, 256, 56, 56), "layer2": torch.randn(2, 512, 28, 28),
                "layer3": torch.randn(2, 1024, 14, 14)}
    embedded = aggregate_patch_features(features)
    assert embedded.shape == (2, 1792, 56, 56)
    pooled = torch.nn.functional.avg_pool2d(features["layer1"], 3, 1, 1)  # first block: pooled, not resized
    assert torch.allclose(embedded[:, :256], pooled)


def test_efficientnet_lite0_taps_structured_and_semantic():
    """NoCo on efficientnet_lite0's preact taps: layers 1-3 (24 + 40 + 112 ch at strides 4/8/16) on the
    layer-1 grid; the pooled head (1280) for semantic AD; a CADA head reads the deepest tapped layer."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    structured = build_encoder("efficientnet_lite0", "none", ("layer1", "layer2", "layer3"), "preact")(x)
    model = NoCo(176, structured=True)
    assert model.embed(structured).shape == (2, 176, 16, 16) and model.anomaly_map(structured).shape == (2, 16, 16)
    u, gamma = Alignment("cada", 112).eval().statistics(structured["layer3"])
    assert u.shape == gamma.shape == (2,)
    pooled = build_encoder("efficientnet_lite0", "none", ("avgpool",), "preact")(x)
    assert NoCo(1280, structured=False).anomaly_map(pooled).shape == (2, 1, 1)


@pytest.mark.parametrize("kind", ["randn", "rand", "ones"])
@pytest.mark.parametrize("norm, p", [(1.0, 2.0), (8.0, 2.0), (32.0, 2.0), (0.5, 1.0)])
def test_target_norm_is_exactly_target_norm(kind, norm, p):
    model = NoCo(64, target=kind, target_norm=norm, p=p, generator=torch.Generator().manual_seed(0))
    assert torch.linalg.vector_norm(model.target.double(), ord=p).item() == pytest.approx(norm, rel=1e-6)


def test_target_is_fixed_saved_and_seeded():
    a = NoCo(32, generator=torch.Generator().manual_seed(3))
    b = NoCo(32, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.target, b.target) and "target" in a.state_dict()
    assert all(name != "target" for name, _ in a.named_parameters())
    before = a.target.clone()
    optimizer, scheduler = a.configure_optimizers(optimizer_settings(lr=0.1, weight_decay=5e-4), 1)
    fit(a, ({"layer1": torch.randn(4, 32, 5, 5)} for _ in range(3)), optimizer, scheduler, 3, show=False)
    assert torch.equal(a.target, before)
    restored = NoCo(32, generator=torch.Generator().manual_seed(99))
    restored.load_state_dict(a.state_dict())
    assert torch.equal(restored.target, before)


def hand_made_model(structured, **kwargs):
    """2 channels, identity projector, target (1, 0)... via 'ones' rescaled: c = (1, 1)/sqrt(2) * norm."""
    model = NoCo(2, structured=structured, target="ones", target_norm=2 ** 0.5, radius_init=0.5, **kwargs)
    with torch.no_grad():
        model.projector.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        model.projector.bias.zero_()
    return model  # target = (1, 1), r^2 = 0.25


def test_structured_loss_on_hand_made_tensors():
    model = hand_made_model(structured=True)
    # three patches of a 1x3 embedding: at the target, at distance 3, at distance 0.4 (outside r^2 = 0.25)
    embedding = torch.tensor([[1.0, 1.0], [4.0, 1.0], [1.0, 1.4]]).T.reshape(1, 2, 1, 3)
    distance = model.embedding_distance(embedding)
    assert torch.allclose(distance, torch.tensor([[[0.0, 3.0, 0.4]]]), atol=1e-6)
    expected = (0.0 + (3.0 - 0.25) + (0.4 - 0.25)) / 3 / 1e-3  # (1/nu) mean relu(d - r^2), nu = 1e-3
    assert model.boundary_loss(distance).item() == pytest.approx(expected, rel=1e-5)
    # the full path pools each layer 3x3 with zero padding counted: a lone 1x1 patch becomes x / 9
    lone = torch.tensor([9.0, 9.0]).view(1, 2, 1, 1)
    assert model.distance({"layer1": lone}).item() == pytest.approx(0.0, abs=1e-6)
    assert model.loss({"layer1": lone}).item() == pytest.approx(0.0, abs=1e-9)


def test_semantic_loss_uses_the_squared_distance_and_the_radius_penalty():
    model = hand_made_model(structured=False)
    pooled = torch.tensor([[1.0, 1.0], [4.0, 1.0], [1.0, 1.4]])  # squared distances 0, 9, 0.16
    assert torch.allclose(model.anomaly_map({"avgpool": pooled}).flatten(), torch.tensor([0.0, 9.0, 0.16]), atol=1e-6)
    expected = (0.0 + (9.0 - 0.25) + 0.0) / 3 / 1.0  # nu = 1; 0.16 < r^2 contributes nothing
    assert model.loss({"avgpool": pooled}).item() == pytest.approx(expected, rel=1e-5)
    penalised = hand_made_model(structured=False, radius_penalty=1e3)
    assert penalised.loss({"avgpool": pooled}).item() == pytest.approx(expected + 1e3 * 0.5, rel=1e-5)


def test_mean_target_is_set_from_data_and_rescaled():
    model = NoCo(8, target="mean", target_norm=4.0)
    with pytest.raises(RuntimeError, match="not set"):
        model.loss({"layer1": torch.randn(2, 8, 3, 3)})
    model.set_target(torch.full((8,), 3.0))
    assert torch.allclose(model.target, torch.full((8,), 4.0 / 8 ** 0.5))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="target must be one of"):
        NoCo(8, target="zeros")
    with pytest.raises(ValueError, match="target_norm must be positive"):
        NoCo(8, target_norm=0)


def test_training_learns_what_the_untrained_detector_cannot_see():
    """Normal features vary a lot inside a 4-d subspace; anomalies add a small component outside it.
    A random projector scores by overall distance, dominated by the normal variation (near chance);
    training collapses the normal subspace onto the target, so the anomaly component stands out."""
    generator = torch.Generator().manual_seed(0)
    dim, basis = 32, torch.linalg.qr(torch.randn(32, 32, generator=generator))[0]
    inside, outside = basis[:, :4], basis[:, 4:]

    def features(n, anomalous):
        x = 3.0 * torch.randn(n, 4, generator=generator) @ inside.T
        if anomalous:
            x = x + 1.0 * torch.randn(n, 28, generator=generator) @ outside.T / 28 ** 0.5 * 2
        return {"avgpool": x}

    train = features(512, False)
    test = {"avgpool": torch.cat([features(200, False)["avgpool"], features(200, True)["avgpool"]])}
    labels = [0] * 200 + [1] * 200
    torch.manual_seed(0)
    model = NoCo(dim, structured=False, generator=generator)
    untrained = roc_auc_score(labels, model.anomaly_map(test).flatten())
    optimizer, scheduler = model.configure_optimizers(optimizer_settings(lr=1e-2, weight_decay=5e-4), 1)
    fit(model, itertools.repeat(train), optimizer, scheduler, 300, show=False)
    trained = roc_auc_score(labels, model.anomaly_map(test).flatten())
    assert untrained < 0.75
    assert trained > 0.95

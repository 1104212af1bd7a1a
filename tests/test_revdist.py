"""RevDist (RD4AD) against the brief: parameter counts (also of the EfficientNet-Lite0 design), the
reference's initialisation, the loss and map on hand-made tensors, shapes, learning on a fixed batch, the
optimiser settings. Forward passes use resnet18 (or efficientnet_lite0) at 64 px."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from models.backbones import build_encoder
from models.cada import Alignment
from models.revdist import LAYERS, RevDist, cosine_map, reconstruction_loss
from tests.test_training import fit_losses
from utils.optim import build_optimizer

RD4AD = SimpleNamespace(optimizer="adam", lr=5e-3, betas=(0.5, 0.999), weight_decay=0.0, adam_eps=1e-8,
                        amsgrad=False, lr_drop_at=0.0, lr_drop_gamma=0.2)
MULTI_CLASS = SimpleNamespace(optimizer="adamw", lr=2e-3, betas=[0.9, 0.999], weight_decay=1e-5, adam_eps=1e-10,
                              amsgrad=True, lr_drop_at=0.8, lr_drop_gamma=0.2)
SHAPES = ((2, 8, 16, 16), (2, 16, 8, 8), (2, 32, 4, 4))


def count(module):
    return sum(p.numel() for p in module.parameters())


def rotated(theta, seed=0):
    """Per layer, features with 2 random channels (the rest 0), and the same with each pixel's
    2-vector rotated by theta: every cosine, per pixel and of the flattened map, is cos(theta)."""
    generator = torch.Generator().manual_seed(seed)
    targets, predictions = [], []
    for shape in SHAPES:
        target = torch.zeros(shape)
        target[:, :2] = torch.randn(shape[0], 2, *shape[2:], generator=generator)
        prediction = torch.zeros(shape)
        prediction[:, 0] = math.cos(theta) * target[:, 0] - math.sin(theta) * target[:, 1]
        prediction[:, 1] = math.sin(theta) * target[:, 0] + math.cos(theta) * target[:, 1]
        targets.append(target)
        predictions.append(prediction)
    return targets, predictions


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def features():
    """resnet18 layer 1-3 taps of 4 random 64 px images: 64x16^2, 128x8^2, 256x4^2."""
    torch.manual_seed(0)
    encoder = build_encoder("resnet18", "none")
    return encoder(torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1)))


def test_wide_resnet_parameter_counts():
    model = RevDist("wide_resnet50_2")
    ocbe = model.bottleneck
    assert (count(ocbe.from_layer1), count(ocbe.from_layer2), count(ocbe.blocks)) == (5_901_312, 4_720_640, 48_263_168)
    assert count(ocbe) == 58_885_120  # 58.89 M: the reference's unused conv4/bn4 (8.39 M) left out
    assert count(model.decoder) == 24_917_504  # exactly anomalib 2.7's decoder
    assert [count(stage) for stage in model.decoder.stages] == [17_840_128, 5_317_632, 1_759_744]
    assert count(model) == 83_802_624
    assert not any(isinstance(m, nn.Conv2d) and m.in_channels == 4096 for m in model.modules())


def test_resnet18_parameter_counts():
    model = RevDist("resnet18")
    ocbe = model.bottleneck
    assert (count(ocbe.from_layer1), count(ocbe.from_layer2), count(ocbe.blocks)) == (369_408, 295_424, 11_015_168)
    assert [count(stage) for stage in model.decoder.stages] == [2_820_608, 705_792, 176_768]
    assert (count(ocbe), count(model.decoder), count(model)) == (11_680_000, 3_703_168, 15_383_168)


def check_reference_init(module):
    """RD4AD's and ReContrast's init: every Conv2d kaiming-normal with fan_out (std sqrt(2 / (out * k * k))),
    ConvTranspose2d PyTorch's default (uniform within 1 / sqrt(fan_in), fan_in = out * k * k for them),
    BatchNorm weight 1 and bias 0. Statistics over tensors of at least 4096 weights."""
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d) and m.weight.numel() >= 4096]
    transposed = [m for m in module.modules() if isinstance(m, nn.ConvTranspose2d) and m.weight.numel() >= 4096]
    assert convs
    for conv in convs:
        expected = (2 / (conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1])) ** 0.5
        std = conv.weight.std().item()
        assert abs(std / expected - 1) < 0.1, (conv, std, expected)
        assert conv.weight.abs().max() > 3 * expected  # normal, not uniform (a uniform's max is 1.73 std)
    for conv in transposed:
        bound = 1 / (conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]) ** 0.5
        assert conv.weight.abs().max() <= bound and abs(conv.weight.std().item() / (bound / 3 ** 0.5) - 1) < 0.1
    for norm in (m for m in module.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.equal(norm.weight, torch.ones_like(norm.weight)) and not norm.bias.any()


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_lite0"])
def test_initialisation_is_rd4ads(backbone):
    torch.manual_seed(0)
    model = RevDist(backbone)
    check_reference_init(model)
    for module in model.modules():  # PyTorch's default init fails the check
        if isinstance(module, nn.Conv2d):
            module.reset_parameters()
    with pytest.raises(AssertionError):
        check_reference_init(model)


def test_efficientnet_lite0_design_parameter_counts_shapes_and_a_cada_head():
    model = RevDist("efficientnet_lite0").eval()
    ocbe = model.bottleneck
    # the resnet18 design at lite0's widths: layers 1-3 24/40/112 ch, the OCBE output 320 = lite0's layer 4
    assert (count(ocbe.from_layer1), count(ocbe.from_layer2), count(ocbe.blocks)) == (49_264, 40_544, 3_843_200)
    assert [count(stage) for stage in model.decoder.stages] == [626_528, 79_440, 23_472]
    assert (count(ocbe), count(model.decoder), count(model)) == (3_933_008, 729_440, 4_662_448)
    torch.manual_seed(0)
    encoder = build_encoder("efficientnet_lite0", "none")
    features = encoder(torch.randn(2, 3, 64, 64))
    assert [f.shape[1] for f in features.values()] == [24, 40, 112]
    with torch.no_grad():
        assert [d.shape for d in model.decode(features)] == [f.shape for f in features.values()]
        bottleneck = model.bottleneck_features(features)
    assert bottleneck.shape == (2, 320, 2, 2) and model.anomaly_map(features).shape == (2, 64, 64)
    u, gamma = Alignment("cada", bottleneck.shape[1]).eval().statistics(bottleneck)
    assert u.shape == gamma.shape == (2,)


def test_wide_resnet_shapes_on_tiny_features():
    model = RevDist("wide_resnet50_2").eval()
    batch = {"layer1": torch.randn(1, 256, 8, 8), "layer2": torch.randn(1, 512, 4, 4),
             "layer3": torch.randn(1, 1024, 2, 2)}
    with torch.no_grad():
        assert model.bottleneck_features(batch).shape == (1, 2048, 1, 1)
        assert [tuple(d.shape) for d in model.decode(batch)] == [tuple(batch[k].shape) for k in LAYERS]


def test_ocbe_concatenates_the_layer1_branch_the_layer2_branch_then_layer3(features):
    model = RevDist("resnet18").eval()
    first = model.bottleneck.blocks[0]

    def unchanged_by(layer):
        changed = {**features, layer: torch.rand_like(features[layer])}
        return torch.equal(model.bottleneck_features(features), model.bottleneck_features(changed))

    with torch.no_grad():  # the fused map's channels: 0-255 layer 1's branch, 256-511 layer 2's, 512-767 layer 3
        for start in (512, 256):
            first.conv1.weight[:, start:] = 0
            first.downsample[0].weight[:, start:] = 0
            assert unchanged_by("layer3") and unchanged_by("layer2") == (start == 256) and not unchanged_by("layer1")


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="resnet152"):
        RevDist("resnet152")
    with pytest.raises(ValueError, match="activation"):
        RevDist("resnet18", activation="silu")
    with pytest.raises(ValueError, match="loss_form"):
        RevDist("resnet18", loss_form="l2")
    with pytest.raises(ValueError, match="loss_form"):
        reconstruction_loss(*rotated(0.1), form="l2")


@pytest.mark.parametrize("form", ["global", "pixel"])
def test_loss_is_zero_for_identical_features_and_3_times_1_minus_cos_for_a_rotation(form):
    targets, _ = rotated(0.0)
    assert reconstruction_loss(targets, [t.clone() for t in targets], form).item() == pytest.approx(0, abs=1e-6)
    for theta in (0.3, 1.1, math.pi / 2, 2.5):
        targets, predictions = rotated(theta)
        assert reconstruction_loss(targets, predictions, form).item() == pytest.approx(3 * (1 - math.cos(theta)),
                                                                                       abs=1e-5)


def test_global_form_compares_whole_maps_pixel_form_each_pixel():
    targets, _ = rotated(0.0)
    # each pixel scaled by its own positive factor: no pixel's direction changes (pixel loss 0),
    # the flattened map's does (global loss > 0)
    generator = torch.Generator().manual_seed(2)
    scaled = [t * (0.1 + 5 * torch.rand(t.shape[0], 1, *t.shape[2:], generator=generator)) for t in targets]
    assert reconstruction_loss(targets, scaled, "pixel").item() == pytest.approx(0, abs=1e-6)
    global_loss = reconstruction_loss(targets, scaled, "global").item()
    assert global_loss > 0.1
    batch = dict(zip(LAYERS, targets))
    for form, expected in (("global", global_loss), ("pixel", 0.0)):
        model = RevDist("resnet18", loss_form=form)
        model.decode = lambda batch: scaled
        assert model.loss(batch).item() == pytest.approx(expected, abs=1e-6)
    assert RevDist("resnet18").loss_form == "global"  # the reference code's form is the default


def test_loss_is_float32_under_bfloat16_autocast_and_targets_get_no_gradient(features):
    model = RevDist("resnet18")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.loss(features)
    assert loss.dtype == torch.float32 and loss.ndim == 0
    halves = {k: f.bfloat16() for k, f in features.items()}  # e.g. a bfloat16 feature cache
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.loss(halves).dtype == torch.float32 and model.anomaly_map(halves).dtype == torch.float32
    targets = {k: f.clone().requires_grad_(True) for k, f in features.items()}
    predictions = [torch.randn_like(f, requires_grad=True) for f in features.values()]
    model.decode = lambda batch: predictions
    model.loss(targets).backward()
    assert all(t.grad is None for t in targets.values())
    assert all(p.grad.abs().sum() > 0 for p in predictions)


def test_map_is_the_mean_over_layers_upsampled_with_aligned_corners():
    targets, rotated_ = rotated(1.0)
    only_layer3 = [targets[0], targets[1], rotated_[2]]  # layer 3 disagrees everywhere by 1 - cos(1)
    maps = cosine_map(targets, only_layer3, 64)
    assert maps.shape == (2, 64, 64)
    assert torch.allclose(maps, torch.full_like(maps, (1 - math.cos(1.0)) / 3), atol=1e-6)
    # one corner pixel of layer 3 (4x4) off by 90 degrees: with align_corners=True the map's corner
    # takes it exactly, and it fades linearly to 0 at the next grid point (64 px / 3 steps)
    prediction = targets[2].clone()
    prediction[:, 0, 0, 0], prediction[:, 1, 0, 0] = -targets[2][:, 1, 0, 0], targets[2][:, 0, 0, 0]
    maps = cosine_map(targets, [targets[0], targets[1], prediction], (64, 64))
    assert maps[:, 0, 0].tolist() == pytest.approx([1 / 3, 1 / 3], abs=1e-6)
    assert maps[:, 0, 21].tolist() == pytest.approx([0, 0], abs=1e-6)
    assert maps[:, 0, 10].tolist() == pytest.approx([(1 - 10 / 21) / 3] * 2, abs=1e-6)


def test_decode_and_map_shapes_at_64_px(features):
    model = RevDist("resnet18").eval()
    assert [d.shape for d in model.decode(features)] == [f.shape for f in features.values()]
    assert model.bottleneck_features(features).shape == (4, 512, 2, 2)
    maps = model.anomaly_map(features)
    assert maps.shape == (4, 64, 64) and maps.dtype == torch.float32
    assert not maps.requires_grad and (maps >= 0).all() and (maps <= 2).all()
    decoded = model.decode(features)
    expected = torch.stack([torch.nn.functional.interpolate(
        (1 - torch.nn.functional.cosine_similarity(f, d, dim=1))[:, None], size=64, mode="bilinear",
        align_corners=True)[:, 0] for f, d in zip(features.values(), decoded)]).mean(0)
    assert torch.allclose(maps, expected, atol=1e-6)


def test_decoder_activation_is_the_argument_and_the_ocbe_keeps_relu():
    for name, kind in (("relu", nn.ReLU), ("gelu", nn.GELU)):
        model = RevDist("resnet18", activation=name)
        decoder_acts = [m for m in model.decoder.modules() if isinstance(m, (nn.ReLU, nn.GELU))]
        assert len(decoder_acts) == 6 and all(type(m) is kind for m in decoder_acts)
        assert not any(isinstance(m, nn.GELU) for m in model.bottleneck.modules())


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_a_few_steps_on_a_fixed_batch_reduce_the_loss(features, activation):
    torch.manual_seed(0)
    model = RevDist("resnet18", activation=activation)
    optimizer, scheduler = model.configure_optimizers(RD4AD, 25)
    losses = fit_losses(model, [features] * 25, optimizer, scheduler, 25)
    assert losses[-1] < 0.3 * losses[0], losses


def test_optimizers_follow_the_config():
    model = RevDist("resnet18")
    optimizer, scheduler = model.configure_optimizers(RD4AD, 100)
    assert type(optimizer) is torch.optim.Adam and scheduler is None and len(optimizer.param_groups) == 1
    group = optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"], group["amsgrad"]) == (
        5e-3, (0.5, 0.999), 1e-8, 0.0, False)
    assert sum(p.numel() for p in group["params"]) == count(model)
    optimizer, scheduler = model.configure_optimizers(MULTI_CLASS, 5000)
    group = optimizer.param_groups[0]
    assert type(optimizer) is torch.optim.AdamW
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"], group["amsgrad"]) == (
        2e-3, (0.9, 0.999), 1e-10, 1e-5, True)
    assert scheduler.milestones == {4000: 1} and scheduler.gamma == 0.2
    for _ in range(3999):
        optimizer.step()  # no gradients: only the schedule moves
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(2e-3)
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(4e-4)
    with pytest.raises(ValueError, match="optimizer"):
        build_optimizer(model.parameters(), SimpleNamespace(**{**vars(RD4AD), "optimizer": "lamb"}), 10)

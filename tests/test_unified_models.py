"""RevDist and ReContrast against the brief: parameter counts, the loss and map on hand-made
tensors, the optimiser settings, frozen parts, hard mining; small resnet18 models on CPU."""
import math
from types import SimpleNamespace

import pytest
import torch

from models.backbones import build_encoder, load_backbone
from models.recontrast import ReContrast
from models.revdist import RevDist, cosine_map, reconstruction_loss

MULTI_CLASS = SimpleNamespace(optimizer="adamw", lr=2e-3, encoder_lr=1e-5, betas=(0.9, 0.999), weight_decay=1e-5,
                              adam_eps=1e-10, amsgrad=True, lr_drop_at=0.8, lr_drop_gamma=0.2)
RD4AD = SimpleNamespace(optimizer="adam", lr=5e-3, betas=(0.5, 0.999), weight_decay=0.0, adam_eps=1e-8,
                        amsgrad=False, lr_drop_at=0.0, lr_drop_gamma=0.2)


def count(module, trainable_only=False):
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def rotated_pairs(theta, shapes=((2, 8, 16, 16), (2, 16, 8, 8), (2, 32, 4, 4)), seed=0):
    """Per layer, features whose first two channels are random and the rest zero, and the same
    features with each pixel's 2-vector rotated by theta: every cosine is cos(theta)."""
    generator = torch.Generator().manual_seed(seed)
    targets, predictions = [], []
    for shape in shapes:
        target = torch.zeros(shape)
        target[:, :2] = torch.randn(shape[0], 2, *shape[2:], generator=generator)
        prediction = torch.zeros(shape)
        prediction[:, 0] = math.cos(theta) * target[:, 0] - math.sin(theta) * target[:, 1]
        prediction[:, 1] = math.sin(theta) * target[:, 0] + math.cos(theta) * target[:, 1]
        targets.append(target)
        predictions.append(prediction)
    return targets, predictions


def resnet18_features(batch=2, size=64, seed=0):
    torch.manual_seed(seed)
    encoder = build_encoder("resnet18", "none")
    return encoder(torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)))


def test_revdist_parameter_counts_match_the_brief():
    model = RevDist("wide_resnet50_2")
    assert count(model.bottleneck) == 58_885_120  # OCBE 58.89 M, without the reference's unused conv4/bn4
    assert count(model.decoder) == 24_917_504     # the official decoder (and anomalib's) exactly
    assert count(model) == 83_802_624
    assert not [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels == 4096]
    small = RevDist("resnet18")
    assert (count(small.bottleneck), count(small.decoder)) == (11_680_000, 3_703_168)
    with pytest.raises(ValueError, match="resnet152"):
        RevDist("resnet152")


@pytest.mark.parametrize("form", ["global", "pixel"])
def test_loss_is_zero_for_identical_features_and_three_times_one_minus_cos_for_a_rotation(form):
    targets, _ = rotated_pairs(0.0)
    assert reconstruction_loss(targets, [t.clone() for t in targets], form).item() == pytest.approx(0, abs=1e-6)
    for theta in (0.3, 1.1, math.pi / 2):
        targets, predictions = rotated_pairs(theta)
        expected = 3 * (1 - math.cos(theta))  # summed over the 3 layers
        assert reconstruction_loss(targets, predictions, form).item() == pytest.approx(expected, abs=1e-5)


def test_global_loss_compares_whole_maps_and_pixel_loss_each_pixel():
    targets, _ = rotated_pairs(0.0)
    # every pixel scaled by its own positive factor: each pixel's direction is unchanged (pixel
    # loss 0), the flattened map's direction is not (global loss > 0)
    scales = [torch.rand(t.shape[0], 1, *t.shape[2:], generator=torch.Generator().manual_seed(1)) * 5 + 0.1
              for t in targets]
    scaled = [t * s for t, s in zip(targets, scales)]
    assert reconstruction_loss(targets, scaled, "pixel").item() == pytest.approx(0, abs=1e-6)
    assert reconstruction_loss(targets, scaled, "global").item() > 0.05
    model = RevDist("resnet18")  # the default is the reference code's global form
    features = dict(zip(("layer1", "layer2", "layer3"), targets))
    model.decode = lambda batch: scaled
    assert model.loss(features).item() == pytest.approx(reconstruction_loss(targets, scaled, "global").item())
    model.loss_form = "pixel"
    assert model.loss(features).item() == pytest.approx(0, abs=1e-6)


def test_anomaly_map_is_the_mean_over_layers_at_the_input_size():
    targets, rotated = rotated_pairs(1.0)
    predictions = [targets[0], targets[1], rotated[2]]  # only layer 3 disagrees, everywhere by cos(1)
    maps = cosine_map(targets, predictions, 64)
    assert maps.shape == (2, 64, 64)
    assert torch.allclose(maps, torch.full_like(maps, (1 - math.cos(1.0)) / 3), atol=1e-5)
    model = RevDist("resnet18")
    features = resnet18_features()
    assert model.anomaly_map(features).shape == (2, 64, 64)  # 4 x layer1's 16 x 16
    assert [d.shape[1:] for d in model.decode(features)] == [f.shape[1:] for f in features.values()]


def test_revdist_learns_a_fixed_batch_and_its_targets_get_no_gradient():
    features = resnet18_features(batch=4)
    torch.manual_seed(0)
    model = RevDist("resnet18", activation="gelu")
    optimizer, scheduler = model.configure_optimizers(MULTI_CLASS, 30)
    losses = []
    for _ in range(30):
        loss = model.loss(features)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses
    targets = {k: f.clone().requires_grad_(True) for k, f in features.items()}
    predictions = [torch.randn_like(f, requires_grad=True) for f in features.values()]
    model.decode = lambda batch: predictions
    model.loss(targets).backward()  # the encoder features are targets: no gradient may reach them
    assert all(t.grad is None for t in targets.values()) and all(p.grad.abs().sum() > 0 for p in predictions)
    assert isinstance(model.decoder.stages[0][0].activation, torch.nn.GELU)
    assert isinstance(RevDist("resnet18").decoder.stages[0][0].activation, torch.nn.ReLU)


def test_optimizers_follow_the_config():
    model = RevDist("resnet18")
    optimizer, scheduler = model.configure_optimizers(RD4AD, 100)
    assert type(optimizer) is torch.optim.Adam and scheduler is None
    group = optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"], group["amsgrad"]) == (5e-3, (0.5, 0.999), 0.0, False)
    assert sum(p.numel() for p in group["params"]) == count(model)
    optimizer, scheduler = model.configure_optimizers(MULTI_CLASS, 5000)
    assert type(optimizer) is torch.optim.AdamW and optimizer.param_groups[0]["eps"] == 1e-10
    assert scheduler.milestones == {4000: 1} and scheduler.gamma == 0.2


def test_recontrast_trainable_parameters_and_frozen_parts():
    big = ReContrast(load_backbone("wide_resnet50_2", "none"), "wide_resnet50_2")
    heads = count(big.heads_to_frozen) + count(big.heads_to_trainable)
    assert heads == 2_756_096 and count(big.trainable_encoder, True) == 24_862_528  # encoder up to layer 3
    assert count(big, trainable_only=True) == 58_885_120 + 24_917_504 + 2_756_096 + 24_862_528  # 111.42 M
    assert count(big.frozen_encoder, trainable_only=True) == 0
    optimizer, scheduler = big.configure_optimizers(MULTI_CLASS, 5000)
    assert [g["lr"] for g in optimizer.param_groups] == [2e-3, 1e-5]
    assert sum(p.numel() for p in optimizer.param_groups[1]["params"]) == 24_862_528
    assert optimizer.param_groups[0]["amsgrad"] and optimizer.param_groups[0]["eps"] == 1e-10
    assert scheduler.milestones == {4000: 1}


def test_recontrast_targets_carry_no_gradient_and_encoder_batchnorm_stays_in_eval_mode():
    torch.manual_seed(0)
    model = ReContrast(load_backbone("resnet18", "none"), "resnet18").train()
    norms = [m for m in model.trainable_encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms) and model.decoder.training
    images = torch.randn(2, 3, 64, 64)
    targets1, set1, targets2, set2 = model._reconstruct(images)
    assert not any(t.requires_grad for t in targets1 + targets2) and all(o.requires_grad for o in set1 + set2)
    running_mean = norms[0].running_mean.clone()
    model.configure_optimizers(MULTI_CLASS, 100)
    model.loss({"image": images}).backward()
    assert torch.equal(norms[0].running_mean, running_mean)  # encoder BatchNorm statistics never move
    assert all(p.grad is None for p in model.frozen_encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.trainable_encoder.parameters())
    assert model.step.item() == 1 and "step" in model.state_dict()


def test_hard_mining_alpha_ramp_and_gradient_factor():
    model = ReContrast(load_backbone("resnet18", "none"), "resnet18")
    model.configure_optimizers(MULTI_CLASS, 100)  # ramp over the first 10 iterations: -3 -> 1
    for step, alpha in ((0, -3.0), (5, -1.0), (10, 1.0), (60, 1.0)):
        model.step.fill_(step)
        assert model.alpha() == pytest.approx(alpha)
    generator = torch.Generator().manual_seed(0)
    target = torch.randn(2, 4, 5, 5, generator=generator)
    grads = {}
    for factor in (0.0, 1.0, 0.1):
        model.hm_factor = factor
        output = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
        decoded = output * 1.0  # the hook sits on this tensor, like on the decoder's output
        model._mined_loss([target], [decoded], alpha=0.0).backward()
        grads[factor] = output.grad
    distance = 1 - torch.nn.functional.cosine_similarity(target, output.detach(), dim=1)
    easy = (distance < distance.mean())[:, None].expand_as(target)  # alpha 0: below the mean
    assert 0 < easy.sum() < easy.numel()
    assert torch.equal(grads[0.0][easy], torch.zeros_like(grads[0.0][easy]))
    assert torch.allclose(grads[0.0][~easy], grads[1.0][~easy]) and torch.allclose(grads[0.1][easy], 0.1 * grads[1.0][easy])


def test_recontrast_map_shape_and_learning():
    torch.manual_seed(0)
    model = ReContrast(load_backbone("resnet18", "none"), "resnet18")
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    optimizer, scheduler = model.configure_optimizers(MULTI_CLASS, 20)
    losses = []
    for _ in range(20):
        loss = model.loss({"image": images})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    model.eval()
    maps = model.anomaly_map({"image": images})
    assert maps.shape == (4, 64, 64) and (maps >= 0).all() and (maps <= 2).all()
    assert model.bottleneck_features({"image": images}).shape == (4, 512, 2, 2)

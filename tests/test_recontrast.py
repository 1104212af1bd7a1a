"""ReContrast against the brief: parameter counts, what is frozen and what gets gradient, encoder
BatchNorm mode, hard mining (hook and alpha ramp), the state dict, the map, learning, the
optimiser settings. Forward passes use resnet18 at 64 px."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import models.recontrast as recontrast
from models.backbones import load_backbone
from models.recontrast import ReContrast, global_cosine_hm
from tests.test_revdist import MULTI_CLASS as REVDIST_MULTI_CLASS
from tests.test_revdist import check_reference_init
from tests.test_training import fit_losses

MULTI_CLASS = SimpleNamespace(**vars(REVDIST_MULTI_CLASS), encoder_lr=1e-5)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def count(module, trainable=False):
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


def small(seed=0, **kwargs):
    torch.manual_seed(seed)
    return ReContrast(load_backbone("resnet18", "none"), "resnet18", **kwargs)


def images(n=4, seed=1):
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def set_loss(model, pairs):
    return global_cosine_hm(pairs, model.alpha(), model.hm_factor)


def encoder_grad(model):
    return sum(p.grad.abs().sum().item() for p in model.trainable_encoder.parameters() if p.grad is not None)


def test_wide_resnet_parameters_and_optimizer_groups():
    model = ReContrast(load_backbone("wide_resnet50_2", "none"), "wide_resnet50_2")
    assert count(model.heads_to_frozen) == count(model.heads_to_trainable) == 1_378_048  # 2,756,096 in all
    assert count(model.trainable_encoder, True) == count(model.trainable_encoder) == 24_862_528  # to layer 3
    assert count(model.frozen_encoder) == 24_862_528 and count(model.frozen_encoder, True) == 0
    assert (count(model.bottleneck), count(model.decoder)) == (58_885_120, 24_917_504)
    assert count(model, True) == 58_885_120 + 24_917_504 + 2_756_096 + 24_862_528 == 111_421_248
    optimizer, scheduler = model.configure_optimizers(MULTI_CLASS, 5000)
    assert type(optimizer) is torch.optim.AdamW and len(optimizer.param_groups) == 2
    assert [sum(p.numel() for p in g["params"]) for g in optimizer.param_groups] == [86_558_720, 24_862_528]
    for group, lr in zip(optimizer.param_groups, (2e-3, 1e-5)):
        assert (group["lr"], group["betas"], group["eps"], group["weight_decay"], group["amsgrad"]) == (
            lr, (0.9, 0.999), 1e-10, 1e-5, True)
    assert scheduler.milestones == {4000: 1} and scheduler.gamma == 0.2 and model.total_iters == 5000
    assert not any(k.startswith("frozen_encoder.") for k in model.state_dict())
    assert sum(v.numel() for k, v in model.state_dict().items() if ".running_" not in k
               and not k.endswith(("num_batches_tracked", "step"))) == 111_421_248


def test_resnet18_parameters_and_bad_arguments():
    model = small()
    assert (count(model.trainable_encoder), count(model.heads_to_frozen) * 2) == (2_782_784, 172_928)
    assert count(model, True) == 11_680_000 + 3_703_168 + 172_928 + 2_782_784 == 18_338_880
    unfrozen = torchvision.models.resnet18(weights=None)  # not from load_backbone: frozen here
    assert count(ReContrast(unfrozen, "resnet18"), True) == 18_338_880
    with pytest.raises(ValueError, match="resnet152"):
        ReContrast(load_backbone("resnet18", "none"), "resnet152")
    with pytest.raises(ValueError, match="not a torchvision wide_resnet50_2"):
        ReContrast(load_backbone("resnet18", "none"), "wide_resnet50_2")


def test_initialisation_is_the_references_and_the_encoders_keep_their_weights():
    model = small()
    for module in (model.bottleneck, model.decoder, model.heads_to_frozen, model.heads_to_trainable):
        check_reference_init(module)
    # the heads: kaiming fan-out weights (std sqrt(2 / c) for a 1x1 conv), PyTorch's default biases
    head = model.heads_to_frozen[2]
    assert abs(head.weight.std().item() / (2 / 256) ** 0.5 - 1) < 0.1
    assert head.bias.abs().max() <= 1 / 256 ** 0.5 and head.bias.abs().max() > 0.9 / 256 ** 0.5
    assert torch.equal(model.trainable_encoder.conv1.weight, model.frozen_encoder.extractor.conv1.weight)
    head.reset_parameters()  # PyTorch's default init fails the check
    with pytest.raises(AssertionError):
        check_reference_init(model.heads_to_frozen)


def test_efficientnet_lite0_encoder_copy_trains_with_frozen_batchnorm():
    torch.manual_seed(0)
    model = ReContrast(load_backbone("efficientnet_lite0", "none"), "efficientnet_lite0").train()
    assert (count(model.bottleneck), count(model.decoder)) == (3_933_008, 729_440)
    assert count(model.heads_to_frozen) + count(model.heads_to_trainable) == 29_792  # 24/40/112 ch
    assert count(model.trainable_encoder, True) == count(model.frozen_encoder) == 700_768  # stem, groups 0-4
    assert count(model, True) == 3_933_008 + 729_440 + 29_792 + 700_768 == 5_393_008
    check_reference_init(model.decoder)
    norms = [m for m in model.trainable_encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 33 and not any(m.training for m in norms)  # stem 1, block groups 2 + 6 + 6 + 9 + 9
    statistics = [m.running_mean.clone() for m in norms]
    frozen = {k: v.clone() for k, v in model.frozen_encoder.state_dict().items()}
    before = model.trainable_encoder.blocks[4][0].conv_pw.weight.clone()
    optimizer, scheduler = model.configure_optimizers(SimpleNamespace(**{**vars(MULTI_CLASS), "encoder_lr": 1e-2}), 10)
    x = {"image": images()}
    losses = fit_losses(model, [x] * 3, optimizer, scheduler, 3)
    assert losses[-1] < losses[0]
    assert not torch.equal(model.trainable_encoder.blocks[4][0].conv_pw.weight, before)
    assert all(torch.equal(m.running_mean, s) for m, s in zip(norms, statistics))
    assert all(torch.equal(v, frozen[k]) for k, v in model.frozen_encoder.state_dict().items())
    assert model.bottleneck_features(x).shape == (4, 320, 2, 2) and model.anomaly_map(x).shape == (4, 64, 64)
    with pytest.raises(ValueError, match="not a timm efficientnet_lite0"):
        ReContrast(load_backbone("resnet18", "none"), "efficientnet_lite0")
    with pytest.raises(ValueError, match="not a torchvision resnet18"):
        ReContrast(load_backbone("efficientnet_lite0", "none"), "resnet18")


def test_encoder_batchnorm_stays_in_eval_mode_and_the_frozen_encoder_never_changes():
    model = small().eval().train()
    encoder_norms = [m for m in model.trainable_encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(encoder_norms) == 15 and not any(m.training for m in encoder_norms)
    assert not model.frozen_encoder.training
    assert all(m.training for m in model.decoder.modules()) and all(m.training for m in model.bottleneck.modules())
    frozen = {k: v.clone() for k, v in model.frozen_encoder.state_dict().items()}
    statistics = [m.running_mean.clone() for m in encoder_norms]
    optimizer, scheduler = model.configure_optimizers(SimpleNamespace(**{**vars(MULTI_CLASS), "encoder_lr": 1e-2}), 10)
    fit_losses(model, [{"image": images()}] * 2, optimizer, scheduler, 2)
    assert all(torch.equal(m.running_mean, s) for m, s in zip(encoder_norms, statistics))
    assert all(torch.equal(v, frozen[k]) for k, v in model.frozen_encoder.state_dict().items())
    assert all(p.grad is None for p in model.frozen_encoder.parameters())
    assert not torch.equal(model.trainable_encoder.conv1.weight, frozen["extractor.conv1.weight"])


def test_targets_carry_no_gradient():
    model = small().eval()  # BatchNorm on running statistics: the two halves do not interact
    pairs = model._pairs(images(2))
    assert not any(t.requires_grad for t, _ in pairs) and all(o.requires_grad for _, o in pairs)
    # set 2 reads the frozen half and is matched to the trainable encoder: if its targets carried
    # gradient, the trainable encoder would get some from it
    set_loss(model, pairs[3:]).backward()
    assert encoder_grad(model) == 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.heads_to_trainable.parameters())
    model.zero_grad()
    set_loss(model, model._pairs(images(2))[:3]).backward()  # set 1 reads the trainable half
    assert encoder_grad(model) > 0
    # in train mode the bottleneck's and decoder's BatchNorms see both halves (2B) at once, so set 2
    # does reach the trainable encoder, through the batch statistics (as in the reference)
    model.train().zero_grad()
    set_loss(model, model._pairs(images(2))[3:]).backward()
    assert encoder_grad(model) > 0


def test_hard_mining_hook_scales_exactly_the_gradient_of_the_easy_points():
    target = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(0))
    leaf = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(1))
    d = 1 - F.cosine_similarity(target, leaf, dim=1)
    # alpha between the z-scores of the 5th largest d under the unbiased (the reference's) and the
    # biased std: that point is easy with the first and hard with the second
    fifth = d.flatten().sort(descending=True).values[4]
    z_unbiased, z_biased = ((fifth - d.mean()) / std for std in (d.std(), d.std(unbiased=False)))
    alpha = ((z_unbiased + z_biased) / 2).item()
    easy = (d < d.mean() + alpha * d.std())
    assert easy.sum() == d.numel() - 4 and (d < d.mean() + alpha * d.std(unbiased=False)).sum() == d.numel() - 5
    easy = easy.unsqueeze(1).expand_as(target)
    grads, seen, losses = {}, [], {}
    for factor in (1.0, 0.0, 0.1):
        output = leaf.clone().requires_grad_(True)
        decoded = output * 1  # the hook sits on a non-leaf, like the heads' outputs
        decoded.register_hook(lambda grad: seen.append(grad) or None)  # runs first: sees the raw gradient
        live_target = target.clone().requires_grad_(True)
        loss = global_cosine_hm([(live_target, decoded)], alpha, factor)
        loss.backward()
        assert live_target.grad is None  # the target is detached
        grads[factor], losses[factor] = output.grad, loss.item()
    plain = grads[1.0]
    assert (plain[easy] != 0).all()
    assert torch.equal(grads[0.0][easy], torch.zeros_like(plain[easy]))
    assert torch.equal(grads[0.0][~easy], plain[~easy])
    assert torch.allclose(grads[0.1][easy], 0.1 * plain[easy]) and torch.equal(grads[0.1][~easy], plain[~easy])
    assert all(torch.equal(s, seen[0]) for s in seen)  # the gradient is not edited in place
    assert losses[0.0] == losses[1.0] == losses[0.1]  # mining changes gradients, not the value
    expected = (1 - F.cosine_similarity(target.flatten(1), leaf.flatten(1), dim=1)).mean().item()
    assert losses[1.0] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("alpha, trained", [(50.0, False), (-50.0, True)])
def test_hard_mining_is_wired_into_the_loss(alpha, trained):
    # factor 0 and every point easy (alpha 50): no gradient anywhere; no point easy (-50): gradient
    model = small(hm_alpha_start=alpha, hm_alpha_end=alpha)
    model.configure_optimizers(MULTI_CLASS, 100)
    model.loss({"image": images(2)}).backward()
    total = sum(p.grad.abs().sum().item() for p in model.parameters() if p.grad is not None)
    assert (total > 0) == trained


def test_alpha_ramps_from_minus_3_to_1_over_the_first_tenth_and_the_step_is_saved(monkeypatch):
    model = small()
    assert model.hm_factor == 0.0 and model.alpha() == 1.0  # no total_iters yet: no ramp
    model.configure_optimizers(MULTI_CLASS, 100)
    for step, alpha in ((0, -3.0), (1, -2.6), (5, -1.0), (10, 1.0), (60, 1.0)):
        model.step.fill_(step)
        assert model.alpha() == pytest.approx(alpha)
    model.configure_optimizers(MULTI_CLASS, 5000)
    model.step.fill_(250)
    assert model.alpha() == pytest.approx(-1.0)
    # each training loss() uses the alpha of the current step, then counts it; eval does not count
    seen = []
    monkeypatch.setattr(recontrast, "global_cosine_hm", lambda pairs, alpha, factor: seen.append(alpha) or
                        pairs[0][1].sum() * 0)
    model.step.zero_()
    model.configure_optimizers(MULTI_CLASS, 20)  # ramp over 2 iterations
    for _ in range(3):
        model.loss({"image": images(2)})
    assert seen == pytest.approx([-3.0, -3.0, -1.0, -1.0, 1.0, 1.0]) and model.step.item() == 3
    model.eval().loss({"image": images(2)})
    assert model.step.item() == 3
    resumed = small(seed=5)
    resumed.load_state_dict(model.state_dict())
    resumed.configure_optimizers(MULTI_CLASS, 20)
    assert resumed.step.item() == 3 and resumed.alpha() == 1.0


def test_state_dict_leaves_the_frozen_encoder_out_and_loads_with_or_without_it():
    model, other = small(seed=0), small(seed=1)
    state = model.state_dict()
    assert "step" in state and any(k.startswith("trainable_encoder.") for k in state)
    assert not any(k.startswith("frozen_encoder.") for k in state)
    frozen_before = other.frozen_encoder.extractor.conv1.weight.clone()
    other.load_state_dict(state)  # strict: the frozen weights are the model's own
    assert torch.equal(other.frozen_encoder.extractor.conv1.weight, frozen_before)
    assert torch.equal(other.trainable_encoder.conv1.weight, model.trainable_encoder.conv1.weight)
    assert torch.equal(other.decoder.stages[0][0].convs[0].weight, model.decoder.stages[0][0].convs[0].weight)
    with_frozen = {**state, **{f"frozen_encoder.{k}": v for k, v in model.frozen_encoder.state_dict().items()}}
    other.load_state_dict(with_frozen)  # a checkpoint that holds them still loads them
    assert torch.equal(other.frozen_encoder.extractor.conv1.weight, model.frozen_encoder.extractor.conv1.weight)
    nested = nn.ModuleDict({"base": small(seed=2)})
    assert not any(".frozen_encoder." in k for k in nested.state_dict())
    nested.load_state_dict(nested.state_dict())


def test_map_is_the_mean_of_the_six_maps_at_the_input_size_and_the_bottleneck_is_the_frozen_half():
    model = small().eval()
    with torch.no_grad():  # the copies start equal: move the trainable one so that the halves differ
        for p in model.trainable_encoder.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    x = images(3)
    maps = model.anomaly_map({"image": x})
    assert maps.shape == (3, 64, 64) and maps.dtype == torch.float32 and not maps.requires_grad
    with torch.no_grad():
        pairs = model._pairs(x)
        six = [F.interpolate((1 - F.cosine_similarity(t, o, dim=1))[:, None], size=(64, 64), mode="bilinear",
                             align_corners=True)[:, 0] for t, o in pairs]
        assert torch.allclose(maps, torch.stack(six).mean(0), atol=1e-6)
        # set 1 is matched to the frozen encoder, set 2 to the trainable one
        frozen, trainable = model.frozen_encoder(x), model.trainable_encoder(x)
        assert all(torch.equal(t, frozen[k]) for (t, _), k in zip(pairs[:3], ("layer1", "layer2", "layer3")))
        assert all(torch.equal(t, trainable[k]) for (t, _), k in zip(pairs[3:], ("layer1", "layer2", "layer3")))
        fused = model.bottleneck({k: torch.cat([trainable[k], frozen[k]]) for k in frozen})
        features = model.bottleneck_features({"image": x})
    assert features.shape == (3, 512, 2, 2)
    assert torch.allclose(features, fused[3:], atol=1e-5) and not torch.allclose(features, fused[:3], atol=1e-3)


def test_loss_is_the_mean_of_the_two_sets_global_cosine_distances():
    model = small().eval()  # deterministic BatchNorm
    with torch.no_grad():
        for p in model.trainable_encoder.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(4)))
    x = images(2)
    loss = model.loss({"image": x})
    with torch.no_grad():
        sets = [sum((1 - F.cosine_similarity(t.flatten(1), o.flatten(1))).mean() for t, o in half)
                for half in (model._pairs(x)[:3], model._pairs(x)[3:])]
    assert sets[0].item() != pytest.approx(sets[1].item(), rel=1e-3)
    assert loss.item() == pytest.approx((sets[0] + sets[1]).item() / 2, rel=1e-5)


def test_a_few_steps_on_a_fixed_batch_reduce_the_loss_and_the_loss_is_float32_under_autocast():
    model = small()
    x = {"image": images(4)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.loss(x).dtype == torch.float32
    model.step.zero_()
    optimizer, scheduler = model.configure_optimizers(MULTI_CLASS, 20)
    losses = fit_losses(model, [x] * 20, optimizer, scheduler, 20)
    assert losses[-1] < 0.5 * losses[0], losses
    assert optimizer.param_groups[0]["lr"] == pytest.approx(2e-3 * 0.2)  # dropped at iteration 16
    assert optimizer.param_groups[1]["lr"] == pytest.approx(1e-5 * 0.2)

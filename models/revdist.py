"""Reverse Distillation (RD4AD: Deng and Li, "Anomaly Detection via Reverse Distillation from
One-Class Embedding", CVPR 2022; https://github.com/hq-deng/RD4AD).

A frozen ImageNet encoder (the teacher) gives layers 1-3; a trainable one-class bottleneck
embedding (OCBE) fuses them into one compact map; a decoder (the student) mirrors the encoder and
rebuilds the three layers from it, deepest first. Anomaly = where student and teacher disagree.

The model does not own the encoder: a batch is the encoder's feature dict {"layer1", "layer2",
"layer3"} (the standard taps of models.backbones.build_encoder: post-ReLU for ResNets), so that the
script can cache it. The input image is taken to be 4x layer1's size (the encoder's stride there).

wide_resnet50_2 (the papers'), taps 256x64^2, 512x32^2, 1024x16^2 at 256 px:
  OCBE     layer1 -> 3x3 s2 conv 256->512, BN, ReLU -> 3x3 s2 conv 512->1024, BN, ReLU;
           layer2 -> 3x3 s2 conv 512->1024, BN, ReLU; concatenated with layer3 -> 3072 x 16^2;
           3 torchvision Bottlenecks of width 1024 (base width 128) and output 2048, the first
           with stride 2 and a 1x1 s2 conv + BN shortcut from 3072 -> 2048 x 8^2.
           58,885,120 parameters = 5,901,312 + 4,720,640 (the convs) + 48,263,168 (the blocks).
           The reference also builds a conv4/bn4 (4096 -> 2048, 8.39 M) that it never uses: left out.
  decoder  a mirrored WRN50-2: stages of 3, 4, 6 bottlenecks, planes 256/128/64, width x2, each
           stage's first block upsampling with a 2x2 stride-2 transposed conv in the 3x3 slot and a
           2x2 s2 transposed conv + BN shortcut. Outputs 1024x16^2, 512x32^2, 256x64^2, matched to
           layers 3/2/1. 24,917,504 parameters (anomalib 2.7's decoder has exactly as many).
  total    83,802,624.
resnet18 (for CPU runs; built the way RD4AD builds its BasicBlock variants), taps 64/128/256 ch:
  OCBE     3x3 s2 convs 64->128 -> 128->256 and 128->256 (each + BN + ReLU), concatenated with
           layer3 -> 768 ch, 2 BasicBlocks (the first stride 2 with a 1x1 s2 conv + BN shortcut)
           -> 512 x H3/2. 11,680,000 = 369,408 + 295,424 + 11,015,168 parameters.
  decoder  de-BasicBlocks [2, 2, 2], planes 256/128/64, each stage's first block upsampling with a
           2x2 s2 transposed conv in its first conv slot and in the shortcut (+ BN).
           3,703,168 = 2,820,608 + 705,792 + 176,768 parameters.
  total    15,383,168.
EfficientNets (models.backbones.EFFICIENTNETS): the resnet18 design at the encoder's own widths, taps
c1/c2/c3 (layer1-3, strides 4/8/16) and c4 = its layer4 (stride 32), which the OCBE output takes the place
of, as RD4AD's 2048 channels take WRN50-2's layer 4's:
  OCBE     3x3 s2 convs c1->c2 -> c2->c3 and c2->c3 (each + BN + ReLU), concatenated with layer3 -> 3 c3,
           2 BasicBlocks of width c4 (the first stride 2 with a 1x1 s2 conv + BN shortcut) -> c4 x H3/2.
  decoder  de-BasicBlocks [2, 2, 2], planes c3/c2/c1, upsampling as for resnet18.
  efficientnet_lite0 (24/40/112, 320): OCBE 3,933,008 = 49,264 + 40,544 + 3,843,200; decoder 729,440 =
  626,528 + 79,440 + 23,472; total 4,662,448.

Init (RD4AD's resnet.py BN_layer and de_resnet.py): every Conv2d kaiming-normal (fan_out, relu),
BatchNorm weight 1 and bias 0; ConvTranspose2d keeps PyTorch's default.

`activation` is the decoder's ("relu": RD4AD; "gelu": ReContrast's multi-class code, which the
CADA paper's bases use); the OCBE always uses ReLU.

Loss (`loss_form`): "global", the reference code's: per layer 1 - cosine between the whole
flattened C*H*W maps of each sample, mean over the batch, summed over the 3 layers. "pixel", the
paper's formula: per layer the mean over pixels of 1 - channel-wise cosine, summed over the layers
(RD4AD issue 22 reports it worse). Targets are detached; cosines are computed in float32.
Map: per layer 1 - channel-wise cosine, bilinearly upsampled (align_corners=True) to the input size,
MEAN over the layers (the multi-class reference; RD4AD sums, which only scales the map); no blur.
`recompute=True` keeps only convolution outputs for the backward pass, block by block
(models.recompute): less memory, a little more time, the same trained model.
"""
from collections import namedtuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock, Bottleneck

from models.backbones import EFFICIENTNETS, tap_channels
from models.recompute import run_blocks
from utils.optim import build_optimizer

LAYERS = ("layer1", "layer2", "layer3")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}
LOSS_FORMS = ("global", "pixel")

# channels: (layer1, layer2, layer3, the OCBE's output = the encoder's layer 4); planes = channels / expansion
Architecture = namedtuple("Architecture", "block channels base_width ocbe_blocks decoder_blocks")
ARCHITECTURES = {
    "wide_resnet50_2": Architecture(Bottleneck, (256, 512, 1024, 2048), 128, 3, (3, 4, 6)),
    "resnet18": Architecture(BasicBlock, (64, 128, 256, 512), 64, 2, (2, 2, 2)),
}
BACKBONES = (*ARCHITECTURES, *EFFICIENTNETS)


def architecture(backbone):
    """The OCBE/decoder layout for a backbone: RD4AD's for wide_resnet50_2, its BasicBlock variant for
    resnet18, and that BasicBlock variant at the encoder's own widths for an EfficientNet."""
    if backbone in EFFICIENTNETS:
        channels = tap_channels(backbone)
        return Architecture(BasicBlock, tuple(channels[k] for k in ("layer1", "layer2", "layer3", "layer4")),
                            64, 2, (2, 2, 2))
    if backbone not in ARCHITECTURES:
        raise ValueError(f"unsupported backbone {backbone!r}: RevDist and ReContrast are built for "
                         f"{', '.join(BACKBONES)}")
    return ARCHITECTURES[backbone]


def init_like_reference(module):
    """RD4AD's and ReContrast's initialisation (resnet.py BN_layer, de_resnet.py ResNet): every Conv2d
    kaiming-normal (fan_out, relu), BatchNorm weight 1 and bias 0. ConvTranspose2d (not a Conv2d) and conv
    biases keep PyTorch's defaults, as there."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _downsampling_conv(in_channels, out_channels):
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class OCBE(nn.Module):
    """One-class bottleneck embedding: {layer1, layer2, layer3} -> (B, channels[3], H3/2, W3/2)."""

    def __init__(self, arch, recompute=False):
        super().__init__()
        self.recompute = recompute  # models.recompute: one region per conv block
        c1, c2, c3, out = arch.channels
        self.from_layer1 = nn.Sequential(_downsampling_conv(c1, c2), _downsampling_conv(c2, c3))
        self.from_layer2 = _downsampling_conv(c2, c3)
        fused, planes = 3 * c3, out // arch.block.expansion
        shortcut = nn.Sequential(nn.Conv2d(fused, out, 1, stride=2, bias=False), nn.BatchNorm2d(out))
        width = {"base_width": arch.base_width} if arch.block is Bottleneck else {}
        blocks = [arch.block(fused, planes, stride=2, downsample=shortcut, **width)]
        blocks += [arch.block(out, planes, **width) for _ in range(arch.ocbe_blocks - 1)]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, features):
        f1, f2, f3 = (features[name] for name in LAYERS)
        fused = torch.cat([run_blocks(self.from_layer1, f1, self.recompute),
                           run_blocks([self.from_layer2], f2, self.recompute), f3], dim=1)
        return run_blocks(self.blocks, fused, self.recompute)


class DeBlock(nn.Module):
    """A ResNet block (torchvision's Bottleneck or BasicBlock layout) run backwards: an upsampling
    block doubles the resolution with 2x2 stride-2 transposed convs, in the 3x3 slot (bottleneck)
    or the first conv (basic block), and in the shortcut."""

    def __init__(self, bottleneck, in_channels, planes, base_width, upsample, activation):
        super().__init__()
        out = planes * (4 if bottleneck else 1)

        def spatial(cin, cout):
            if upsample:
                return nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=False)
            return nn.Conv2d(cin, cout, 3, padding=1, bias=False)

        if bottleneck:
            width = planes * base_width // 64
            convs = [nn.Conv2d(in_channels, width, 1, bias=False), spatial(width, width),
                     nn.Conv2d(width, out, 1, bias=False)]
        else:
            convs = [spatial(in_channels, planes), nn.Conv2d(planes, planes, 3, padding=1, bias=False)]
        self.convs = nn.ModuleList(convs)
        self.norms = nn.ModuleList(nn.BatchNorm2d(conv.out_channels) for conv in convs)
        self.shortcut = nn.Identity()
        if upsample:
            self.shortcut = nn.Sequential(nn.ConvTranspose2d(in_channels, out, 2, stride=2, bias=False),
                                          nn.BatchNorm2d(out))
        self.activation = ACTIVATIONS[activation]()

    def forward(self, x):
        y = x
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            y = norm(conv(y))
            if i < len(self.convs) - 1:
                y = self.activation(y)
        return self.activation(y + self.shortcut(x))


class Decoder(nn.Module):
    """(B, channels[3], h, w) -> [layer1-, layer2-, layer3-shaped maps] (encoder order)."""

    def __init__(self, arch, activation, recompute=False):
        super().__init__()
        self.recompute = recompute  # models.recompute: one region per block
        bottleneck = arch.block is Bottleneck
        in_channels, stages = arch.channels[3], []
        for out, n_blocks in zip(arch.channels[2::-1], arch.decoder_blocks):
            planes = out // arch.block.expansion
            blocks = [DeBlock(bottleneck, in_channels, planes, arch.base_width, True, activation)]
            blocks += [DeBlock(bottleneck, out, planes, arch.base_width, False, activation)
                       for _ in range(n_blocks - 1)]
            in_channels = out
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)

    def forward(self, x):
        outputs = []
        for stage in self.stages:
            x = run_blocks(stage, x, self.recompute)
            outputs.append(x)
        return outputs[::-1]


def cosine_distance(target, prediction, form):
    """1 - cosine, in float32: "global" over each sample's flattened map -> (B,); "pixel" over the
    channels of each position -> (B, H, W)."""
    target, prediction = target.float(), prediction.float()
    if form == "global":
        return 1 - F.cosine_similarity(target.flatten(1), prediction.flatten(1), dim=1)
    return 1 - F.cosine_similarity(target, prediction, dim=1)


def reconstruction_loss(targets, predictions, form="global"):
    """Sum over the layers of the batch mean of cosine_distance; the targets are detached."""
    if form not in LOSS_FORMS:
        raise ValueError(f"loss_form must be 'global' or 'pixel', got {form!r}")
    return sum(cosine_distance(t.detach(), p, form).mean() for t, p in zip(targets, predictions))


def cosine_map(targets, predictions, size):
    """(B, *size) mean over the layers of 1 - channel cosine, each bilinearly upsampled
    (align_corners=True) to size (an int or (H, W))."""
    maps = [F.interpolate(cosine_distance(t, p, "pixel")[:, None], size=size, mode="bilinear", align_corners=True)
            for t, p in zip(targets, predictions)]
    return torch.stack(maps).mean(dim=0)[:, 0]


class RevDist(nn.Module):
    def __init__(self, backbone="wide_resnet50_2", activation="relu", loss_form="global", recompute=False):
        super().__init__()
        arch = architecture(backbone)
        if activation not in ACTIVATIONS:
            raise ValueError(f"decoder activation must be 'relu' or 'gelu', got {activation!r}")
        if loss_form not in LOSS_FORMS:
            raise ValueError(f"loss_form must be 'global' or 'pixel', got {loss_form!r}")
        self.loss_form = loss_form
        self.bottleneck = OCBE(arch, recompute)
        self.decoder = Decoder(arch, activation, recompute)
        init_like_reference(self)

    def bottleneck_features(self, batch):
        """The OCBE output (B, channels[3], H3/2, W3/2): 2048 x 8^2 for WRN50-2 at 256 px."""
        return self.bottleneck(batch)

    def decode(self, batch):
        """[layer1-, layer2-, layer3-shaped reconstructions], in encoder order."""
        return self.decoder(self.bottleneck(batch))

    def loss(self, batch):
        return reconstruction_loss([batch[name] for name in LAYERS], self.decode(batch), self.loss_form)

    @torch.no_grad()
    def anomaly_map(self, batch):
        """(B, 4 * H1, 4 * W1) float32, before any blur."""
        targets = [batch[name] for name in LAYERS]
        height, width = targets[0].shape[-2:]
        return cosine_map(targets, self.decode(batch), (4 * height, 4 * width))

    def configure_optimizers(self, cfg, total_iters):
        """One group: the OCBE and the decoder."""
        return build_optimizer([p for p in self.parameters() if p.requires_grad], cfg, total_iters)

"""Reverse Distillation (RD4AD: Deng and Li, "Anomaly Detection via Reverse Distillation from
One-Class Embedding", CVPR 2022; https://github.com/hq-deng/RD4AD).

A frozen encoder (the teacher) gives layers 1-3; a trainable one-class bottleneck embedding (OCBE)
fuses them into one compact map; a decoder (the student) mirrors the encoder and reconstructs the
three layers from it, in reverse. Anomaly = where student and teacher disagree (1 - cosine).

wide_resnet50_2 (the papers'), taps 256x64^2, 512x32^2, 1024x16^2 at 256 px:
  OCBE     layer1 -> 3x3 s2 conv 256->512, BN, ReLU -> 3x3 s2 conv 512->1024, BN, ReLU;
           layer2 -> 3x3 s2 conv 512->1024, BN, ReLU; concatenated with layer3 -> 3072 x 16^2;
           three WRN bottlenecks (width 1024, first stride 2 with a 1x1 s2 downsample) -> 2048 x 8^2.
           The reference also builds a conv4/bn4 (4096->2048) that it never uses: left out.
           58.89 M parameters.
  decoder  a mirrored WRN50-2: layers of 3, 4, 6 bottlenecks, planes 256/128/64, width x2; each
           layer's first block upsamples with a 2x2 stride-2 transposed conv in the 3x3 slot and in
           the shortcut. Outputs 1024x16^2, 512x32^2, 256x64^2. 24,917,504 parameters.
resnet18 (for CPU runs), taps 64x64^2, 128x32^2, 256x16^2 at 256 px, built the way RD4AD builds its
  BasicBlock variants: OCBE convs 64->128 s2 -> 128->256 s2 and 128->256 s2, concatenated with
  layer3 -> 768 ch, two BasicBlocks (first stride 2, 1x1 s2 downsample) -> 512 x 8^2; decoder of
  BasicBlocks [2, 2, 2], planes 256/128/64, each layer's first block upsampling with a 2x2
  stride-2 transposed conv in its first conv slot and in the shortcut.

The decoder's activation is a constructor argument: ReLU (RD4AD) or GELU (ReContrast's
multi-class code, which the CADA paper's bases use); the OCBE keeps ReLU.

Loss (`loss_form`): "global", the reference code's: per layer 1 - cosine between the whole
flattened C*H*W maps of each sample, mean over the batch, summed over the 3 layers. "pixel", the
paper's formula: per layer the mean over pixels of 1 - channel-wise cosine, summed (RD4AD issue 22
reports it worse). Map: per layer 1 - channel-wise cosine, bilinearly upsampled (align_corners=True)
to the input size, mean over the layers (the multi-class reference; RD4AD sums, the same ranking).

The model does not own the frozen encoder: a batch is the encoder's feature dict {"layer1",
"layer2", "layer3"} (torchvision's post-ReLU taps), so that the script can cache it.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock, Bottleneck

LAYERS = ("layer1", "layer2", "layer3")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}
# backbone -> (block, expansion, base width, OCBE blocks, decoder blocks per layer)
ARCHITECTURES = {
    "wide_resnet50_2": (Bottleneck, 4, 128, 3, (3, 4, 6)),
    "resnet18": (BasicBlock, 1, 64, 2, (2, 2, 2)),
}


def _conv_bn_relu(in_channels, out_channels):
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class OCBE(nn.Module):
    """One-class bottleneck embedding: layers 1-3 -> one (B, 512 * expansion, H3/2, W3/2) map."""

    def __init__(self, block, expansion, base_width, n_blocks):
        super().__init__()
        c1, c2, c3 = 64 * expansion, 128 * expansion, 256 * expansion
        self.from_layer1 = nn.Sequential(_conv_bn_relu(c1, c2), _conv_bn_relu(c2, c3))
        self.from_layer2 = _conv_bn_relu(c2, c3)
        fused, out = 3 * c3, 512 * expansion
        downsample = nn.Sequential(nn.Conv2d(fused, out, 1, stride=2, bias=False), nn.BatchNorm2d(out))
        extra = {"base_width": base_width} if block is Bottleneck else {}
        blocks = [block(fused, 512, stride=2, downsample=downsample, **extra)]
        blocks += [block(out, 512, **extra) for _ in range(n_blocks - 1)]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, features):
        f1, f2, f3 = (features[name] for name in LAYERS)
        return self.blocks(torch.cat([self.from_layer1(f1), self.from_layer2(f2), f3], dim=1))


class _DeBlock(nn.Module):
    """A ResNet block run in reverse: a stride-2 block doubles the resolution with 2x2 transposed
    convs (in its 3x3 slot for bottlenecks, its first conv for basic blocks, and in the shortcut)."""

    def __init__(self, bottleneck, in_channels, planes, base_width, upsample, activation):
        super().__init__()
        expansion = 4 if bottleneck else 1
        out = planes * expansion
        if bottleneck:
            width = planes * base_width // 64
            spatial = (nn.ConvTranspose2d(width, width, 2, stride=2, bias=False) if upsample
                       else nn.Conv2d(width, width, 3, padding=1, bias=False))
            self.convs = nn.ModuleList([nn.Conv2d(in_channels, width, 1, bias=False), spatial,
                                        nn.Conv2d(width, out, 1, bias=False)])
            self.norms = nn.ModuleList([nn.BatchNorm2d(width), nn.BatchNorm2d(width), nn.BatchNorm2d(out)])
        else:
            first = (nn.ConvTranspose2d(in_channels, planes, 2, stride=2, bias=False) if upsample
                     else nn.Conv2d(in_channels, planes, 3, padding=1, bias=False))
            self.convs = nn.ModuleList([first, nn.Conv2d(planes, planes, 3, padding=1, bias=False)])
            self.norms = nn.ModuleList([nn.BatchNorm2d(planes), nn.BatchNorm2d(planes)])
        self.shortcut = (nn.Sequential(nn.ConvTranspose2d(in_channels, out, 2, stride=2, bias=False), nn.BatchNorm2d(out))
                         if upsample else nn.Identity())
        self.activation = ACTIVATIONS[activation]()

    def forward(self, x):
        out = x
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            out = norm(conv(out))
            if i < len(self.convs) - 1:
                out = self.activation(out)
        return self.activation(out + self.shortcut(x))


class Decoder(nn.Module):
    """The mirrored encoder: (B, 512 * expansion, h, w) -> [layer1-, layer2-, layer3-shaped maps]."""

    def __init__(self, block, expansion, base_width, layer_blocks, activation):
        super().__init__()
        bottleneck = block is Bottleneck
        in_channels, stages = 512 * expansion, []
        for planes, n_blocks in zip((256, 128, 64), layer_blocks):
            blocks = [_DeBlock(bottleneck, in_channels, planes, base_width, True, activation)]
            in_channels = planes * expansion
            blocks += [_DeBlock(bottleneck, in_channels, planes, base_width, False, activation)
                       for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)

    def forward(self, x):
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs[::-1]  # encoder order: layer1, layer2, layer3


def cosine_distance(target, prediction, form):
    """1 - cosine of each sample: "global" over the flattened map (B,), "pixel" over channels (B, H, W)."""
    target, prediction = target.float(), prediction.float()
    if form == "global":
        return 1 - F.cosine_similarity(target.flatten(1), prediction.flatten(1), dim=1)
    return 1 - F.cosine_similarity(target, prediction, dim=1)


def reconstruction_loss(targets, predictions, form="global"):
    """Sum over layers of the batch mean of cosine_distance; the targets are detached."""
    if form not in ("global", "pixel"):
        raise ValueError(f"loss_form must be 'global' or 'pixel', got {form!r}")
    return sum(cosine_distance(t.detach(), p, form).mean() for t, p in zip(targets, predictions))


def cosine_map(targets, predictions, size):
    """Mean over layers of 1 - channel cosine, each upsampled (align_corners=True) to size x size."""
    maps = [F.interpolate(cosine_distance(t, p, "pixel")[:, None], size=(size, size), mode="bilinear",
                          align_corners=True) for t, p in zip(targets, predictions)]
    return torch.stack(maps).mean(dim=0)[:, 0]


def build_optimizer(param_groups, cfg, total_iters):
    """Adam or AdamW (cfg.lr, cfg.betas, cfg.weight_decay, cfg.adam_eps, cfg.amsgrad), and a MultiStepLR
    multiplying the learning rate by cfg.lr_drop_gamma after cfg.lr_drop_at of total_iters (0 = none)."""
    kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}.get(cfg.optimizer)
    if kind is None:
        raise ValueError(f"optimizer must be 'adam' or 'adamw', got {cfg.optimizer!r}")
    optimizer = kind(param_groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.adam_eps,
                     weight_decay=cfg.weight_decay, amsgrad=cfg.amsgrad)
    if not cfg.lr_drop_at:
        return optimizer, None
    milestone = max(1, int(cfg.lr_drop_at * total_iters))
    return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, [milestone], gamma=cfg.lr_drop_gamma)


class RevDist(nn.Module):
    def __init__(self, backbone="wide_resnet50_2", activation="relu", loss_form="global"):
        super().__init__()
        if backbone not in ARCHITECTURES:
            raise ValueError(f"RevDist is built for {', '.join(ARCHITECTURES)}, not {backbone!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"decoder activation must be 'relu' or 'gelu', got {activation!r}")
        if loss_form not in ("global", "pixel"):
            raise ValueError(f"loss_form must be 'global' or 'pixel', got {loss_form!r}")
        block, expansion, base_width, ocbe_blocks, decoder_blocks = ARCHITECTURES[backbone]
        self.loss_form = loss_form
        self.bottleneck = OCBE(block, expansion, base_width, ocbe_blocks)
        self.decoder = Decoder(block, expansion, base_width, decoder_blocks, activation)

    def bottleneck_features(self, batch):
        """The OCBE output (B, 512 * expansion, h, w)."""
        return self.bottleneck(batch)

    def decode(self, batch):
        return self.decoder(self.bottleneck(batch))

    def loss(self, batch):
        return reconstruction_loss([batch[name] for name in LAYERS], self.decode(batch), self.loss_form)

    @torch.no_grad()
    def anomaly_map(self, batch):
        """(B, H, W) at the input size (4 x layer1's), before the blur."""
        targets = [batch[name] for name in LAYERS]
        return cosine_map(targets, self.decode(batch), 4 * targets[0].shape[-1])

    def configure_optimizers(self, cfg, total_iters):
        return build_optimizer([p for p in self.parameters() if p.requires_grad], cfg, total_iters)

"""ReContrast (Guo et al., "ReContrast: Domain-Specific Anomaly Detection via Contrastive
Reconstruction", NeurIPS 2023; https://github.com/guojiajeremy/ReContrast), multi-class setting.

Two copies of the ImageNet encoder up to layer 3 (nothing computes layer 4), built from one
classifier (models.backbones.load_backbone: a torchvision ResNet or a timm EfficientNet), which is used
in place as the frozen copy (its requires_grad is switched off):
  frozen     run under no_grad, always in eval mode;
  trainable  a deep copy with requires_grad on, its own small learning rate (cfg.encoder_lr); its
             BatchNorm layers stay in eval mode even in model.train() (the multi-class code; the
             single-class code picks this per class from test results).
Both see the same images; their layer 1-3 taps are concatenated on the batch axis (trainable half
first, 2B in all) and go through one bottleneck and one decoder, RevDist's (models.revdist; decoder
GELU by default, OCBE ReLU; for an EfficientNet its BasicBlock design at the encoder's widths), then two
sets of 1x1 output convs with bias per scale (256/512/1024 ch, 2,756,096 parameters for wide_resnet50_2;
64/128/256 ch, 172,928 for resnet18; 24/40/112 ch, 29,792 for efficientnet_lite0):
  set 1, on the trainable encoder's half, is matched to the FROZEN encoder's features;
  set 2, on the frozen encoder's half, is matched to the TRAINABLE encoder's features.
Targets are always detached: the trainable encoder is trained only through the decoder's input (in
train mode that includes the 2B batch statistics of the bottleneck's and decoder's BatchNorms).

Trainable parameters, wide_resnet50_2: OCBE 58,885,120 + decoder 24,917,504 + heads 2,756,096 +
encoder to layer 3 24,862,528 = 111,421,248. resnet18: 11,680,000 + 3,703,168 + 172,928 +
2,782,784 = 18,338,880. efficientnet_lite0: 3,933,008 + 729,440 + 29,792 + encoder to layer 3 (stem and
block groups 0-4, models.backbones.EfficientNetTaps) 700,768 = 5,393,008.
Init: the OCBE, decoder and heads as RevDist's (models.revdist.init_like_reference: ReContrast's
de_resnet.py runs the same loop over its decoder, heads included; head biases keep PyTorch's default).

Loss (the reference's `global_cosine_hm`), per set: the sum over layers of RevDist's global
flattened cosine distance (batch mean); total = (L_set1 + L_set2) / 2. Hard mining: per point
d = 1 - channel cosine (no grad); the gradient reaching each head output where
d < mean(d) + alpha * std(d) (over batch and positions, unbiased std) is multiplied by `hm_factor`
(the heads belong to the reference's decoder, so these are its decoder outputs; the reference
edits the gradient in place, here the hook returns a new tensor). alpha rises
linearly from hm_alpha_start to hm_alpha_end over the first hm_ramp of the iterations:
alpha = min(start + (end - start) * step / (hm_ramp * total_iters), end), -3 -> 1 over 10 %.
The model counts its own iterations: buffer `step` (in the state dict, so a resumed run continues
the ramp), incremented by each loss() in training mode; total_iters is set by configure_optimizers
(before that, alpha = hm_alpha_end).

Map (the multi-class `evaluation_batch`): the 6 maps of 1 - channel cosine, each bilinearly
upsampled (align_corners=True) to the input size, MEAN of the 6; float32; the caller blurs.
bottleneck_features: the OCBE output of the frozen encoder's half only (for a CADA head).

`recompute=True` keeps only convolution outputs of the trainable encoder, bottleneck and decoder for
the backward pass, block by block (models.recompute): less memory, a little more time, the same
trained model.

The frozen encoder is left OUT of the state dict (it is rebuilt from the same weights): state_dict()
drops its keys, and load_state_dict() keeps the current frozen weights when a checkpoint lacks them
(a checkpoint that has them still loads them).
"""
import copy

import torch
import torch.nn as nn

from models.backbones import EFFICIENTNETS, Encoder, EfficientNetTaps, is_efficientnet, stage_channels
from models.recompute import run_blocks
from models.revdist import (ACTIVATIONS, LAYERS, OCBE, Decoder, architecture, cosine_distance, cosine_map,
                            init_like_reference)
from utils.optim import build_optimizer

FROZEN = "frozen_encoder."


def global_cosine_hm(pairs, alpha, factor):
    """Sum over the (target, output) pairs of the layers of the batch mean of the global cosine
    distance; registers, on each output that needs a gradient, a hook multiplying its gradient at the
    easy points (d < mean + alpha * std) by `factor`."""
    loss = 0.0
    for target, output in pairs:
        target = target.detach()
        loss = loss + cosine_distance(target, output, "global").mean()
        if output.requires_grad and factor != 1:
            with torch.no_grad():
                d = cosine_distance(target, output, "pixel")
                easy = (d < d.mean() + alpha * d.std())[:, None]
                scale = torch.where(easy, float(factor), 1.0).to(output.dtype)
            output.register_hook(lambda grad, scale=scale: grad * scale)
    return loss


class TrainableEncoder(nn.Module):
    """A torchvision ResNet's stem and layers 1-3 (the same parameter names as the classifier's),
    returning {"layer1", "layer2", "layer3"}; with recompute, each block of the layers is one
    recomputation region that keeps nothing but its input (models.recompute): one more forward pass of
    the encoder (its BatchNorms are frozen) for about 1 GB less at 256 px, batch 16."""

    def __init__(self, backbone, recompute=False):
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = backbone.conv1, backbone.bn1, backbone.relu, backbone.maxpool
        self.layer1, self.layer2, self.layer3 = backbone.layer1, backbone.layer2, backbone.layer3
        self.recompute = recompute

    def forward(self, images):
        x, taps = self.maxpool(self.relu(self.bn1(self.conv1(images)))), {}
        for name in LAYERS:
            x = taps[name] = run_blocks(getattr(self, name), x, self.recompute, keep_convolutions=False)
        return taps


class ReContrast(nn.Module):
    def __init__(self, frozen_backbone, backbone="wide_resnet50_2", activation="gelu",
                 hm_factor=0.0,  # the reference code's value; its run names ("hm1d01") and Dinomaly use 0.1
                 hm_alpha_start=-3.0, hm_alpha_end=1.0, hm_ramp=0.1, recompute=False):
        super().__init__()
        arch = architecture(backbone)
        if activation not in ACTIVATIONS:
            raise ValueError(f"decoder activation must be 'relu' or 'gelu', got {activation!r}")
        channels = arch.channels[:3]
        efficientnet = backbone in EFFICIENTNETS
        if is_efficientnet(frozen_backbone) != efficientnet or stage_channels(frozen_backbone) != channels:
            raise ValueError(f"frozen_backbone is not a {'timm' if efficientnet else 'torchvision'} {backbone}")
        trainable = copy.deepcopy(frozen_backbone)
        for parameter in frozen_backbone.parameters():
            parameter.requires_grad_(False)
        for parameter in trainable.parameters():
            parameter.requires_grad_(True)
        self.frozen_encoder = Encoder(frozen_backbone, LAYERS, "standard")
        self.trainable_encoder = (EfficientNetTaps(trainable, LAYERS, "standard", recompute) if efficientnet
                                  else TrainableEncoder(trainable, recompute))
        self.bottleneck = OCBE(arch, recompute)
        self.decoder = Decoder(arch, activation, recompute)
        self.heads_to_frozen = nn.ModuleList(nn.Conv2d(c, c, 1) for c in channels)     # set 1
        self.heads_to_trainable = nn.ModuleList(nn.Conv2d(c, c, 1) for c in channels)  # set 2
        for module in (self.bottleneck, self.decoder, self.heads_to_frozen, self.heads_to_trainable):
            init_like_reference(module)
        self.hm_factor, self.hm_alpha_start, self.hm_alpha_end, self.hm_ramp = (
            hm_factor, hm_alpha_start, hm_alpha_end, hm_ramp)
        self.total_iters = 0
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_state_dict_post_hook(_drop_frozen_encoder)
        self.register_load_state_dict_pre_hook(_keep_frozen_encoder)
        self.train()

    def train(self, mode=True):
        super().train(mode)
        for module in self.trainable_encoder.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def _pairs(self, images):
        """[(target, output)] * 6: set 1 for layers 1-3, then set 2 for layers 1-3."""
        trainable = self.trainable_encoder(images)
        frozen = self.frozen_encoder(images)
        fused = {k: torch.cat([trainable[k], frozen[k]]) for k in LAYERS}
        decoded = self.decoder(self.bottleneck(fused))
        n = images.shape[0]
        set1 = [(frozen[k], head(d[:n])) for k, head, d in zip(LAYERS, self.heads_to_frozen, decoded)]
        set2 = [(trainable[k].detach(), head(d[n:])) for k, head, d in zip(LAYERS, self.heads_to_trainable, decoded)]
        return set1 + set2

    def alpha(self):
        """The hard-mining threshold's multiplier of std(d) at the current step."""
        if not self.total_iters or self.hm_ramp <= 0:
            return self.hm_alpha_end
        ramp = self.hm_alpha_start + (self.hm_alpha_end - self.hm_alpha_start) * self.step.item() / (
            self.hm_ramp * self.total_iters)
        return min(ramp, self.hm_alpha_end)

    def loss(self, batch):
        alpha = self.alpha()
        if self.training:
            self.step += 1
        pairs = self._pairs(batch["image"])
        set1, set2 = (global_cosine_hm(half, alpha, self.hm_factor) for half in (pairs[:3], pairs[3:]))
        return (set1 + set2) / 2

    @torch.no_grad()
    def anomaly_map(self, batch):
        """(B, H, W) float32 at the input size, before any blur."""
        images = batch["image"]
        targets, outputs = zip(*self._pairs(images))
        return cosine_map(targets, outputs, tuple(images.shape[-2:]))

    @torch.no_grad()
    def bottleneck_features(self, batch):
        """The OCBE output (B, channels[3], H3/2, W3/2) of the FROZEN encoder's half only: the
        half whose input is the same for every model state. In eval mode (BatchNorm on running
        statistics) it equals that half of the 2B pass."""
        return self.bottleneck(self.frozen_encoder(batch["image"]))

    def configure_optimizers(self, cfg, total_iters):
        """One optimiser, two groups: OCBE, decoder and heads at cfg.lr; the trainable encoder at
        cfg.encoder_lr. Stores total_iters for the hard-mining ramp."""
        self.total_iters = total_iters
        encoder = list(self.trainable_encoder.parameters())
        rest = [p for name, p in self.named_parameters()
                if p.requires_grad and not name.startswith(("trainable_encoder.", FROZEN))]
        return build_optimizer([{"params": rest}, {"params": encoder, "lr": cfg.encoder_lr}], cfg, total_iters)


def _drop_frozen_encoder(module, state_dict, prefix, local_metadata):
    for key in [k for k in state_dict if k.startswith(prefix + FROZEN)]:
        del state_dict[key]


def _keep_frozen_encoder(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                         error_msgs):
    for key, value in module.frozen_encoder.state_dict(prefix=prefix + FROZEN, keep_vars=True).items():
        state_dict.setdefault(key, value)

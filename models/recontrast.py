"""ReContrast (Guo et al., "ReContrast: Domain-Specific Anomaly Detection via Contrastive
Reconstruction", NeurIPS 2023; https://github.com/guojiajeremy/ReContrast), multi-class setting.

Two copies of the ImageNet encoder up to layer 3: a frozen one and a trainable one (its own small
learning rate; its BatchNorm layers stay in eval mode, as in the multi-class code). Both see the
same images; their layer 1-3 taps are concatenated on the batch axis (2B) and go through one
bottleneck and one decoder, RevDist's (models.revdist), with two sets of 1x1 output convs (with
bias) per scale:
  set 1, on the trainable encoder's half, reconstructs the FROZEN encoder's features;
  set 2, on the frozen encoder's half, reconstructs the TRAINABLE encoder's features.
Targets are always detached. Nothing computes layer 4 (the feature extractor prunes it).

Loss (the reference's `global_cosine_hm`): per layer RevDist's global flattened cosine distance,
averaged over the two sets. Hard mining: per point d = 1 - channel cosine; the gradient reaching the
decoder's output where d < mean(d) + alpha * std(d) (over batch and positions) is multiplied by
`hm_factor`; alpha ramps linearly from `hm_alpha_start` to `hm_alpha_end` over the first `hm_ramp`
of the iterations. The model counts its own training steps (buffer `step`, saved with the weights).

Map (the multi-class `evaluation_batch`): the 6 maps of 1 - channel cosine, each upsampled
(align_corners=True) to the input size, averaged; the caller blurs.

Both encoder copies are registered modules, so a checkpoint holds them (the frozen copy too:
about 25 M of the 136 M saved parameters with wide_resnet50_2).
"""
import copy

import torch
import torch.nn as nn
from torchvision.models.feature_extraction import create_feature_extractor

from models.backbones import Encoder
from models.revdist import ARCHITECTURES, LAYERS, OCBE, Decoder, build_optimizer, cosine_distance, cosine_map


class ReContrast(nn.Module):
    def __init__(self, frozen_backbone, backbone="wide_resnet50_2", activation="gelu",
                 hm_factor=0.0,  # the reference code's value; its run names ("hm1d01") and Dinomaly use 0.1
                 hm_alpha_start=-3.0, hm_alpha_end=1.0, hm_ramp=0.1):
        super().__init__()
        if backbone not in ARCHITECTURES:
            raise ValueError(f"ReContrast is built for {', '.join(ARCHITECTURES)}, not {backbone!r}")
        block, expansion, base_width, ocbe_blocks, decoder_blocks = ARCHITECTURES[backbone]
        self.frozen_encoder = Encoder(frozen_backbone, LAYERS, "standard")
        trainable = copy.deepcopy(frozen_backbone)
        for parameter in trainable.parameters():
            parameter.requires_grad_(True)
        self.trainable_encoder = create_feature_extractor(trainable, return_nodes={name: name for name in LAYERS})
        self.bottleneck = OCBE(block, expansion, base_width, ocbe_blocks)
        self.decoder = Decoder(block, expansion, base_width, decoder_blocks, activation)
        channels = [c * expansion for c in (64, 128, 256)]
        self.heads_to_frozen = nn.ModuleList(nn.Conv2d(c, c, 1) for c in channels)     # set 1
        self.heads_to_trainable = nn.ModuleList(nn.Conv2d(c, c, 1) for c in channels)  # set 2
        self.hm_factor, self.hm_alpha_start, self.hm_alpha_end, self.hm_ramp = hm_factor, hm_alpha_start, hm_alpha_end, hm_ramp
        self.total_iters = 0
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.train()

    def train(self, mode=True):
        super().train(mode)
        for module in self.trainable_encoder.modules():  # the multi-class code keeps encoder BN in eval mode
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def _reconstruct(self, images):
        """(targets of set 1, set 1's outputs, targets of set 2, set 2's outputs), lists over layers 1-3."""
        trainable = self.trainable_encoder(images)
        frozen = self.frozen_encoder(images)
        decoded = self.decoder(self.bottleneck({k: torch.cat([trainable[k], frozen[k]]) for k in LAYERS}))
        n = images.shape[0]
        set1 = [head(d[:n]) for head, d in zip(self.heads_to_frozen, decoded)]
        set2 = [head(d[n:]) for head, d in zip(self.heads_to_trainable, decoded)]
        return [frozen[k] for k in LAYERS], set1, [trainable[k].detach() for k in LAYERS], set2

    def alpha(self):
        """The hard-mining threshold's std multiplier at the current step."""
        if not self.total_iters:
            return self.hm_alpha_end
        ramp = self.hm_alpha_start + (self.hm_alpha_end - self.hm_alpha_start) * self.step.item() / (
            self.hm_ramp * self.total_iters)
        return min(ramp, self.hm_alpha_end)

    def _mined_loss(self, targets, outputs, alpha):
        loss = 0.0
        for target, output in zip(targets, outputs):
            loss = loss + cosine_distance(target, output, "global").mean()
            if output.requires_grad:
                with torch.no_grad():
                    distance = cosine_distance(target, output, "pixel")
                    easy = (distance < distance.mean() + alpha * distance.std())[:, None]
                factor = torch.where(easy, self.hm_factor, 1.0).to(output.dtype)
                output.register_hook(lambda grad, factor=factor: grad * factor)  # a new tensor, not in place
        return loss

    def loss(self, batch):
        alpha = self.alpha()
        if self.training:
            self.step += 1
        targets1, set1, targets2, set2 = self._reconstruct(batch["image"])
        return (self._mined_loss(targets1, set1, alpha) + self._mined_loss(targets2, set2, alpha)) / 2

    @torch.no_grad()
    def anomaly_map(self, batch):
        images = batch["image"]
        targets1, set1, targets2, set2 = self._reconstruct(images)
        size = images.shape[-1]
        return (cosine_map(targets1, set1, size) + cosine_map(targets2, set2, size)) / 2

    @torch.no_grad()
    def bottleneck_features(self, batch):
        """The OCBE output of the frozen encoder's half (the half whose input does not change with
        training); in eval mode BatchNorm treats each sample alone, so this equals that half."""
        return self.bottleneck(self.frozen_encoder(batch["image"]))

    def configure_optimizers(self, cfg, total_iters):
        """One optimiser, two groups: bottleneck, decoder and heads at cfg.lr; the trainable encoder at cfg.encoder_lr."""
        self.total_iters = total_iters
        encoder = list(self.trainable_encoder.parameters())
        encoder_ids = {id(p) for p in encoder}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in encoder_ids]
        return build_optimizer([{"params": rest}, {"params": encoder, "lr": cfg.encoder_lr}], cfg, total_iters)

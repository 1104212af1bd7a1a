"""NoCo: a norm-constrained detector (the NoCo paper and its official code, noco-ad).

A trainable 1x1 projector maps frozen encoder features z = W f + b; a soft boundary of learnable
radius r pulls them towards a fixed, data-independent target c whose norm is constrained to
`target_norm`. Anomaly score = distance to the target.

  structured  patch features of layers 1-3: each 3x3 average-pooled (stride 1, pad 1), bilinearly
              upsampled to the first layer's grid and concatenated; d = ||z - c||_2 per patch,
              loss = (1/nu) mean relu(d - r^2) with nu = 1e-3; map = d.
  semantic    one globally pooled vector per image; d = ||z - c||_2^2 (squared), nu = 1; the CIFAR
              script adds radius_penalty * r (1e3) to the loss; score = d.

The target is drawn once ("randn": N(0, 1), "rand": U(0, 1), "ones") or set from the mean of
the projected training features ("mean", via `set_target`), rescaled so that its p-norm equals
`target_norm`, and kept as a buffer: saved in the state dict, never trained. As in the reference
code, p only rescales the target; the distance is always Euclidean and the boundary is r^2.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.optim import build_optimizer

TARGET_KINDS = ("randn", "rand", "ones", "mean")


def aggregate_patch_features(features):
    """{layer: (B, C_i, H_i, W_i)} in encoder order -> (B, sum C_i, H_1, W_1)."""
    maps = [F.avg_pool2d(f, kernel_size=3, stride=1, padding=1) for f in features.values()]
    size = maps[0].shape[-2:]
    return torch.cat([maps[0]] + [F.interpolate(m, size=size, mode="bilinear", align_corners=False)
                                  for m in maps[1:]], dim=1)


class NoCo(nn.Module):
    def __init__(self, in_channels, structured=True, target="randn", target_norm=1.0, p=2.0, nu=None,
                 radius_init=1e-5, radius_penalty=0.0, generator=None, map_size=None):
        super().__init__()
        if target not in TARGET_KINDS:
            raise ValueError(f"target must be one of {', '.join(TARGET_KINDS)}, got {target!r}")
        if target_norm <= 0:
            raise ValueError(f"target_norm must be positive, got {target_norm}")
        self.structured = structured
        self.map_size = map_size  # structured: the input side the maps are upsampled to
        self.target_kind = target
        self.target_norm = float(target_norm)
        self.p = float(p)
        self.nu = nu if nu is not None else (1e-3 if structured else 1.0)
        self.radius_penalty = radius_penalty
        self.projector = nn.Conv2d(in_channels, in_channels, kernel_size=1, bias=True)
        self.radius = nn.Parameter(torch.full((1,), float(radius_init)))
        draw = {"randn": torch.randn, "rand": torch.rand,
                "ones": lambda n, generator: torch.ones(n), "mean": lambda n, generator: torch.zeros(n)}[target]
        self.register_buffer("target", self._rescale(draw(in_channels, generator=generator)))

    def _rescale(self, vector):
        if not vector.any():
            return vector  # "mean": set later from data
        return F.normalize(vector.double(), p=self.p, dim=0).float() * self.target_norm

    @torch.no_grad()
    def set_target(self, vector):
        """Use `vector` (e.g. the mean projected training feature) as the target, rescaled to target_norm."""
        self.target.copy_(self._rescale(vector.detach().to(self.target)))

    def embed(self, features):
        """Encoder features -> (B, C, H, W) input of the projector (H = W = 1 for semantic AD)."""
        if self.structured:
            return aggregate_patch_features(features)
        (pooled,) = features.values()
        return pooled.reshape(*pooled.shape[:2], 1, 1)

    def project(self, features):
        return self.projector(self.embed(features))

    def embedding_distance(self, embedding):
        """(B, H, W) distance of each projected patch (or image) of a (B, C, H, W) embedding to the target."""
        if not self.target.any():
            raise RuntimeError("the 'mean' target is not set yet: call set_target(mean projected feature)")
        # z - c in one pass: the target folded into the projector's bias
        shifted = F.conv2d(embedding, self.projector.weight, self.projector.bias - self.target)
        squared = shifted.pow(2).sum(dim=1)
        return squared.sqrt() if self.structured else squared

    def distance(self, features):
        return self.embedding_distance(self.embed(features))

    def boundary_loss(self, distance):
        """(1/nu) mean relu(d - r^2) (+ radius_penalty * r, the reference CIFAR script's term)."""
        loss = torch.relu(distance - self.radius ** 2).mean() / self.nu
        return loss + self.radius_penalty * self.radius.squeeze() if self.radius_penalty else loss

    def loss(self, features):
        return self.boundary_loss(self.distance(features))

    @torch.no_grad()
    def anomaly_map(self, features):
        """(B, H, W) scores before the blur: structured, the patch distances bilinearly upsampled to map_size
        (align_corners=False, as the reference's F.interpolate); semantic AD, (B, 1, 1) image scores."""
        distance = self.distance(features)
        if not self.structured or self.map_size is None:
            return distance
        return F.interpolate(distance[:, None], size=(self.map_size, self.map_size), mode="bilinear",
                             align_corners=False)[:, 0]

    def configure_optimizers(self, cfg, total_iters=None):
        """utils.optim.build_optimizer over the projector and r alike (the reference decays r too); its
        settings are AdamW, amsgrad, no schedule (the reference's warm-up/cosine schedule is never applied)."""
        return build_optimizer(self.parameters(), cfg, total_iters)

"""Anomaly-map post-processing: upsampling, Gaussian blur, image scores, and `PostProcessor`, the one module that
turns raw maps into scored maps for train_mvtec.py's evaluation, its held-out thresholds, predict.py (its
--calibrate too) and the ONNX export. Pure tensor functions and modules."""
import torch
import torch.nn.functional as F

from models.cada import calibrate

CHUNK = 256  # maps post-processed at a time outside a traced model (evaluation): bounds the blur's memory


def upsample(maps, size, align_corners=False):
    """(N, h, w) maps -> (N, size, size), bilinear."""
    return F.interpolate(maps[:, None], size=(size, size), mode="bilinear", align_corners=align_corners)[:, 0]


def gaussian_kernel(sigma, truncate=4.0, dtype=torch.float32, device=None):
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (kernel / kernel.sum()).to(dtype=dtype, device=device)


def _symmetric_pad(maps, radius, dim):
    """scipy's 'reflect' boundary (d c b a | a b c d | d c b a), which torch's 'reflect' is not."""
    size = maps.shape[dim]
    index = torch.arange(-radius, size + radius, device=maps.device)
    index = torch.where(index < 0, -index - 1, index)
    index = torch.where(index >= size, 2 * size - index - 1, index)
    if radius >= size:  # a kernel wider than the map: fold again until every index is inside
        index = index.remainder(2 * size)
        index = torch.where(index >= size, 2 * size - index - 1, index)
    return maps.index_select(dim, index)


def blur_taps(sigma, kernel_size=0, truncate=4.0):
    """The one 1-D Gaussian kernel (float64, normalised) of every blur: 2 * int(truncate * sigma + 0.5) + 1 taps
    (kernel_size 0, scipy's) or `kernel_size` taps centred on the middle one (ReContrast's multi-class 5 x 5)."""
    if not kernel_size:
        return gaussian_kernel(sigma, truncate, torch.float64)
    offsets = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    taps = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return taps / taps.sum()


class GaussianBlur(torch.nn.Module):
    """Separable Gaussian blur of (N, H, W) maps as a module of fixed taps (blur_taps, cast to the maps' dtype).

    kernel_size 0: equal to scipy.ndimage.gaussian_filter(map, sigma) (mode='reflect', truncate=4:
    a 33-tap kernel for sigma 4), as RD4AD, ReContrast single-class and NoCo blur.
    kernel_size k > 0: a k x k kernel with zero padding, as ReContrast's multi-class evaluation
    (5 x 5, sigma 4). sigma <= 0: no blur."""

    def __init__(self, sigma=4.0, kernel_size=0, truncate=4.0):
        super().__init__()
        self.sigma, self.kernel_size = sigma, kernel_size
        taps = blur_taps(sigma, kernel_size, truncate) if sigma > 0 else torch.ones(1, dtype=torch.float64)
        self.radius = (taps.numel() - 1) // 2
        self.register_buffer("taps", taps)

    def forward(self, maps):
        if self.sigma <= 0:
            return maps
        x, taps = maps[:, None], self.taps.to(maps)
        if self.kernel_size:
            x = F.conv2d(x, taps.view(1, 1, 1, -1), padding=(0, self.radius))
            return F.conv2d(x, taps.view(1, 1, -1, 1), padding=(self.radius, 0))[:, 0]
        x = F.conv2d(_symmetric_pad(x, self.radius, 3), taps.view(1, 1, 1, -1))
        return F.conv2d(_symmetric_pad(x, self.radius, 2), taps.view(1, 1, -1, 1))[:, 0]


def gaussian_blur(maps, sigma=4.0, truncate=4.0, chunk=CHUNK, kernel_size=0):
    """GaussianBlur(sigma, kernel_size, truncate) over (N, H, W) maps, `chunk` maps at a time."""
    blur = GaussianBlur(sigma, kernel_size, truncate)
    return torch.cat([blur(maps[start:start + chunk]) for start in range(0, len(maps), chunk)]) if len(maps) else maps


UNIAD_POOL = 16  # UniAD's image score: the max of the map average-pooled over 16 x 16 windows (stride 1)


def image_scores(maps, reduction="max", top_fraction=0.01):
    """Image-level score of each (N, H, W) map: its max ("max"), the mean of its top `top_fraction`
    pixels ("top_mean"), or the max of its UNIAD_POOL x UNIAD_POOL stride-1 average pool ("pooled_max")."""
    flat = maps.flatten(1)
    if reduction == "max":
        return flat.amax(dim=1)
    if reduction == "top_mean":
        k = max(1, int(flat.shape[1] * top_fraction))  # ReContrast's evaluation_batch truncates: 501 px at 224^2
        return flat.topk(k, dim=1).values.mean(dim=1)
    if reduction == "pooled_max":
        size = min(UNIAD_POOL, *maps.shape[-2:])
        return F.avg_pool2d(maps[:, None], size, stride=1).flatten(1).amax(dim=1)
    raise ValueError(f"image score reduction must be 'max', 'top_mean' or 'pooled_max', got {reduction!r}")


class PostProcessor(torch.nn.Module):
    """(raw maps (B, H, W), and an alignment's (u, gamma) per image or None) -> (final maps, image scores (B,)):
    calibrated by CADA eq. 5 (models.cada.calibrate; u None: as they are), resized bilinearly to eval_size if
    set (Dinomaly's evaluation_batch(resize_mask=256), before the blur), blurred (GaussianBlur) and scored
    (image_scores). The one post-processing of the evaluation, the held-out thresholds, predict and ONNX."""

    def __init__(self, blur_sigma=4.0, blur_kernel=0, image_score="max", top_fraction=0.01, eval_size=0):
        super().__init__()
        self.blur = GaussianBlur(blur_sigma, blur_kernel)
        self.image_score, self.top_fraction, self.eval_size = image_score, top_fraction, eval_size

    @classmethod
    def of(cls, cfg):
        """The post-processor of a run's options: blur_sigma, blur_kernel, image_score, top_fraction, eval_size."""
        return cls(cfg.blur_sigma, cfg.blur_kernel, cfg.image_score, cfg.top_fraction, getattr(cfg, "eval_size", 0))

    def forward(self, maps, u=None, gamma=None):
        if u is not None:
            maps = calibrate(maps, u, gamma)
        if self.eval_size:
            maps = upsample(maps, self.eval_size)
        maps = self.blur(maps)
        return maps, image_scores(maps, self.image_score, self.top_fraction)

    def chunked(self, maps, u=None, gamma=None, chunk=CHUNK):
        """forward over `chunk` maps at a time (the same numbers, bounded memory), the outputs on the CPU."""
        parts = [self(maps[i:i + chunk], *((None, None) if u is None else (u[i:i + chunk], gamma[i:i + chunk])))
                 for i in range(0, len(maps), chunk)]
        if not parts:
            return self(maps, u, gamma)
        return torch.cat([m.cpu() for m, _ in parts]), torch.cat([s.cpu() for _, s in parts])

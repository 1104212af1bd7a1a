"""Anomaly-map post-processing: upsampling, Gaussian blur, image scores. Pure tensor functions."""
import torch
import torch.nn.functional as F


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


def gaussian_blur(maps, sigma=4.0, truncate=4.0, chunk=256, kernel_size=0):
    """Separable Gaussian blur of (N, H, W) maps.

    kernel_size 0: equal to scipy.ndimage.gaussian_filter(map, sigma) (mode='reflect', truncate=4:
    a 33-tap kernel for sigma 4), as RD4AD, ReContrast single-class and NoCo blur.
    kernel_size k > 0: a k x k kernel with zero padding, as ReContrast's multi-class evaluation
    (5 x 5, sigma 4)."""
    if sigma <= 0:
        return maps
    if kernel_size:
        offsets = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
        kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
        kernel = (kernel / kernel.sum()).to(maps)
    else:
        kernel = gaussian_kernel(sigma, truncate, maps.dtype, maps.device)
    radius = (kernel.numel() - 1) // 2
    pad = (lambda x, dim: x) if kernel_size else (lambda x, dim: _symmetric_pad(x, radius, dim))
    padding = (0, radius) if kernel_size else 0
    out = torch.empty_like(maps)
    for start in range(0, maps.shape[0], chunk):
        x = maps[start:start + chunk, None]
        x = F.conv2d(pad(x, 3), kernel.view(1, 1, 1, -1), padding=padding)
        x = F.conv2d(pad(x, 2), kernel.view(1, 1, -1, 1), padding=padding[::-1] if kernel_size else 0)
        out[start:start + chunk] = x[:, 0]
    return out


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


class GaussianBlur(torch.nn.Module):
    """gaussian_blur(maps, sigma, kernel_size=kernel_size) as a module of fixed taps (for predict.py and its
    ONNX export): the same separable kernel, scipy's reflect padding (kernel_size 0) or zero padding."""

    def __init__(self, sigma=4.0, kernel_size=0, truncate=4.0):
        super().__init__()
        self.sigma, self.kernel_size = sigma, kernel_size
        if sigma <= 0:
            taps = torch.ones(1)
        elif kernel_size:
            offsets = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
            taps = torch.exp(-0.5 * (offsets / sigma) ** 2)
            taps = (taps / taps.sum()).float()
        else:
            taps = gaussian_kernel(sigma, truncate)
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

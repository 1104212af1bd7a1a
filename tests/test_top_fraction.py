"""The top-1 % image score counts its pixels as ReContrast's evaluation_batch does: int(H * W * 0.01),
truncated (501 pixels of a 224 x 224 map, where rounding would take 502)."""
import torch

from utils.maps import image_scores


def test_top_mean_truncates_the_pixel_count():
    values = torch.arange(224 * 224, dtype=torch.float64).flip(0).reshape(1, 224, 224)  # distinct, largest first
    top = values.flatten()[:501]
    assert image_scores(values, "top_mean", 0.01).item() == top.mean().item()
    assert image_scores(values, "top_mean", 0.01).item() != values.flatten()[:502].mean().item()
    tiny = torch.tensor([[[1.0, 5.0], [3.0, 2.0]]])  # int(4 * 0.01) = 0 pixels: at least the maximum
    assert image_scores(tiny, "top_mean", 0.01).item() == 5.0

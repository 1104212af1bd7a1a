import numpy as np
import pytest
import torch
from scipy import ndimage

from utils.maps import gaussian_blur, image_scores, upsample


@pytest.mark.parametrize("shape, sigma", [((3, 64, 64), 4.0), ((2, 20, 30), 4.0), ((1, 7, 9), 4.0), ((2, 16, 16), 1.5)])
def test_gaussian_blur_equals_scipys_gaussian_filter(shape, sigma):
    maps = torch.rand(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = np.stack([ndimage.gaussian_filter(m, sigma) for m in maps.numpy()])  # mode reflect, truncate 4
    assert np.abs(gaussian_blur(maps, sigma).numpy() - expected).max() < 1e-12
    assert torch.equal(gaussian_blur(maps, 0), maps)


def test_upsample_and_image_scores():
    maps = torch.zeros(2, 4, 4)
    maps[1, 2, 3] = 8.0
    assert upsample(maps, 16).shape == (2, 16, 16)
    assert image_scores(maps).tolist() == [0.0, 8.0]
    flat = torch.arange(100.0).view(1, 10, 10)
    assert image_scores(flat, "top_mean", top_fraction=0.05).item() == pytest.approx((95 + 96 + 97 + 98 + 99) / 5)
    with pytest.raises(ValueError, match="reduction"):
        image_scores(maps, "median")


def test_pooled_max_is_the_max_of_a_16_by_16_stride_1_average_pool():
    maps = torch.zeros(2, 32, 32)
    maps[0, 3, 5] = 256.0               # one hot pixel: every window holding it averages 1
    maps[1, 10:26, 4:20] = 2.0          # a 16 x 16 block: exactly one window averages 2
    maps[1, 0, 0] = 100.0
    assert image_scores(maps, "pooled_max").tolist() == [1.0, 2.0]
    windows = maps.unfold(1, 16, 1).unfold(2, 16, 1).mean(dim=(-1, -2))  # the same by brute force
    assert torch.allclose(image_scores(maps, "pooled_max"), windows.flatten(1).amax(1))


def test_five_by_five_zero_padded_blur_equals_a_2d_convolution_with_the_normalised_kernel():
    maps = torch.rand(2, 12, 9, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    offsets = torch.arange(5, dtype=torch.float64) - 2
    grid = offsets[:, None] ** 2 + offsets[None, :] ** 2
    kernel = torch.exp(-grid / (2 * 4.0 ** 2))
    kernel = kernel / kernel.sum()  # ReContrast's multi-class kernel: 5 x 5, sigma 4, padding 2 with zeros
    expected = torch.nn.functional.conv2d(maps[:, None], kernel[None, None], padding=2)[:, 0]
    assert (gaussian_blur(maps, 4.0, kernel_size=5) - expected).abs().max() < 1e-12
    assert (gaussian_blur(maps, 4.0, kernel_size=5) - gaussian_blur(maps, 4.0)).abs().max() > 1e-3

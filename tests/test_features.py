import gc
import os

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from models.backbones import build_encoder
from models.noco import NoCo
from utils.features import CachedBatches, EncodedBatches, extract_features
from utils.optim import optimizer_settings
from utils.training import batch_stream, fit


class RandomImages(Dataset):
    def __init__(self, n=10, size=32):
        self.images = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return {"image": self.images[index], "label": index % 2, "mask": torch.zeros(1, 32, 32)}


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return build_encoder("resnet18", "none", ("layer1", "layer2"), "preact")


def fresh_model(in_channels=192):
    torch.manual_seed(1)  # the projector's init
    return NoCo(in_channels, structured=True, generator=torch.Generator().manual_seed(1))


def one_epoch(batches):
    generator = torch.Generator().manual_seed(2)
    model = fresh_model()
    optimizer, scheduler = model.configure_optimizers(optimizer_settings(lr=1e-3, weight_decay=5e-4), 1)
    one_epoch_steps = -(-len(batches) // batches.batch_size)
    return fit(model, batch_stream(batches, generator, "cpu"), optimizer, scheduler, one_epoch_steps, show=False)


def test_training_from_the_cache_equals_training_from_images(encoder):
    dataset = RandomImages()
    from_images = one_epoch(EncodedBatches(encoder, dataset, batch_size=4))
    cache32 = extract_features(encoder, dataset, "cpu", batch_size=3, dtype=torch.float32)
    from_cache = one_epoch(CachedBatches(cache32, batch_size=4))
    initial = fresh_model().projector.weight
    assert not torch.allclose(from_images.projector.weight, initial)  # one epoch did move the projector
    for a, b in zip(from_images.parameters(), from_cache.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    cache16 = extract_features(encoder, dataset, "cpu", batch_size=3, dtype=torch.float16)
    from_half = one_epoch(CachedBatches(cache16, batch_size=4))
    step = (from_images.projector.weight - initial).abs().max()
    assert (from_half.projector.weight - from_images.projector.weight).abs().max() < 0.05 * step


def test_cached_and_encoded_batches_are_the_same_batches(encoder):
    dataset = RandomImages(n=7)
    cache = extract_features(encoder, dataset, "cpu", dtype=torch.float32)
    indices = [6, 1, 4, 0, 5]
    encoded = list(EncodedBatches(encoder, dataset, 2, indices=indices).epoch(torch.Generator().manual_seed(5), "cpu"))
    cached = list(CachedBatches(cache, 2, indices=indices).epoch(torch.Generator().manual_seed(5), "cpu"))
    assert [len(b["layer1"]) for b in cached] == [2, 2, 1]
    for a, b in zip(encoded, cached):
        assert torch.allclose(a["layer2"], b["layer2"], rtol=1e-4, atol=1e-5)  # batch size changes conv rounding
    in_order = torch.cat([b["layer1"] for b in CachedBatches(cache, 3, indices=indices).ordered("cpu")])
    assert torch.equal(in_order, cache["layer1"][indices])


def test_features_above_the_memory_budget_go_to_a_memory_map_that_is_removed(encoder, tmp_path):
    dataset = RandomImages(n=5)
    in_memory = extract_features(encoder, dataset, "cpu", dtype=torch.float16)
    on_disk = extract_features(encoder, dataset, "cpu", dtype=torch.float16, memory_budget_gb=0, cache_dir=tmp_path)
    (folder,) = tmp_path.iterdir()
    assert sorted(os.listdir(folder)) == ["layer1.npy", "layer2.npy"]
    for key in in_memory:
        assert on_disk[key].dtype == torch.float16 and torch.equal(in_memory[key], on_disk[key])
    del on_disk
    gc.collect()
    assert not folder.exists()


def test_an_empty_dataset_is_a_clear_error(encoder):
    with pytest.raises(ValueError, match="dataset is empty"):
        extract_features(encoder, RandomImages(n=0), "cpu")


class Scaled(torch.nn.Module):
    """A stand-in encoder: {layer: the images times a factor} (what an untrained deep layer can do)."""

    def __init__(self, **factors):
        super().__init__()
        self.factors = factors

    def forward(self, images):
        return {layer: images * factor for layer, factor in self.factors.items()}


def test_float32_is_the_default_and_keeps_the_encoder_output_exactly(encoder):
    dataset = RandomImages(n=6)
    cache = extract_features(encoder, dataset, "cpu", batch_size=6)
    direct = encoder(torch.stack([dataset[i]["image"] for i in range(6)]))
    for key, values in direct.items():
        assert cache[key].dtype == torch.float32 and torch.equal(cache[key], values)


def test_float16_overflow_is_refused_with_the_layer_and_the_fix():
    dataset = RandomImages(n=4)
    with pytest.raises(ValueError) as error:
        extract_features(Scaled(layer3=1.0, layer4=1e5), dataset, "cpu", dtype=torch.float16)
    message = str(error.value)
    largest = (dataset.images * 1e5).abs().max().item()
    assert message == (f"layer4 features overflow float16 (max |x| = {largest:.1e} > 65504): "
                       "use --cache_dtype float32")
    # the same features fit float32 and bfloat16 (whose range is float32's)
    assert torch.isfinite(extract_features(Scaled(layer4=1e5), dataset, "cpu")["layer4"]).all()
    assert torch.isfinite(extract_features(Scaled(layer4=1e5), dataset, "cpu", dtype="bfloat16")["layer4"]).all()


def test_non_finite_encoder_output_is_refused_in_any_dtype():
    with pytest.raises(ValueError, match="layer2 features are not finite .* encoder's own output"):
        extract_features(Scaled(layer1=1.0, layer2=float("inf")), RandomImages(n=3), "cpu")


def test_unknown_cache_dtype_is_refused(encoder):
    with pytest.raises(ValueError, match="float32, float16, bfloat16"):
        extract_features(encoder, RandomImages(n=2), "cpu", dtype=torch.float64)


def test_bfloat16_round_trip_in_memory_and_on_disk(encoder, tmp_path):
    dataset = RandomImages(n=5)
    expected = encoder(torch.stack([dataset[i]["image"] for i in range(5)]))
    in_memory = extract_features(encoder, dataset, "cpu", batch_size=5, dtype=torch.bfloat16)
    on_disk = extract_features(encoder, dataset, "cpu", batch_size=5, dtype="bfloat16", memory_budget_gb=0,
                               cache_dir=tmp_path)
    (folder,) = tmp_path.iterdir()
    for key, values in expected.items():
        assert in_memory[key].dtype == on_disk[key].dtype == torch.bfloat16
        assert torch.equal(in_memory[key], values.to(torch.bfloat16))
        assert torch.equal(on_disk[key], in_memory[key])
        # the file holds the bfloat16 bits as int16, and reads back to the same values
        stored = torch.from_numpy(np.load(folder / f"{key}.npy")).view(torch.bfloat16)
        assert torch.equal(stored, in_memory[key])
    batches = list(CachedBatches(on_disk, batch_size=2).ordered("cpu"))
    assert batches[0]["layer1"].dtype == torch.float32
    assert torch.equal(torch.cat([b["layer2"] for b in batches]), in_memory["layer2"].float())

"""One-class semantic datasets on tiny generated copies of MNIST, Fashion-MNIST, CIFAR-10/100
and Cats-vs-Dogs written in each set's own on-disk format (no network, no ../shared)."""
import hashlib
import io
import pickle
import struct
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import CIFAR10, CIFAR100, FashionMNIST

from datasets.common import IMAGENET_MEAN, IMAGENET_STD, ImageTransform, load_rgb
from datasets.oneclass import (CIFAR100_COARSE_NAMES, CIFAR100_FINE_TO_COARSE, REFERENCE_RESIZE, SEMANTIC_DATASETS,
                               OneClassDataset, SemanticDataset)

SIZE = dict(image_size=32, crop_size=28)

# The official CIFAR-100 superclass membership (https://www.cs.toronto.edu/~kriz/cifar.html),
# with the fine names spelled as in the dataset's meta file.
CIFAR100_SUPERCLASSES = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}
# CIFAR-100's fine_label_names are in alphabetical order.
CIFAR100_FINE_NAMES = sorted(name for names in CIFAR100_SUPERCLASSES.values() for name in names)


# ---------------------------------------------------------------- writers of the on-disk formats
def idx_bytes(array):
    """An uint8 array in the idx format of the MNIST files: magic (0, 0, 0x08 = uint8, ndim), then
    each dimension as a big-endian int32, then the raw bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def grey_digits(labels):
    """28x28 images whose constant grey level encodes the label (10 + 20 * label)."""
    labels = np.asarray(labels, dtype=np.uint8)
    return np.broadcast_to((10 + 20 * labels)[:, None, None], (len(labels), 28, 28)).astype(np.uint8)


TRAIN_LABELS = np.arange(40) % 5  # classes 0..4, 8 images each
TEST_LABELS = np.arange(30) % 6  # classes 0..5, 5 images each


def mnist_raw_files(train_labels=TRAIN_LABELS, test_labels=TEST_LABELS):
    """{file name: bytes} of the four uncompressed MNIST raw files."""
    return {
        "train-images-idx3-ubyte": idx_bytes(grey_digits(train_labels)),
        "train-labels-idx1-ubyte": idx_bytes(train_labels),
        "t10k-images-idx3-ubyte": idx_bytes(grey_digits(test_labels)),
        "t10k-labels-idx1-ubyte": idx_bytes(test_labels),
    }


def write_mnist_raw(root, folder):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for name, data in mnist_raw_files().items():
        (raw / name).write_bytes(data)


def md5_of(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def cifar_images(labels):
    """32x32 RGB images flattened the CIFAR way (1024 R, 1024 G, 1024 B); red level = label."""
    labels = np.asarray(labels)
    data = np.zeros((len(labels), 3, 32, 32), dtype=np.uint8)
    data[:, 0] = (labels * 2)[:, None, None]
    data[:, 1] = 128
    return data.reshape(len(labels), -1)


def write_pickle(path, obj):
    with open(path, "wb") as file:
        pickle.dump(obj, file)


def write_cifar10(root, monkeypatch):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for batch in range(1, 6):
        labels = [(batch + i) % 10 for i in range(4)]
        write_pickle(folder / f"data_batch_{batch}", {"data": cifar_images(labels), "labels": labels})
    test_labels = list(range(10)) * 2
    write_pickle(folder / "test_batch", {"data": cifar_images(test_labels), "labels": test_labels})
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    write_pickle(folder / "batches.meta", {"label_names": names})
    # torchvision checks each file's md5 against the real dataset's; point those checks at the
    # generated files instead (the integrity code itself still runs).
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{b}", md5_of(folder / f"data_batch_{b}")]
                                                for b in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5_of(folder / "test_batch")]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5_of(folder / "batches.meta")})


def write_cifar100(root, monkeypatch, train_fine, test_fine):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for split, fine in (("train", train_fine), ("test", test_fine)):
        write_pickle(folder / split, {"data": cifar_images(fine), "fine_labels": list(fine),
                                      "coarse_labels": [CIFAR100_FINE_TO_COARSE[f] for f in fine]})
    write_pickle(folder / "meta", {"fine_label_names": CIFAR100_FINE_NAMES,
                                   "coarse_label_names": list(CIFAR100_COARSE_NAMES)})
    monkeypatch.setattr(CIFAR100, "train_list", [["train", md5_of(folder / "train")]])  # see write_cifar10
    monkeypatch.setattr(CIFAR100, "test_list", [["test", md5_of(folder / "test")]])
    monkeypatch.setattr(CIFAR100, "meta", {**CIFAR100.meta, "md5": md5_of(folder / "meta")})


def expected_normalised(grey_level):
    return torch.tensor([(float(grey_level) / 255 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])


# ---------------------------------------------------------------- (Fashion-)MNIST
@pytest.mark.parametrize("name, folder, normal_class, normal_index", [
    ("mnist", "MNIST", "3", 3),
    ("fmnist", "FashionMNIST", "Coat", 4),
    ("fmnist", "FashionMNIST", "2", 2),
])
def test_mnist_like_one_class_splits(tmp_path, name, folder, normal_class, normal_index):
    write_mnist_raw(tmp_path, folder)
    train = SemanticDataset(name, tmp_path, "train", **SIZE)
    test = SemanticDataset(name, tmp_path, "test", **SIZE)
    assert torch.equal(train.targets, torch.as_tensor(TRAIN_LABELS))
    assert torch.equal(test.targets, torch.as_tensor(TEST_LABELS))
    expected_names = [str(d) for d in range(10)] if name == "mnist" else FashionMNIST.classes
    assert train.class_names == expected_names

    item = test[7]
    assert item["image"].shape == (3, 28, 28) and item["image"].dtype == torch.float32
    assert item["target"] == TEST_LABELS[7] and item["class_name"] == expected_names[TEST_LABELS[7]]
    assert item["path"] == f"{name}/test/7"
    # grey replicated to 3 channels, then ImageNet-normalised per channel
    per_channel = item["image"].mean(dim=(1, 2))
    assert torch.allclose(per_channel, expected_normalised(10 + 20 * TEST_LABELS[7]), atol=1e-4)

    one_class_train = OneClassDataset(train, normal_class)
    assert one_class_train.normal_index == normal_index
    assert len(one_class_train) == (TRAIN_LABELS == normal_index).sum()
    assert (train.targets[one_class_train.indices] == normal_index).all()
    assert (one_class_train.labels == 0).all()
    sample = one_class_train[0]
    assert set(sample) == {"image", "label", "mask", "class_name", "path"}
    assert sample["label"] == 0 and sample["class_name"] == expected_names[normal_index]
    assert sample["image"].shape == (3, 28, 28)
    assert sample["mask"].shape == (1, 28, 28) and sample["mask"].sum() == 0

    one_class_test = OneClassDataset(test, normal_class)
    assert len(one_class_test) == len(TEST_LABELS)
    assert torch.equal(one_class_test.labels, torch.as_tensor(TEST_LABELS != normal_index).long())
    for index in (0, normal_index, len(one_class_test) - 1):
        sample = one_class_test[index]
        assert sample["label"] == int(TEST_LABELS[index] != normal_index)


def test_indices_slice_features_computed_once(tmp_path):
    write_mnist_raw(tmp_path, "MNIST")
    test = SemanticDataset("mnist", tmp_path, "test", **SIZE)
    features = torch.stack([test[i]["image"].mean(dim=(1, 2)) for i in range(len(test))])
    for normal_class in range(6):
        one_class = OneClassDataset(test, normal_class)
        sliced = features[one_class.indices]
        direct = torch.stack([one_class[i]["image"].mean(dim=(1, 2)) for i in range(len(one_class))])
        assert torch.equal(sliced, direct)


def test_unknown_normal_class_lists_valid_names(tmp_path):
    write_mnist_raw(tmp_path, "FashionMNIST")
    train = SemanticDataset("fmnist", tmp_path, "train", **SIZE)
    with pytest.raises(ValueError, match="unknown normal class 'Sock'") as error:
        OneClassDataset(train, "Sock")
    assert "Trouser" in str(error.value) and "Ankle boot" in str(error.value)
    with pytest.raises(ValueError, match="unknown normal class '10'"):
        OneClassDataset(train, "10")
    with pytest.raises(ValueError, match="no images of class 'Bag'"):  # class 8 is absent from the tiny train set
        OneClassDataset(train, "Bag")


# ---------------------------------------------------------------- CIFAR-10 / CIFAR-100
def test_cifar10_one_class(tmp_path, monkeypatch):
    write_cifar10(tmp_path, monkeypatch)
    train = SemanticDataset("cifar10", tmp_path, "train", **SIZE)
    test = SemanticDataset("cifar10", tmp_path, "test", **SIZE)
    assert len(train) == 20 and len(test) == 20
    assert train.class_names[3] == "cat"
    item = test[5]
    assert item["image"].shape == (3, 28, 28) and item["target"] == 5 and item["class_name"] == "dog"
    red = item["image"][0].mean()
    assert torch.isclose(red, expected_normalised(10)[0], atol=1e-4)  # red level = 2 * label

    cats = OneClassDataset(train, "cat")
    assert len(cats) > 0 and (train.targets[cats.indices] == 3).all()
    cats_test = OneClassDataset(test, "cat")
    assert torch.equal(cats_test.labels, (test.targets != 3).long())
    assert cats_test.labels.sum() == 18


def test_cifar100_uses_coarse_superclasses(tmp_path, monkeypatch):
    fine_of = {name: index for index, name in enumerate(CIFAR100_FINE_NAMES)}
    train_fine = [fine_of[n] for n in ("apple", "mushroom", "aquarium_fish", "beaver", "whale", "tractor")]
    test_fine = [fine_of[n] for n in ("orange", "trout", "otter", "bus", "apple", "worm", "rocket")]
    write_cifar100(tmp_path, monkeypatch, train_fine, test_fine)
    train = SemanticDataset("cifar100", tmp_path, "train", **SIZE)
    test = SemanticDataset("cifar100", tmp_path, "test", **SIZE)
    assert train.class_names == list(CIFAR100_COARSE_NAMES) and len(train.class_names) == 20
    assert train.targets.tolist() == [4, 4, 1, 0, 0, 19]
    assert test.targets.tolist() == [4, 1, 0, 18, 4, 13, 19]
    assert test[1]["class_name"] == "fish"

    fruit = OneClassDataset(train, "fruit_and_vegetables")
    assert fruit.indices.tolist() == [0, 1]
    fruit_test = OneClassDataset(test, "4")
    assert fruit_test.labels.tolist() == [0, 1, 1, 1, 0, 1, 1]


def test_cifar100_mapping_matches_official_superclass_list():
    assert list(CIFAR100_COARSE_NAMES) == list(CIFAR100_SUPERCLASSES)
    assert len(CIFAR100_FINE_TO_COARSE) == 100
    fine_of = {name: index for index, name in enumerate(CIFAR100_FINE_NAMES)}
    # a handful spelled out, as in the superclass table
    assert CIFAR100_COARSE_NAMES[CIFAR100_FINE_TO_COARSE[0]] == "fruit_and_vegetables"  # apple
    assert CIFAR100_COARSE_NAMES[CIFAR100_FINE_TO_COARSE[1]] == "fish"  # aquarium_fish
    assert CIFAR100_COARSE_NAMES[CIFAR100_FINE_TO_COARSE[4]] == "aquatic_mammals"  # beaver
    assert CIFAR100_COARSE_NAMES[CIFAR100_FINE_TO_COARSE[fine_of["keyboard"]]] == "household_electrical_devices"
    assert CIFAR100_COARSE_NAMES[CIFAR100_FINE_TO_COARSE[99]] == "non-insect_invertebrates"  # worm
    # and every one of the 100
    for coarse, (coarse_name, members) in enumerate(CIFAR100_SUPERCLASSES.items()):
        for fine_name in members:
            assert CIFAR100_FINE_TO_COARSE[fine_of[fine_name]] == coarse, (fine_name, coarse_name)
    assert np.bincount(CIFAR100_FINE_TO_COARSE).tolist() == [5] * 20


# ---------------------------------------------------------------- Cats-vs-Dogs
def write_image(path, level):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((20, 24, 3), level, dtype=np.uint8)).save(path)


def test_cats_vs_dogs_folder_skips_broken_files_with_one_warning(tmp_path):
    for i in range(3):
        write_image(tmp_path / "train" / "cat" / f"cat.{i}.jpg", 50)
    for i in range(2):
        write_image(tmp_path / "train" / "dog" / f"dog.{i}.png", 200)
    (tmp_path / "train" / "cat" / "cat.empty.jpg").write_bytes(b"")
    (tmp_path / "train" / "dog" / "dog.garbage.jpg").write_bytes(b"this is not an image" * 10)
    for name in ("cat.10.jpg", "dog.11.jpg", "Cat.12.png", "dog.13.png"):
        write_image(tmp_path / "test" / name, 120)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train = SemanticDataset("cats_vs_dogs", tmp_path, "train", **SIZE)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "skipped 2 " in message and "cat.empty.jpg" in message and "dog.garbage.jpg" in message

    assert len(train) == 5 and train.class_names == ["cat", "dog"]
    assert train.targets.tolist() == [0, 0, 0, 1, 1]
    items = [train[i] for i in range(len(train))]  # every kept file loads
    assert all(item["image"].shape == (3, 28, 28) for item in items)
    assert items[3]["class_name"] == "dog" and items[3]["path"].endswith("dog.0.png")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        test = SemanticDataset("cats_vs_dogs", tmp_path, "test", **SIZE)
    assert test.targets.tolist() == [0, 0, 1, 1]  # sorted: Cat.12, cat.10, dog.11, dog.13
    dogs = OneClassDataset(test, "dog")
    assert dogs.labels.tolist() == [1, 1, 0, 0]
    assert len(OneClassDataset(train, "dog")) == 2


# ---------------------------------------------------------------- resizing
@pytest.mark.parametrize("resize", ["pil", "cv2"])
def test_semantic_datasets_resize_as_asked(tmp_path, monkeypatch, resize):
    write_cifar10(tmp_path, monkeypatch)
    transform = ImageTransform(48, 40, resize=resize)
    cifar = SemanticDataset("cifar10", tmp_path, "test", image_size=48, crop_size=40, resize=resize)
    image, _ = cifar.torchvision_set[3]
    assert cifar.transform.resize == resize and torch.equal(cifar[3]["image"], transform.image(image))
    rng = np.random.default_rng(0)
    folder = tmp_path / "cats"
    for name in ("cat.0.png", "cat.1.png"):
        (folder / "train" / "cat").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(folder / "train" / "cat" / name)
    cats = SemanticDataset("cats_vs_dogs", folder, "train", image_size=48, crop_size=40, resize=resize)
    assert torch.equal(cats[1]["image"], transform.image(load_rgb(cats.files[1])))
    with pytest.raises(ValueError, match="resize must be one of"):
        SemanticDataset("cifar10", tmp_path, "test", resize="area")


def test_reference_resize_per_dataset():
    # NoCo: torchvision's Resize on PIL images for the torchvision sets, albumentations for Cats-vs-Dogs
    assert set(REFERENCE_RESIZE) == set(SEMANTIC_DATASETS)
    assert REFERENCE_RESIZE["cats_vs_dogs"] == "cv2"
    assert {REFERENCE_RESIZE[name] for name in ("mnist", "fmnist", "cifar10", "cifar100")} == {"pil"}


def test_truncated_cats_vs_dogs_images(tmp_path):
    """Cut in its header: skipped by the scan. Cut in its pixel data: the scan (no decoding) keeps
    it, and reading it is one clear line naming the file."""
    data = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 240, 3), dtype=np.uint8)).save(data, "JPEG")
    data = data.getvalue()
    write_image(tmp_path / "train" / "cat" / "cat.0.jpg", 50)
    (tmp_path / "train" / "cat" / "cat.1.jpg").write_bytes(data[:100])
    cut = tmp_path / "train" / "cat" / "cat.2.jpg"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="skipped 1 empty or corrupt image file.*cat.1.jpg"):
        train = SemanticDataset("cats_vs_dogs", tmp_path, "train", **SIZE)
    assert [path.name for path in train.files] == ["cat.0.jpg", "cat.2.jpg"]
    with pytest.raises(ValueError, match=f"^cannot read image {cut}: image file is truncated"):
        train[1]


# ---------------------------------------------------------------- missing data
@pytest.mark.parametrize("name, layout", [
    ("mnist", "MNIST/raw"), ("fmnist", "FashionMNIST/raw"),
    ("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"),
])
def test_missing_torchvision_dataset_names_layout_and_download(tmp_path, name, layout):
    with pytest.raises(ValueError) as error:
        SemanticDataset(name, tmp_path, "test")
    message = str(error.value)
    assert str(tmp_path / layout) in message and "--download" in message


def test_missing_cats_vs_dogs_says_where_to_get_it(tmp_path):
    with pytest.raises(ValueError) as error:
        SemanticDataset("cats_vs_dogs", tmp_path, "train")
    message = str(error.value)
    assert "Dogs vs. Cats" in message and "kaggle" in message
    assert f"{tmp_path}/train/cat" in message and f"{tmp_path}/test/" in message


def test_unknown_dataset_and_split(tmp_path):
    with pytest.raises(ValueError, match="cats_vs_dogs"):
        SemanticDataset("svhn", tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        SemanticDataset("mnist", tmp_path, "val")

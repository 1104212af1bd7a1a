"""Structured-AD datasets (MVTec layout, BTAD, VisA preparation, the demo set) on generated files."""
import csv
import io
import time

import cv2
import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from datasets.btad import BTADDataset
from datasets.common import IMAGENET_MEAN, IMAGENET_STD, ImageTransform, load_mask, load_rgb
from datasets.demo import DEFECT_TYPES, generate_demo_class, make_demo
from datasets.mvtec import DATASET_SOURCES, MixedDataset, MVTecDataset, list_classes, resolve_classes
from datasets.visa import (VISA_TEST_NORMALS, prepare_visa, visa_count_mismatches, visa_split_counts)

WIDTH, HEIGHT = 40, 30  # non-square on purpose


def write_image(path, gray=False, seed=0, size=(WIDTH, HEIGHT)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if gray else (size[1], size[0], 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
    return path


def write_mask(path, size=(WIDTH, HEIGHT), value=255):
    """A mask whose left half is defective (pixel value `value`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    mask[:, : size[0] // 2] = value
    Image.fromarray(mask).save(path)
    return path


def make_mvtec_class(root, class_name="widget", n_train=3, n_good=2, n_crack=2):
    """train/good (the first image grayscale), test/good, test/crack with masks."""
    class_dir = root / class_name
    for i in range(n_train):
        write_image(class_dir / "train" / "good" / f"{i:03d}.png", gray=(i == 0), seed=i)
    for i in range(n_good):
        write_image(class_dir / "test" / "good" / f"{i:03d}.png", seed=10 + i)
    for i in range(n_crack):
        write_image(class_dir / "test" / "crack" / f"{i:03d}.png", seed=20 + i)
        write_mask(class_dir / "ground_truth" / "crack" / f"{i:03d}_mask.png")
    return class_dir


# ---------------------------------------------------------------- MVTec layout


def test_sample_dict_shapes_dtypes_and_labels(tmp_path):
    make_mvtec_class(tmp_path)
    test_set = MVTecDataset(tmp_path, "widget", "test", image_size=32, crop_size=28)
    assert len(test_set) == 4 and test_set.labels == [1, 1, 0, 0]  # crack sorts before good
    assert [label for _, label, _ in test_set.samples] == test_set.labels
    for sample in test_set:
        assert set(sample) == {"image", "label", "mask", "class_name", "path"}
        assert sample["image"].shape == (3, 28, 28) and sample["image"].dtype == torch.float32
        assert sample["mask"].shape == (1, 28, 28) and sample["mask"].dtype == torch.float32
        assert set(sample["mask"].unique().tolist()) <= {0.0, 1.0}
        assert isinstance(sample["label"], int) and sample["class_name"] == "widget"
        assert isinstance(sample["path"], str)
        if sample["label"] == 0:
            assert sample["mask"].sum() == 0
        else:
            assert 0 < sample["mask"].mean() < 1  # the left half, after resize and crop
    train_set = MVTecDataset(tmp_path, "widget", "train", image_size=32)
    assert len(train_set) == 3 and train_set.labels == [0, 0, 0]
    assert train_set[1]["image"].shape == (3, 32, 32)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    make_mvtec_class(tmp_path)
    image = MVTecDataset(tmp_path, "widget", "train", image_size=32)[0]["image"]  # 000.png is grayscale
    pixels = image * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
    assert image.shape[0] == 3
    assert torch.allclose(pixels[0], pixels[1], atol=1e-5) and torch.allclose(pixels[1], pixels[2], atol=1e-5)


def test_list_classes_and_mixed_dataset(tmp_path):
    make_mvtec_class(tmp_path, "alpha", n_crack=1)
    make_mvtec_class(tmp_path, "beta", n_good=3)
    (tmp_path / "notes").mkdir()  # not a class: no train/
    assert list_classes(tmp_path) == ["alpha", "beta"]
    parts = [MVTecDataset(tmp_path, name, "test", image_size=16) for name in list_classes(tmp_path)]
    mixed = MixedDataset(parts)
    assert len(mixed) == 3 + 5 and mixed.class_names == ["alpha", "beta"]
    assert mixed.labels == parts[0].labels + parts[1].labels == [1, 0, 0, 1, 1, 0, 0, 0]
    assert len(mixed.samples) == len(mixed)
    assert [mixed[i]["class_name"] for i in (0, 3)] == ["alpha", "beta"]


# ---------------------------------------------------------------- bad inputs, one test each


def test_missing_root_names_root_layout_and_source(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as error:
        MVTecDataset(root, "bottle", "train", source_hint=DATASET_SOURCES["mvtec"])
    message = str(error.value)
    assert f"dataset not found at {root}" in message and "ground_truth/<defect>/<name>_mask.png" in message
    assert "mvtec.com" in message and "--download" in message


def test_wrong_layout_names_missing_path(tmp_path):
    class_dir = make_mvtec_class(tmp_path)
    (class_dir / "train" / "good").rename(class_dir / "train" / "normal")
    with pytest.raises(FileNotFoundError, match="wrong layout") as error:
        MVTecDataset(tmp_path, "widget", "test")
    assert str(class_dir / "train" / "good") in str(error.value)
    (class_dir / "train" / "normal").rename(class_dir / "train" / "good")
    (class_dir / "test").rename(class_dir / "testing")
    with pytest.raises(FileNotFoundError) as error:
        MVTecDataset(tmp_path, "widget", "train")
    assert str(class_dir / "test") in str(error.value)


def test_empty_split_folder_is_named(tmp_path):
    make_mvtec_class(tmp_path, n_train=0)
    (tmp_path / "widget" / "train" / "good").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images in") as error:
        MVTecDataset(tmp_path, "widget", "train")
    assert str(tmp_path / "widget" / "train") in str(error.value)


def test_test_split_without_anomalies_is_refused(tmp_path):
    make_mvtec_class(tmp_path, n_crack=0)
    with pytest.raises(ValueError, match="has no anomalous images") as error:
        MVTecDataset(tmp_path, "widget", "test")
    assert str(tmp_path / "widget" / "test") in str(error.value)
    assert MVTecDataset(tmp_path, "widget", "train").labels == [0, 0, 0]


def test_unknown_class_lists_available(tmp_path):
    make_mvtec_class(tmp_path, "alpha")
    make_mvtec_class(tmp_path, "beta")
    with pytest.raises(ValueError, match=r"unknown class 'gamma' in .*; available: alpha, beta"):
        MVTecDataset(tmp_path, "gamma", "train")


def test_unknown_split_is_refused(tmp_path):
    make_mvtec_class(tmp_path)
    with pytest.raises(ValueError, match="'val'"):
        MVTecDataset(tmp_path, "widget", "val")


def test_defective_image_without_mask_names_image_and_expected_mask(tmp_path):
    class_dir = make_mvtec_class(tmp_path)
    missing = class_dir / "ground_truth" / "crack" / "001_mask.png"
    missing.unlink()
    with pytest.raises(ValueError) as error:
        MVTecDataset(tmp_path, "widget", "test")  # found at construction, not during a run
    message = str(error.value)
    assert str(class_dir / "test" / "crack" / "001.png") in message and str(missing) in message


def test_unreadable_image_names_the_file(tmp_path):
    class_dir = make_mvtec_class(tmp_path)
    garbage = class_dir / "train" / "good" / "001.png"
    garbage.write_bytes(b"definitely not a png \x00\x01\x02" * 10)
    dataset = MVTecDataset(tmp_path, "widget", "train", image_size=16)
    with pytest.raises(ValueError, match="cannot read image") as error:
        dataset[1]
    assert str(garbage) in str(error.value)


def test_mask_of_another_size_warns_and_is_resized_nearest(tmp_path):
    class_dir = make_mvtec_class(tmp_path, n_crack=1)
    small_mask = write_mask(class_dir / "ground_truth" / "crack" / "000_mask.png", size=(WIDTH // 2, HEIGHT // 2),
                            value=7)
    dataset = MVTecDataset(tmp_path, "widget", "test", image_size=WIDTH)
    with pytest.warns(UserWarning, match="resized with nearest") as record:
        mask = dataset[0]["mask"]
    assert str(small_mask) in str(record[0].message)
    assert set(mask.unique().tolist()) == {0.0, 1.0}  # nearest keeps it binary
    assert mask[0, :, : WIDTH // 2].min() == 1 and mask[0, :, WIDTH // 2:].max() == 0


def test_palette_mask_is_binarised_by_index_not_by_colour(tmp_path):
    class_dir = make_mvtec_class(tmp_path, n_crack=1)
    indices = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    indices[:, : WIDTH // 2] = 1
    mask = Image.fromarray(indices, mode="P")
    mask.putpalette([255, 255, 255, 0, 0, 0])  # index 0 white, index 1 (the defect) black
    mask.save(class_dir / "ground_truth" / "crack" / "000_mask.png")
    loaded = MVTecDataset(tmp_path, "widget", "test", image_size=WIDTH)[0]["mask"]
    assert loaded[0, :, : WIDTH // 2].min() == 1 and loaded[0, :, WIDTH // 2:].max() == 0


# ---------------------------------------------------------------- resizing per method


def smooth_image(width, height, seed=0):
    """Structure at several scales, so that antialiasing visibly matters on a downscale."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (height // 8, width // 8, 3)).astype(np.float32)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC) + rng.normal(0, 20, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def test_cv2_resize_is_cv2_inter_linear_bit_for_bit():
    array = smooth_image(300, 211)
    transform = ImageTransform(64, resize="cv2")
    expected = cv2.resize(array, (64, 64), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(transform.pixels(array), expected)
    assert np.array_equal(transform.pixels(Image.fromarray(array)), expected)  # a PIL image: the same array
    cropped = ImageTransform(64, 48, resize="cv2").pixels(array)
    assert np.array_equal(cropped, expected[8:56, 8:56])
    odd = ImageTransform(64, 49, resize="cv2").pixels(array)  # albumentations' CenterCrop: offset rounds down
    assert np.array_equal(odd, expected[7:56, 7:56])


def test_pil_resize_is_torchvision_resize_on_the_pil_image():
    image = Image.fromarray(smooth_image(300, 211))
    transform = ImageTransform(64, 48, resize="pil")
    expected = T.Compose([T.Resize((64, 64)), T.CenterCrop(48)])(image)
    assert np.array_equal(transform.pixels(image), np.asarray(expected))
    # normalised as torchvision's ToTensor + Normalize would: the default, unchanged
    reference = T.Compose([T.Resize((64, 64)), T.CenterCrop(48), T.ToTensor(),
                           T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    assert torch.equal(transform.image(image), reference(image))
    assert torch.equal(ImageTransform(64, 48).image(image), reference(image))


def test_pil_and_cv2_differ_on_a_downscale_and_normalise_alike():
    array = smooth_image(400, 400)
    pil, cv2_ = ImageTransform(50, resize="pil"), ImageTransform(50, resize="cv2")
    difference = np.abs(pil.pixels(array).astype(int) - cv2_.pixels(array).astype(int))
    assert difference.mean() > 2  # antialiased vs not: visibly different
    for transform in (pil, cv2_):
        expected = TF.normalize(TF.to_tensor(np.array(transform.pixels(array))), IMAGENET_MEAN, IMAGENET_STD)
        assert torch.equal(transform.image(array), expected)


@pytest.mark.parametrize("resize, interpolation", [("cv2", cv2.INTER_NEAREST), ("pil", Image.NEAREST)])
def test_masks_are_resized_nearest_in_either_mode(resize, interpolation):
    rng = np.random.default_rng(3)
    mask = Image.fromarray((rng.random((37, 53)) > 0.7).astype(np.uint8) * 255)
    got = ImageTransform(24, 20, resize=resize).mask(mask)
    if resize == "cv2":
        expected = cv2.resize(np.asarray(mask), (24, 24), interpolation=interpolation)[2:22, 2:22]
    else:
        expected = np.asarray(mask.resize((24, 24), interpolation))[2:22, 2:22]
    assert got.shape == (1, 20, 20) and got.dtype == torch.float32
    assert torch.equal(got[0], torch.from_numpy(expected > 0).float())


def test_unknown_resize_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="resize must be one of pil, cv2, got 'bicubic'"):
        ImageTransform(32, resize="bicubic")
    make_mvtec_class(tmp_path)
    with pytest.raises(ValueError, match="resize must be one of"):
        MVTecDataset(tmp_path, "widget", "train", resize="opencv")


@pytest.mark.parametrize("resize", ["pil", "cv2"])
def test_datasets_resize_as_asked(tmp_path, resize):
    class_dir = make_mvtec_class(tmp_path)
    dataset = MVTecDataset(tmp_path, "widget", "test", image_size=16, crop_size=12, resize=resize)
    transform = ImageTransform(16, 12, resize=resize)
    for index in (0, 3):
        path = dataset.samples[index][0]
        assert torch.equal(dataset[index]["image"], transform.image(load_rgb(path)))
    mask_path = class_dir / "ground_truth" / "crack" / "000_mask.png"
    assert torch.equal(dataset[0]["mask"], transform.mask(load_mask(mask_path)))
    product = tmp_path / "btad" / "01"
    bmp = write_image(product / "train" / "ok" / "0000.bmp")
    write_image(product / "test" / "ok" / "0000.bmp")
    btad = BTADDataset(tmp_path / "btad", "01", "train", image_size=16, resize=resize)
    assert btad.transform.resize == resize
    assert torch.equal(btad[0]["image"], ImageTransform(16, resize=resize).image(load_rgb(bmp)))


# ---------------------------------------------------------------- truncated and corrupt files


def encoded(array, fmt, **options):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **options)
    return buffer.getvalue()


def broken_versions(data):
    """{how: bytes} of a file cut in half, with its second half garbled, and not an image at all."""
    half = len(data) // 2
    return {"truncated": data[:half], "garbled": data[:half] + bytes(b ^ 0x5A for b in data[half:]),
            "not an image": b"definitely not an image \x00\x01" * 20, "empty": b""}


@pytest.mark.parametrize("fmt, suffix", [("PNG", ".png"), ("JPEG", ".jpg")])
@pytest.mark.parametrize("resize", ["pil", "cv2"])
def test_truncated_or_corrupt_image_is_one_clear_line(tmp_path, fmt, suffix, resize):
    class_dir = make_mvtec_class(tmp_path)
    data = encoded(smooth_image(64, 48), fmt)
    for how, bad in broken_versions(data).items():
        path = class_dir / "train" / "good" / f"001{suffix}"
        for old in (class_dir / "train" / "good").glob("001.*"):
            old.unlink()
        path.write_bytes(bad)
        dataset = MVTecDataset(tmp_path, "widget", "train", image_size=16, resize=resize)
        with pytest.raises(ValueError) as error:
            dataset[1]
        message = str(error.value)
        assert message.startswith(f"cannot read image {path}: ") and "\n" not in message, (how, message)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("resize", ["pil", "cv2"])
def test_truncated_or_corrupt_mask_is_one_clear_line(tmp_path, fmt, resize):
    class_dir = make_mvtec_class(tmp_path, n_crack=1)
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[5:25, 3:30] = 255
    data = encoded(mask, fmt)
    mask_path = class_dir / "ground_truth" / "crack" / "000_mask.png"  # the name is fixed; the bytes are not
    for how in ("truncated", "not an image", "empty"):
        mask_path.write_bytes(broken_versions(data)[how])
        dataset = MVTecDataset(tmp_path, "widget", "test", image_size=16, resize=resize)
        with pytest.raises(ValueError) as error:
            dataset[0]
        message = str(error.value)
        assert message.startswith(f"cannot read mask {mask_path}: ") and "\n" not in message, (how, message)


def test_a_whole_png_whose_end_marker_is_missing_still_loads(tmp_path):
    array = smooth_image(40, 30)
    path = tmp_path / "no_end.png"
    path.write_bytes(encoded(array, "PNG")[:-12])  # only the IEND chunk is gone: every pixel is there
    assert np.array_equal(np.asarray(load_rgb(path)), array)


# ---------------------------------------------------------------- classes checked up front


def test_resolve_classes_every_class_or_the_requested_ones_in_order(tmp_path):
    for name in ("gamma", "alpha", "beta"):
        make_mvtec_class(tmp_path, name)
    (tmp_path / "notes").mkdir()
    assert resolve_classes(tmp_path) == ["alpha", "beta", "gamma"]
    assert resolve_classes(tmp_path, ()) == resolve_classes(tmp_path, None) == resolve_classes(tmp_path, "")
    assert resolve_classes(tmp_path, ("gamma", "alpha")) == ["gamma", "alpha"]
    assert resolve_classes(tmp_path, "beta, gamma,beta,") == ["beta", "gamma"]


def test_resolve_classes_missing_root_names_layout_and_source(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        resolve_classes(tmp_path / "mvtec", ("bottle",), MVTecDataset, DATASET_SOURCES["mvtec"])
    message = str(error.value)
    assert f"dataset not found at {tmp_path / 'mvtec'}" in message and "ground_truth/<defect>" in message
    assert "mvtec.com" in message and "--download" in message
    with pytest.raises(FileNotFoundError, match="train/ok.*btad.zip"):
        resolve_classes(tmp_path / "btad", (), BTADDataset, DATASET_SOURCES["btad"])


def test_resolve_classes_folder_in_another_layout(tmp_path):
    (tmp_path / "images").mkdir()
    write_image(tmp_path / "images" / "a.png")
    with pytest.raises(ValueError) as error:
        resolve_classes(tmp_path, ("bottle",))
    assert str(error.value) == f"{tmp_path} is not in MVTec layout: expected {MVTecDataset.layout}"
    with pytest.raises(ValueError, match=f"{tmp_path} is not in BTAD layout: expected .*train/ok"):
        resolve_classes(tmp_path, (), BTADDataset)
    # the usual mistakes get a hint: one class folder given, or the classes one level down
    make_mvtec_class(tmp_path / "extracted", "widget")
    with pytest.raises(ValueError, match=f"one level down, in {tmp_path / 'extracted'}"):
        resolve_classes(tmp_path)
    with pytest.raises(ValueError, match=f"single class folder: pass its parent {tmp_path / 'extracted'} "
                                         "and --classes widget"):
        resolve_classes(tmp_path / "extracted" / "widget")


def test_resolve_classes_names_every_missing_class_before_any_work(tmp_path):
    root = make_demo(tmp_path / "demo", **SMALL_DEMO)
    with pytest.raises(ValueError) as error:
        resolve_classes(root, "brick,Grass,sand")
    assert str(error.value) == (f"unknown classes 'Grass' (did you mean 'grass'?), 'sand' in {root}; "
                                "available: brick, grass, gravel")
    with pytest.raises(ValueError, match=r"^unknown class 'sand' in"):
        resolve_classes(root, ["sand"])


def test_resolve_classes_builds_every_file_list_up_front(tmp_path):
    make_mvtec_class(tmp_path, "alpha")
    beta = make_mvtec_class(tmp_path, "beta")
    missing = beta / "ground_truth" / "crack" / "001_mask.png"
    missing.unlink()
    with pytest.raises(ValueError, match="has no mask") as error:
        resolve_classes(tmp_path, "alpha,beta")
    assert str(missing) in str(error.value)
    assert resolve_classes(tmp_path, "alpha") == ["alpha"]
    (beta / "train" / "good").rename(beta / "train" / "normal")
    with pytest.raises(FileNotFoundError, match="wrong layout"):
        resolve_classes(tmp_path, "beta")


def test_resolve_classes_leaves_warnings_to_the_datasets(tmp_path, recwarn):
    class_dir = make_mvtec_class(tmp_path)
    write_mask(class_dir / "ground_truth" / "crack" / "000_mask.png", size=(WIDTH // 2, HEIGHT // 2))
    assert resolve_classes(tmp_path) == ["widget"]
    assert len(recwarn) == 0
    with pytest.warns(UserWarning, match="resized with nearest neighbour"):
        MVTecDataset(tmp_path, "widget", "test")[0]


# ---------------------------------------------------------------- BTAD


def test_btad_bmp_images_with_png_and_bmp_masks(tmp_path):
    product = tmp_path / "02"
    for i in range(3):
        write_image(product / "train" / "ok" / f"{i:04d}.bmp", seed=i)
    write_image(product / "test" / "ok" / "0000.bmp", seed=5)
    write_image(product / "test" / "ko" / "0000.bmp", seed=6)
    write_image(product / "test" / "ko" / "0001.png", seed=7)
    write_mask(product / "ground_truth" / "ko" / "0000.png")
    write_mask(product / "ground_truth" / "ko" / "0001.bmp")
    assert len(BTADDataset(tmp_path, "02", "train", image_size=16)) == 3
    test_set = BTADDataset(tmp_path, "02", "test", image_size=16)
    assert test_set.labels == [1, 1, 0]
    assert [mask.name if mask else None for _, _, mask in test_set.samples] == ["0000.png", "0001.bmp", None]
    for sample in test_set:
        assert sample["image"].shape == (3, 16, 16) and sample["class_name"] == "02"
        assert (sample["mask"].sum() > 0) == (sample["label"] == 1)
    (product / "ground_truth" / "ko" / "0000.png").unlink()
    with pytest.raises(ValueError, match="0000.bmp has no mask") as error:
        BTADDataset(tmp_path, "02", "test")
    assert str(product / "ground_truth" / "ko" / "0000.png") in str(error.value)


def test_btad_missing_root_describes_btad_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="train/ok.*btad"):
        BTADDataset(tmp_path / "btad", "01", "train")


# ---------------------------------------------------------------- VisA preparation


def make_raw_visa(raw, classes=("candle", "pcb1"), n_normal=5, n_anomaly=3, n_test_normal=2):
    """Raw VisA layout with masks holding values 1/2 (not 0/255), and its 1cls-style CSV."""
    rows = []
    for c_index, class_name in enumerate(classes):
        data = raw / class_name / "Data"
        for i in range(n_normal):
            name = f"{class_name}/Data/Images/Normal/{i:04d}.JPG"
            write_image(raw / name, seed=100 * c_index + i)
            rows.append([class_name, "test" if i >= n_normal - n_test_normal else "train", "normal", name, ""])
        for i in range(n_anomaly):
            name = f"{class_name}/Data/Images/Anomaly/{i:03d}.JPG"
            write_image(raw / name, seed=100 * c_index + 50 + i)
            mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
            mask[2:8, 3:9], mask[12:20, 20:30] = 1, 2
            (data / "Masks" / "Anomaly").mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(data / "Masks" / "Anomaly" / f"{i:03d}.png")
            rows.append([class_name, "test", "anomaly", name, f"{class_name}/Data/Masks/Anomaly/{i:03d}.png"])
    (raw / "split_csv").mkdir(parents=True)
    with open(raw / "split_csv" / "1cls.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["object", "split", "label", "image", "mask"]] + rows)


def test_visa_preparation_layout_masks_counts_and_idempotence(tmp_path, monkeypatch):
    raw, out = tmp_path / "raw", tmp_path / "visa"
    make_raw_visa(raw)
    assert prepare_visa(raw, out) == out
    assert visa_split_counts(out) == {c: {"train": 3, "test_good": 2, "test_bad": 3} for c in ("candle", "pcb1")}
    mask_path = out / "candle" / "ground_truth" / "bad" / "001_mask.png"
    mask = np.asarray(Image.open(mask_path))
    assert set(np.unique(mask).tolist()) == {0, 255} and (mask == 255).sum() == 6 * 6 + 8 * 10
    test_set = MVTecDataset(out, "pcb1", "test", image_size=16)
    assert test_set.labels == [1, 1, 1, 0, 0]

    # a finished preparation is not redone
    monkeypatch.setattr("datasets.visa.shutil.copyfile", lambda *a: pytest.fail("prepared twice"))
    prepare_visa(raw, out)
    monkeypatch.undo()

    # a half-finished one (no marker) is redone from scratch, dropping stray files
    (out / "visa_prepared.json").unlink()
    stray = write_image(out / "candle" / "test" / "good" / "stray.png")
    prepare_visa(raw, out)
    assert not stray.exists() and visa_split_counts(out)["candle"]["test_good"] == 2


def test_visa_missing_csv_and_raw_folder_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="raw VisA folder not found") as error:
        prepare_visa(tmp_path / "raw", tmp_path / "out")
    assert str(tmp_path / "raw") in str(error.value)
    (tmp_path / "raw").mkdir()
    with pytest.raises(FileNotFoundError, match="split CSV not found") as error:
        prepare_visa(tmp_path / "raw", tmp_path / "out")
    assert str(tmp_path / "raw" / "split_csv" / "1cls.csv") in str(error.value)


def test_visa_csv_naming_a_missing_file(tmp_path):
    raw = tmp_path / "raw"
    make_raw_visa(raw, classes=("candle",))
    missing = raw / "candle" / "Data" / "Masks" / "Anomaly" / "002.png"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match="1 file") as error:
        prepare_visa(raw, tmp_path / "out")
    assert str(missing) in str(error.value)


def test_visa_official_counts_check():
    official = {c: {"train": 0, "test_good": n, "test_bad": 100} for c, n in VISA_TEST_NORMALS.items()}
    official["candle"]["train"] = 8659
    assert visa_count_mismatches(official) == []
    official["pcb3"]["test_good"] = 100
    problems = visa_count_mismatches(official)
    assert any("pcb3: 100 test normals, official 101" in p for p in problems)
    assert any("2161 test images in total, official 2162" in p for p in problems)


# ---------------------------------------------------------------- demo set

SMALL_DEMO = dict(image_size=64, n_train=4, n_test_good=2, n_test_defect=6)


def folder_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_demo_default_is_fast_and_loads_as_mvtec(tmp_path):
    start = time.perf_counter()
    root = make_demo(tmp_path / "demo")
    assert time.perf_counter() - start < 5
    assert list_classes(root) == ["brick", "grass", "gravel"]
    test_set = MVTecDataset(root, "grass", "test", image_size=128)
    assert len(MVTecDataset(root, "grass", "train", image_size=128)) == 24
    assert len(test_set) == 20 and sum(test_set.labels) == 12
    assert sorted(p.name for p in (root / "grass" / "test").iterdir()) == sorted(("good",) + DEFECT_TYPES)
    sample = test_set[0]
    assert sample["image"].shape == (3, 128, 128) and sample["label"] == 1 and sample["mask"].sum() > 0


def test_demo_is_deterministic(tmp_path):
    first = folder_bytes(make_demo(tmp_path / "a", seed=3, **SMALL_DEMO))
    second = folder_bytes(make_demo(tmp_path / "b", seed=3, **SMALL_DEMO))
    other = folder_bytes(make_demo(tmp_path / "c", seed=4, **SMALL_DEMO))
    assert first == second
    assert first.keys() == other.keys() and first != other


def test_demo_is_idempotent_and_regenerates_cleanly(tmp_path):
    root = make_demo(tmp_path / "demo", classes=("brick",), **SMALL_DEMO)
    before = {path: (root / path).stat().st_mtime_ns for path in folder_bytes(root)}
    make_demo(root, classes=("brick",), **SMALL_DEMO)
    assert {path: (root / path).stat().st_mtime_ns for path in folder_bytes(root)} == before

    # different parameters: regenerated with no leftovers
    make_demo(root, classes=("gravel",), **{**SMALL_DEMO, "n_train": 2})
    assert list_classes(root) == ["gravel"] and len(list((root / "gravel" / "train" / "good").iterdir())) == 2

    # half-written (no marker): regenerated, stray files gone
    (root / "demo.json").unlink()
    stray = root / "gravel" / "test" / "good" / "stray.png"
    stray.write_bytes(b"half")
    make_demo(root, classes=("gravel",), **{**SMALL_DEMO, "n_train": 2})
    assert not stray.exists() and (root / "demo.json").is_file()


def test_demo_masks_mark_exactly_the_changed_pixels(tmp_path):
    root = make_demo(tmp_path / "demo", seed=1, classes=("grass",), **SMALL_DEMO)
    items = generate_demo_class("grass", seed=1, **SMALL_DEMO)
    defective = [item for item in items if item.mask is not None]
    assert sorted({item.path.split("/")[2] for item in defective}) == sorted(DEFECT_TYPES)
    for item in items:
        saved = np.asarray(Image.open(root / item.path))
        assert np.array_equal(saved, item.image)
        if item.mask is None:
            assert np.array_equal(item.image, item.clean)
            continue
        saved_mask = np.asarray(Image.open(root / item.mask_path))
        assert set(np.unique(saved_mask).tolist()) == {0, 255}
        assert np.array_equal(saved_mask > 0, item.image != item.clean)

"""Images and masks of every bit depth and mode load with their real contrast; what the loaders cannot read, and
test splits without both kinds of image, are refused before any training (resolve_classes)."""
import shutil
import struct
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from datasets.btad import BTADDataset
from datasets.common import check_image_header, decode_every_file, load_mask, load_rgb
from datasets.mvtec import MVTecDataset, resolve_classes
from tests.test_datasets_structured import HEIGHT, WIDTH, make_mvtec_class, write_image

RNG = np.random.default_rng(0)
GREY8 = RNG.integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)
RGB8 = RNG.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)


def png16(path, array):
    """A 16-bit PNG written chunk by chunk: grey+alpha (HxWx2), which neither PIL nor OpenCV writes."""
    height, width = array.shape[:2]
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in array)

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 4, 0, 0, 0)  # bit depth 16, colour type 4: grey+alpha
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))
    return path


def write_16bit(path, array):
    """A 16-bit file of a uint16 HxW, HxWx3 (RGB) or HxWx4 (RGBA) array, written by OpenCV (BGR order on disk)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array if array.ndim == 2 else np.dstack([array[:, :, 2::-1], array[:, :, 3:]]))
    return path


WRITERS_16BIT = {  # name: (writes a uint16 array to a folder, reads back as grey)
    "grey PNG (OpenCV)": (lambda folder, a: write_16bit(folder / "g.png", a), True),
    "grey PNG (PIL I;16)": (lambda folder, a: Image.fromarray(a).save(folder / "g.png") or folder / "g.png", True),
    "grey TIFF": (lambda folder, a: write_16bit(folder / "g.tif", a), True),
    "grey TIFF big-endian (PIL I;16B)": (lambda folder, a: Image.frombytes(
        "I;16B", a.shape[::-1], a.astype(">u2").tobytes()).save(folder / "g.tif") or folder / "g.tif", True),
    "grey PNG with alpha": (lambda folder, a: png16(folder / "la.png", np.dstack([a, 65535 - a])), True),
    "RGB PNG": (lambda folder, a: write_16bit(folder / "c.png", a), False),
    "RGB TIFF": (lambda folder, a: write_16bit(folder / "c.tif", a), False),
    "RGBA PNG": (lambda folder, a: write_16bit(folder / "c.png", np.dstack([a, a[:, :, 0]])), False),
}


@pytest.mark.parametrize("writer", WRITERS_16BIT)
def test_a_16bit_file_made_from_an_8bit_one_loads_as_the_8bit_one(tmp_path, writer):
    write, grey = WRITERS_16BIT[writer]
    original = GREY8 if grey else RGB8
    path = write(tmp_path, original.astype(np.uint16) * 257)
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype == np.uint16  # 16 bits on disk
    expected = np.dstack([original] * 3) if grey else original
    assert np.array_equal(np.asarray(load_rgb(path)), expected)
    assert load_rgb(path).mode == "RGB"


@pytest.mark.parametrize("writer", WRITERS_16BIT)
def test_any_16bit_value_is_rounded_to_8_bits(tmp_path, writer):
    write, grey = WRITERS_16BIT[writer]
    values = RNG.integers(0, 65536, (HEIGHT, WIDTH) if grey else (HEIGHT, WIDTH, 3), dtype=np.uint16)
    values.flat[:4] = (0, 65535, 128, 385)  # round(v / 257) = 0, 255, 0, 1 where keeping the high byte gives 0, 1
    expected = np.rint(values / 257).astype(np.uint8)  # round(v * 255 / 65535); no ties
    assert np.array_equal(np.asarray(load_rgb(write(tmp_path, values))),
                          np.dstack([expected] * 3) if grey else expected)


def test_a_16bit_image_keeps_its_contrast(tmp_path):
    ranged = RNG.integers(80, 193, (HEIGHT, WIDTH), dtype=np.uint8)
    for path in (write_16bit(tmp_path / "g.png", ranged.astype(np.uint16) * 257),
                 write_16bit(tmp_path / "c.png", np.dstack([ranged] * 3).astype(np.uint16) * 257)):
        loaded = np.asarray(load_rgb(path))
        assert (loaded.min(), loaded.max()) == (80, 192), path  # not clipped to a uniform white


def test_a_32bit_integer_image_is_read_as_16bit_within_0_to_65535(tmp_path):
    values = GREY8.astype(np.int32) * 257
    Image.fromarray(values).save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "i.tif")), np.dstack([GREY8] * 3))
    values[0, 0] = 70000
    Image.fromarray(values).save(tmp_path / "i.tif")
    with pytest.raises(ValueError) as error:
        load_rgb(tmp_path / "i.tif")
    assert str(error.value) == (f"cannot read image {tmp_path / 'i.tif'}: I values outside 0-65535 are not supported "
                                "(expected 8- or 16-bit grey or RGB)")


EIGHT_BIT_FILES = {  # name: (file name, PIL image)
    "palette": ("p.png", Image.fromarray(RGB8).convert("P")),
    "RGBA": ("rgba.png", Image.fromarray(np.dstack([RGB8, GREY8]))),
    "LA": ("la.png", Image.fromarray(GREY8).convert("LA")),
    "1": ("one.png", Image.fromarray(GREY8 > 127)),
    "L": ("l.png", Image.fromarray(GREY8)),
    "JPEG": ("j.jpg", Image.fromarray(RGB8)),
    "CMYK JPEG": ("cmyk.jpg", Image.fromarray(RGB8).convert("CMYK")),
    "BMP": ("b.bmp", Image.fromarray(RGB8)),
}


@pytest.mark.parametrize("name", EIGHT_BIT_FILES)
def test_8bit_modes_load_as_pil_converts_them(tmp_path, name):
    file_name, image = EIGHT_BIT_FILES[name]
    image.save(tmp_path / file_name)
    with Image.open(tmp_path / file_name) as reference:
        expected = np.asarray(reference.convert("RGB"))
    assert np.array_equal(np.asarray(load_rgb(tmp_path / file_name)), expected)


def test_an_unsupported_mode_is_refused_in_one_line_naming_the_file(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(GREY8.astype(np.float32)).save(path)
    expected = f"cannot read image {path}: F images are not supported (expected 8- or 16-bit grey or RGB)"
    for check in (load_rgb, check_image_header):
        with pytest.raises(ValueError) as error:
            check(path)
        assert str(error.value) == expected
    with pytest.raises(ValueError, match=f"^cannot read mask {path}: F images are not supported"):
        load_mask(path)


def test_a_truncated_16bit_file_is_one_clear_line(tmp_path):
    for path in (write_16bit(tmp_path / "g.png", GREY8.astype(np.uint16) * 257),
                 write_16bit(tmp_path / "c.png", RGB8.astype(np.uint16) * 257)):
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
        check_image_header(path)  # the header is whole
        with pytest.raises(ValueError) as error:
            load_rgb(path)
        assert str(error.value).startswith(f"cannot read image {path}: ") and "\n" not in str(error.value)


def test_16bit_masks_are_binarised_by_value_in_any_channel(tmp_path):
    defect = np.zeros((HEIGHT, WIDTH), dtype=np.uint16)
    defect[:, : WIDTH // 2] = 1  # 1 of 65535: no longer there once only the high byte is kept
    defect[0, 0] = 65535
    expected = (defect > 0).astype(np.uint8) * 255
    only_green = np.dstack([np.zeros_like(defect), defect, np.zeros_like(defect)])
    for path in (write_16bit(tmp_path / "g.png", defect), write_16bit(tmp_path / "g.tif", defect),
                 write_16bit(tmp_path / "c.png", only_green), write_16bit(tmp_path / "c.tif", only_green)):
        mask = load_mask(path)
        assert mask.mode == "L" and np.array_equal(np.asarray(mask), expected), path


def to_16bit_copy(source, target):
    """Every PNG of an MVTec-layout folder as a 16-bit PNG of the same 8-bit values (v8 * 257)."""
    shutil.copytree(source, target)
    for path in target.rglob("*.png"):
        with Image.open(path) as image:
            values = np.asarray(image)
        write_16bit(path, values.astype(np.uint16) * 257)


@pytest.mark.parametrize("resize", ["pil", "cv2"])
def test_a_16bit_class_gives_the_samples_of_its_8bit_copy(tmp_path, resize):
    make_mvtec_class(tmp_path / "8bit")  # one grey and two RGB training images, grey masks
    to_16bit_copy(tmp_path / "8bit", tmp_path / "16bit")
    assert Image.open(tmp_path / "16bit" / "widget" / "train" / "good" / "000.png").mode == "I;16"
    for split in ("train", "test"):
        eight, sixteen = (MVTecDataset(tmp_path / depth, "widget", split, image_size=24, crop_size=20, resize=resize)
                          for depth in ("8bit", "16bit"))
        for index in range(len(eight)):
            assert torch.equal(eight[index]["image"], sixteen[index]["image"]), (split, index)
            assert torch.equal(eight[index]["mask"], sixteen[index]["mask"]), (split, index)


# ---------------------------------------------------------------- checked before training: resolve_classes


@pytest.mark.parametrize("remove, message", [
    ("good", "{test} has no normal images (expected {test}/good); AUROC needs both kinds"),
    ("crack", "{test} has no anomalous images (expected {test}/<defect> besides good); AUROC needs both kinds")])
def test_a_test_split_without_normal_or_anomalous_images_is_refused_up_front(tmp_path, remove, message):
    make_mvtec_class(tmp_path, "alpha")
    beta = make_mvtec_class(tmp_path, "beta")
    shutil.rmtree(beta / "test" / remove)
    assert len(MVTecDataset(tmp_path, "beta", "train")) == 3  # its training images alone would train a model
    for build in (lambda: resolve_classes(tmp_path), lambda: MVTecDataset(tmp_path, "beta", "test")):
        with pytest.raises(ValueError) as error:
            build()
        assert str(error.value) == message.format(test=beta / "test")
    assert resolve_classes(tmp_path, "alpha") == ["alpha"]


def test_btad_without_test_ok_is_refused_up_front(tmp_path):
    product = tmp_path / "01"
    for i in range(2):
        write_image(product / "train" / "ok" / f"{i:04d}.bmp", seed=i)
    write_image(product / "test" / "ko" / "0000.bmp", seed=5)
    write_image(product / "ground_truth" / "ko" / "0000.png", gray=True)
    with pytest.raises(ValueError) as error:
        resolve_classes(tmp_path, dataset_cls=BTADDataset)
    assert str(error.value) == (f"{product / 'test'} has no normal images (expected {product / 'test' / 'ok'}); "
                                "AUROC needs both kinds")


def test_a_file_that_is_not_an_image_is_refused_up_front_naming_it(tmp_path):
    make_mvtec_class(tmp_path, "alpha")
    beta = make_mvtec_class(tmp_path, "beta", n_train=5)
    text = beta / "train" / "good" / "003.png"
    text.write_bytes(b"a few notes, saved with the wrong name\n" * 5)
    with pytest.raises(ValueError) as error:
        resolve_classes(tmp_path)
    assert str(error.value).startswith(f"cannot read image {text}: ") and "\n" not in str(error.value)
    text.unlink()
    mask = beta / "ground_truth" / "crack" / "001_mask.png"
    Image.fromarray(np.zeros((HEIGHT, WIDTH), np.float32)).save(mask, "TIFF")  # a float image named .png
    with pytest.raises(ValueError) as error:
        resolve_classes(tmp_path)
    assert str(error.value) == (f"cannot read mask {mask}: F images are not supported "
                                "(expected 8- or 16-bit grey or RGB)")


def cut_body(path):
    """Keep the header and the start of the pixel data: the header check passes, decoding fails."""
    data = path.read_bytes()
    path.write_bytes(data[:min(200, len(data) * 2 // 3)])  # a 40 x 30 mask is 89 bytes, its header 33
    check_image_header(path, "mask" if path.stem.endswith("_mask") else "image")
    return path


@pytest.mark.parametrize("where", ["train/good/001.png", "train/good/002.png (16-bit)", "test/good/000.png",
                                   "test/crack/001.png", "ground_truth/crack/001_mask.png"])
def test_every_file_of_every_class_is_decoded_before_training(tmp_path, where):
    """A file of the second class whose header is whole but whose body is cut stops resolve_classes, naming
    it in one line; the first class alone passes. Every training image is there, the held-out ones too."""
    make_mvtec_class(tmp_path, "alpha")
    beta = make_mvtec_class(tmp_path, "beta")
    path = beta / where.split(" ")[0]
    if "16-bit" in where:
        write_16bit(path, RGB8.astype(np.uint16) * 257)
    cut_body(path)
    kind = "mask" if "ground_truth" in where else "image"
    with pytest.raises(ValueError) as error:
        resolve_classes(tmp_path)
    assert str(error.value).startswith(f"cannot read {kind} {path}: ") and "\n" not in str(error.value)
    assert resolve_classes(tmp_path, "alpha") == ["alpha"]


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_the_first_bad_file_in_order_is_named_whatever_the_threads(tmp_path, threads):
    class_dir = make_mvtec_class(tmp_path, n_train=12)
    first, later = (cut_body(class_dir / "train" / "good" / f"{i:03d}.png") for i in (4, 9))
    samples = MVTecDataset(tmp_path, "widget", "train").samples
    for _ in range(3):
        with pytest.raises(ValueError, match=f"^cannot read image {first}: "):
            decode_every_file(samples, threads)
    decode_every_file(samples[5:9], threads)  # the files between the two are whole
    with pytest.raises(ValueError, match=f"^cannot read image {later}: "):
        decode_every_file(samples[5:], threads)


def test_a_defective_image_whose_mask_is_empty_is_kept_with_one_warning_naming_the_mask(tmp_path):
    make_mvtec_class(tmp_path, "alpha")
    beta = make_mvtec_class(tmp_path, "beta")
    mask = beta / "ground_truth" / "crack" / "001_mask.png"
    for values in (np.zeros((HEIGHT, WIDTH), np.uint8), np.zeros((HEIGHT, WIDTH, 3), np.uint8)):
        Image.fromarray(values).save(mask)
        with pytest.warns(UserWarning) as caught:
            assert resolve_classes(tmp_path) == ["alpha", "beta"]
        assert [str(w.message) for w in caught] == [
            f"1 of 2 defect masks of class beta mark no pixel (first: {mask}): those images count as anomalous "
            "images with no anomalous pixel"]
    one_pixel = np.zeros((HEIGHT, WIDTH), np.uint16)
    one_pixel[3, 5] = 1  # 1 of 65535 in one pixel is a marked pixel (masks are binarised > 0)
    write_16bit(mask, one_pixel)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_classes(tmp_path) == ["alpha", "beta"]
    for name in ("000", "001"):  # every defect mask of a class empty: its pixel metrics cannot be computed
        Image.fromarray(np.zeros((HEIGHT, WIDTH), np.uint8)).save(beta / "ground_truth" / "crack" / f"{name}_mask.png")
    with pytest.raises(ValueError, match=f"^every defect mask of class beta is empty \\(first: "
                                         f"{beta / 'ground_truth' / 'crack' / '000_mask.png'}\\): "):
        resolve_classes(tmp_path)
    mask.unlink()  # no mask at all: refused by the file list, as before
    with pytest.raises(ValueError, match=f"^defective image .*001.png has no mask: expected {mask}$"):
        resolve_classes(tmp_path)


def test_the_decoding_pass_returns_the_samples_whose_mask_is_empty_in_order(tmp_path):
    class_dir = make_mvtec_class(tmp_path, n_crack=4)
    for name in ("003", "001"):
        mask = class_dir / "ground_truth" / "crack" / f"{name}_mask.png"
        Image.fromarray(np.zeros((HEIGHT, WIDTH), np.uint8)).save(mask)
    samples = MVTecDataset(tmp_path, "widget", "test").samples
    for threads in (1, 2):
        assert [Path(mask).name for _, _, mask in decode_every_file(samples, threads)] == ["001_mask.png",
                                                                                            "003_mask.png"]

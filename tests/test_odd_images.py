"""Odd image files in an image folder: 16-bit and 32-bit grayscale come out scaled, not clipped white.

Pillow's plain ``convert("L")`` of an ``I;16`` PNG clips every value above 255 to white (a
typical 16-bit scan comes out ~97% white); the image-folder source must scale them to 8 bits.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pipeline.config import config_from_dict
from pipeline.data import ImageDataset, check_image_file, high_depth_to_uint8, load_folder_image, to_rgb
from pipeline.stages.prepare import run as prepare

SIZE = 16


def ramp16() -> np.ndarray:
    """A 16x16 ramp over the whole 16-bit range, with the exact corners 0 and 65535."""
    values = np.linspace(0, 65535, SIZE * SIZE).round().astype(np.uint16).reshape(SIZE, SIZE)
    values[0, 0], values[-1, -1] = 0, 65535
    return values


def expected8(values16: np.ndarray) -> np.ndarray:
    """The reference scaling, written independently: nearest integer to v * 255 / 65535."""
    return np.floor(values16.astype(np.float64) * 255.0 / 65535.0 + 0.5).astype(np.uint8)


def decoded(path) -> np.ndarray:
    array = load_folder_image(path, SIZE)
    assert array.dtype == np.uint8 and array.shape == (3, SIZE, SIZE)
    assert (array[0] == array[1]).all() and (array[1] == array[2]).all()  # grey stays grey
    return array[0]


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    values = ramp16()
    path = tmp_path / "scan.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as reopened:
        assert reopened.mode == "I;16"  # really a 16-bit file
        clipped = np.asarray(reopened.convert("L"))
    assert (clipped == 255).mean() > 0.95  # what plain conversion does: the bug being fixed
    assert check_image_file(str(path)) is None
    pixels = decoded(path)
    np.testing.assert_array_equal(pixels, expected8(values))
    assert pixels[0, 0] == 0 and pixels[-1, -1] == 255
    assert (pixels == 255).mean() < 0.01
    assert abs(float(pixels.mean()) - 127.5) < 1.0  # a full ramp averages mid grey


def test_big_endian_16_bit_and_exact_multiples_of_257():
    values = (np.arange(SIZE * SIZE, dtype=np.uint16) % 256 * 257).reshape(SIZE, SIZE)
    image = Image.fromarray(values.astype(">u2"))
    assert image.mode == "I;16B"
    np.testing.assert_array_equal(np.asarray(to_rgb(image))[..., 0], values // 257)


def test_rounding_at_the_half_steps():
    # 128/257 = 0.498 -> 0, 129/257 = 0.502 -> 1; 254.5 * 257 = 65406.5 lies between 65406 and 65407.
    values = np.array([[0, 128, 129, 385, 386, 65406, 65407, 65535]], dtype=np.uint16)
    assert high_depth_to_uint8(Image.fromarray(values)).tolist() == [[0, 0, 1, 1, 2, 254, 255, 255]]


def test_32_bit_tiff_with_16_bit_values_uses_the_16_bit_scale(tmp_path):
    values = ramp16()
    path = tmp_path / "scan.tif"
    Image.fromarray(values.astype(np.int32)).save(path)
    with Image.open(path) as reopened:
        assert reopened.mode == "I"
    np.testing.assert_array_equal(decoded(path), expected8(values))


def test_32_bit_with_values_beyond_16_bits_uses_the_int32_range():
    values = np.array([[-5, 0, 2**30, 2**31 - 1]], dtype=np.int32)
    scaled = high_depth_to_uint8(Image.fromarray(values))
    assert scaled.tolist() == [[0, 0, 128, 255]]  # negatives clip to 0; 2**30 is half of int32 max


@pytest.mark.parametrize(("floats", "expected"), [
    ([0.0, 0.25, 0.5, 1.0], [0, 64, 128, 255]),  # a [0, 1] float image
    ([0.0, 2.0, 127.6, 300.0], [0, 2, 128, 255]),  # already on 0..255: clipped
    ([float("nan"), 0.0, 0.5, 1.0], [0, 0, 128, 255]),  # NaN is 0, the rest a [0, 1] image
    ([-1.0, 0.0, 10.0, 255.0], [0, 0, 10, 255]),  # negative: the 0..255 reading, clipped
])
def test_float_images(floats, expected, tmp_path):
    path = tmp_path / "f.tif"
    Image.fromarray(np.array([floats], dtype=np.float32)).save(path)
    with Image.open(path) as reopened:
        assert reopened.mode == "F"
        assert np.asarray(to_rgb(reopened))[0, :, 0].tolist() == expected


@pytest.mark.parametrize("mode", ["L", "RGB", "P", "1", "LA", "RGBA", "CMYK"])
def test_8_bit_modes_convert_exactly_as_before(mode):
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    image = base.convert(mode)
    if mode in ("LA", "RGBA"):
        reference = Image.alpha_composite(Image.new("RGBA", image.size, (255,) * 4),
                                          image.convert("RGBA")).convert("RGB")
    else:
        reference = image.convert("RGB")
    assert to_rgb(image).tobytes() == reference.tobytes()


def test_image_folder_dataset_reads_16_bit_pngs(tmp_path, monkeypatch):
    # The whole source: prepare checks and lists the files, the dataset decodes them.
    values = ramp16()
    for name in ("a", "b"):
        for index, scale in enumerate((1, 2)):
            folder = tmp_path / "images" / name
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray((values // scale).astype(np.uint16)).save(folder / f"{index}.png")
    monkeypatch.chdir(tmp_path)
    cfg = config_from_dict({"data": {"source": "imagefolder", "root": "images", "val_root": "images",
                                     "image_size": SIZE, "workers": 0}})
    prepare(cfg)
    assert json.loads((tmp_path / "metrics/prepare.json").read_text())["images"]["train"] == 4
    dataset = ImageDataset(cfg, "train")
    for i in range(len(dataset)):
        image = dataset[i][0]
        scale = 2 if dataset.paths[i].endswith("1.png") else 1
        np.testing.assert_array_equal(np.asarray(image[0]), expected8((values // scale).astype(np.uint16)))

"""Every image mode Pillow opens is scaled by its range, not clipped: 16-bit, 32-bit integer and float images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vqprior.config import DataSection
from vqprior.datasets import load_split
from vqprior.datasets.pixels import open_image, read_image, to_uint8
from vqprior.errors import UserError

RAMP = np.linspace(0, 1, 28 * 28).reshape(28, 28)  # black to white


def expected(values=RAMP):
    return np.rint(values * 255).astype(np.uint8)


@pytest.mark.parametrize(
    "name,make,notice",
    [
        ("16-bit PNG", lambda p: Image.fromarray(np.rint(RAMP * 65535).astype(np.uint16)).save(p), None),
        ("float TIFF in [0, 1]", lambda p: Image.fromarray(RAMP.astype(np.float32), mode="F").save(p), "[0, 1]"),
        (
            "float TIFF in [0, 255]",
            lambda p: Image.fromarray((RAMP * 255).astype(np.float32), mode="F").save(p),
            "[0, 255]",
        ),
        (
            "32-bit integer TIFF in 0..65535",
            lambda p: Image.fromarray(np.rint(RAMP * 65535).astype(np.int32), mode="I").save(p),
            "16-bit",
        ),
        ("8-bit grey", lambda p: Image.fromarray(expected()).save(p), None),
    ],
)
def test_pixel_values_keep_their_meaning(tmp_path, name, make, notice):
    path = tmp_path / ("img.tif" if "TIFF" in name else "img.png")
    make(path)
    pixels, said = read_image(path, 1)
    assert np.abs(pixels.astype(int) - expected().astype(int)).max() <= 1, name
    assert (said is None) if notice is None else (notice in said)


def test_mid_grey_16_bit_is_mid_grey_not_white(tmp_path):
    Image.fromarray(np.full((4, 4), 32767, np.uint16)).save(tmp_path / "g.png")
    assert open_image(tmp_path / "g.png").mode.startswith("I")
    assert read_image(tmp_path / "g.png", 1)[0].max() == 127


def test_out_of_range_floats_are_stretched_with_a_notice():
    img = Image.fromarray((RAMP * 1000 - 500).astype(np.float32), mode="F")
    pixels, notice = to_uint8(img, 3)
    assert pixels.shape == (28, 28, 3) and pixels.min() == 0 and pixels.max() == 255 and "stretched" in notice


def test_nan_pixels_are_refused(tmp_path):
    values = RAMP.astype(np.float32)
    values[3, 3] = np.nan
    Image.fromarray(values, mode="F").save(tmp_path / "nan.tif")
    with pytest.raises(UserError, match="NaN"):
        read_image(tmp_path / "nan.tif", 1)


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a 64x64 header now declares "too many" pixels
    with pytest.raises(UserError, match="decompression bomb"):
        read_image(tmp_path / "bomb.png", 1)


def test_a_folder_of_16_bit_images_trains_on_real_values_and_says_what_it_guessed(tmp_path):
    for split in ("train", "test"):
        for i in range(3):
            (tmp_path / split / "a").mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.rint(RAMP * 65535).astype(np.uint16)).save(tmp_path / split / "a" / f"{i}.png")
            Image.fromarray(RAMP.astype(np.float32), mode="F").save(tmp_path / split / "a" / f"{i}.tif")
    data = load_split(DataSection(source="folder", root=str(tmp_path)), "train")
    assert data.images.shape == (6, 1, 28, 28)
    assert (np.abs(data.images[:, 0].numpy().astype(int) - expected().astype(int)) <= 1).all()
    assert any("[0, 1]" in n and "3 of 6" in n for n in data.notices)

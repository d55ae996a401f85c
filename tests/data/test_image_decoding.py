"""Decoding for training: modes normalised, load_pixels shape/dtype/determinism, channel and size defaults."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from auditor.data.images import default_image_size, infer_channels, load_pixels, probe_image


def frame_of(paths) -> pd.DataFrame:
    return pd.DataFrame({"filepath": [str(p) for p in paths]})


def test_load_pixels_shape_dtype_order_and_determinism(tmp_path, make_image) -> None:
    paths = [make_image(tmp_path / f"{i}.png", value=i * 60, size=(40, 30), mode="RGB") for i in range(3)]
    samples = frame_of(paths)
    pixels = load_pixels(samples, 16, 3)
    assert pixels.shape == (3, 3, 16, 16)
    assert pixels.dtype == np.uint8
    assert np.array_equal(pixels, load_pixels(samples, 16, 3))
    reversed_pixels = load_pixels(samples.iloc[::-1], 16, 3)
    assert np.array_equal(reversed_pixels, pixels[::-1])
    gray = load_pixels(samples, 8, 1)
    assert gray.shape == (3, 1, 8, 8)


def test_same_size_gray_image_is_loaded_exactly(tmp_path) -> None:
    values = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    path = tmp_path / "g.png"
    Image.fromarray(values, mode="L").save(path)
    assert np.array_equal(load_pixels(frame_of([path]), 8, 1)[0, 0], values)
    rgb = load_pixels(frame_of([path]), 8, 3)[0]
    assert all(np.array_equal(rgb[c], values) for c in range(3))


def test_one_bit_rgba_and_sixteen_bit_are_normalised(tmp_path) -> None:
    one_bit = tmp_path / "b.png"
    Image.fromarray(np.array([[0, 255], [255, 0]], dtype=np.uint8)).convert("1").save(one_bit)
    assert load_pixels(frame_of([one_bit]), 2, 1)[0, 0].tolist() == [[0, 255], [255, 0]]

    rgba = tmp_path / "t.png"
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(rgba)
    assert (load_pixels(frame_of([rgba]), 4, 3) == 255).all()

    sixteen = tmp_path / "s.png"
    Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)).save(sixteen)
    assert Image.open(sixteen).mode.startswith("I")
    assert (load_pixels(frame_of([sixteen]), 4, 1) == 255).all()
    assert probe_image(sixteen).brightness == 1.0


def test_brightness_is_mean_gray_level(tmp_path) -> None:
    white, black = tmp_path / "w.png", tmp_path / "k.jpg"
    Image.new("L", (5, 5), 255).save(white)
    Image.new("RGB", (5, 5), (0, 0, 0)).save(black)
    assert probe_image(white).brightness == 1.0
    assert probe_image(black).brightness == 0.0
    half = tmp_path / "h.png"
    Image.fromarray(np.array([[0, 255]], dtype=np.uint8)).save(half)
    assert probe_image(half).brightness == 0.5


def test_infer_channels() -> None:
    assert infer_channels(pd.DataFrame({"mode": ["1", "L", "I;16"]})) == 1
    assert infer_channels(pd.DataFrame({"mode": ["L", "RGB"]})) == 3
    assert infer_channels(pd.DataFrame({"mode": ["P"]})) == 3


def test_default_image_size() -> None:
    small = pd.DataFrame({"width": [16, 20, 16], "height": [16, 12, 30]})
    assert default_image_size(small, 1) == 16
    tiny = pd.DataFrame({"width": [4, 4], "height": [4, 4]})
    assert default_image_size(tiny, 3) == 8
    big = pd.DataFrame({"width": [105, 105], "height": [105, 105]})
    assert default_image_size(big, 1) == 28
    assert default_image_size(big, 3) == 32

"""Photo decoding for the extraction job: odd formats decode right, bad files become one-line errors."""

import io

import numpy as np
import pytest
from PIL import Image

from vprlib.extract.decode import DecodeError, decode_batch, decode_image, load_image

SIDE = 32


def _png(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **kwargs)
    return buffer.getvalue()


def _jpeg(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, **kwargs)
    return buffer.getvalue()


def _halves() -> np.ndarray:
    """64x64 RGB: left half red, right half blue."""
    array = np.zeros((64, 64, 3), dtype=np.uint8)
    array[:, :32, 0] = 255
    array[:, 32:, 2] = 255
    return array


def test_rgb_png_is_resized_exactly():
    out = decode_image(_png(Image.fromarray(_halves())), SIDE)
    assert out.shape == (SIDE, SIDE, 3) and out.dtype == np.uint8
    assert (out[:, :12, 0] == 255).all() and (out[:, -12:, 2] == 255).all()


def test_grayscale_becomes_three_equal_channels():
    out = decode_image(_png(Image.new("L", (40, 20), 77)), SIDE)
    assert out.shape == (SIDE, SIDE, 3)
    assert (out == 77).all()


def test_rgba_drops_alpha_keeps_colour():
    out = decode_image(_png(Image.new("RGBA", (16, 16), (10, 200, 30, 0))), SIDE)
    assert (out == (10, 200, 30)).all()


def test_palette_png():
    image = Image.fromarray(_halves()).convert("P", palette=Image.ADAPTIVE, colors=4)
    out = decode_image(_png(image), SIDE)
    assert out[5, 2, 0] > 200 and out[5, -2, 2] > 200


def test_16bit_png_is_scaled_not_clipped():
    values = np.full((16, 16), 32768, dtype=np.uint16)  # mid grey in 16 bits
    image = Image.fromarray(values)
    assert image.mode.startswith("I;16")
    out = decode_image(_png(image), SIDE)
    assert abs(int(out[0, 0, 0]) - 128) <= 1


def test_cmyk_jpeg():
    out = decode_image(_jpeg(Image.new("CMYK", (32, 32), (0, 255, 255, 0))), SIDE)  # pure red in CMYK
    assert out[..., 0].mean() > 200 and out[..., 1].mean() < 60 and out[..., 2].mean() < 60


def test_exif_rotation_is_applied():
    wide = Image.fromarray(np.concatenate([np.full((32, 64, 3), 255, np.uint8), np.zeros((32, 64, 3), np.uint8)]))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display: the white top becomes the right side
    out = decode_image(_jpeg(wide, exif=exif.tobytes()), SIDE)
    assert out[:, -8:].mean() > 200 and out[:, :8].mean() < 50


def test_one_pixel_image():
    out = decode_image(_png(Image.new("RGB", (1, 1), (1, 2, 3))), SIDE)
    assert out.shape == (SIDE, SIDE, 3) and (out == (1, 2, 3)).all()


def test_large_jpeg_decodes_through_draft():
    big = Image.new("RGB", (4000, 3000), (0, 128, 255))
    data = _jpeg(big)
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (SIDE, SIDE))
        assert image.size[0] <= 500  # decoded at 1/8 scale: bounded memory
    out = decode_image(data, SIDE, max_pixels=1_000_000)  # the full size would exceed the limit
    assert abs(int(out[..., 2].mean()) - 255) < 3


def test_image_over_pixel_limit_is_refused():
    with pytest.raises(DecodeError, match="too large"):
        decode_image(_png(Image.new("RGB", (300, 300))), SIDE, max_pixels=10_000)


def test_decompression_bomb_is_refused(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL raises beyond twice this at open
    with pytest.raises(DecodeError, match="decompression bomb"):
        decode_image(_png(Image.new("RGB", (100, 100))), SIDE)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty file"),
        (b"this is not an image at all", "not an image"),
        (_jpeg(Image.new("RGB", (64, 64), (9, 9, 9)))[:300], "corrupt or truncated"),
    ],
    ids=["zero-byte", "not-an-image", "truncated-jpeg"],
)
def test_bad_bytes_raise_decode_error(data, message):
    with pytest.raises(DecodeError, match=message):
        decode_image(data, SIDE)


def test_missing_file_names_the_uri(tmp_path):
    with pytest.raises(DecodeError, match=f"missing file: {tmp_path}/nope.png"):
        load_image(str(tmp_path / "nope.png"), SIDE)


def test_decode_batch_keeps_every_row(tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(_png(Image.new("RGB", (8, 8), (5, 6, 7))))
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    uris = np.array([str(good), str(empty), str(tmp_path / "missing.png")], dtype=object)
    batch = {"image_id": np.array(["a", "b", "c"], dtype=object), "uri": uris}
    out = decode_batch(batch, side=SIDE, max_pixels=10**6)
    assert list(out["status"]) == ["ok", "error", "error"]
    assert out["error"][0] == "" and "empty file" in out["error"][1] and "missing file" in out["error"][2]
    assert out["image"].shape == (3, SIDE, SIDE, 3) and (out["image"][0] == (5, 6, 7)).all()
    assert list(out["image_id"]) == ["a", "b", "c"]

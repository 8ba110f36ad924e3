"""Photo decoding for the extraction job: odd formats decode right, bad files become one-line errors."""

import io
import struct
import subprocess
import sys
import threading
import zlib

import numpy as np
import pytest
from PIL import Image

from vprlib.extract.decode import DecodeError, decode_batch, decode_image, decode_memory, load_image

SIDE = 32


def _png(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **kwargs)
    return buffer.getvalue()


def _jpeg(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, **kwargs)
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height 8-bit RGB, with a token IDAT: enough to be refused before decoding."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def _uniform_gray_jpeg(width: int, height: int, value: int) -> bytes:
    """A valid baseline JPEG of any size in a few MB, without holding its pixels: one 8-row strip is encoded with a
    restart marker after every MCU row, so each row's entropy-coded data is identical and is repeated `height / 8`
    times (restart markers cycle RST0..RST7), with the frame height patched."""
    buffer = io.BytesIO()
    Image.new("L", (width, 8), value).save(buffer, "JPEG", quality=95, restart_marker_rows=1)
    strip = buffer.getvalue()
    sos = strip.index(b"\xff\xda")
    scan_start = sos + 2 + int.from_bytes(strip[sos + 2 : sos + 4], "big")
    header, row = strip[:scan_start], strip[scan_start:-2]  # the file ends with EOI
    sof = header.index(b"\xff\xc0")  # SOF0: marker, length, precision, then height
    header = header[: sof + 5] + height.to_bytes(2, "big") + header[sof + 7 :]
    rows = height // 8
    scan = b"".join(row + (bytes([0xFF, 0xD0 + i % 8]) if i < rows - 1 else b"") for i in range(rows))
    return header + scan + b"\xff\xd9"


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


@pytest.mark.parametrize(("value", "expected"), [(128, 0), (200, 1), (255, 1)])
def test_dark_16bit_png_is_scaled_too(value, expected):
    image = Image.fromarray(np.full((16, 16), value, dtype=np.uint16))  # x/257 rounded: 200 -> 1, not 200
    out = decode_image(_png(image), SIDE)
    assert (out == expected).all()


def test_16bit_pgm_opened_as_mode_i_is_scaled():
    data = b"P5\n4 4\n65535\n" + struct.pack(">16H", *([200] * 16))
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "I"
    assert (decode_image(data, SIDE) == 1).all()


def test_32bit_tiff_is_scaled_by_its_type_range():
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16), 2**30, dtype=np.int32)).save(buffer, "TIFF")  # half the int32 range
    out = decode_image(buffer.getvalue(), SIDE)
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


def test_phone_size_jpeg_decodes_at_draft_scale():
    data = _uniform_gray_jpeg(16320, 12240, 100)  # 200 MP: beyond PIL's own 179 MP guard, 2040x1530 at 1/8 scale
    out = decode_image(data, 512)
    assert out.shape == (512, 512, 3) and abs(int(out.mean()) - 100) <= 1


def test_png_over_pixel_limit_is_refused_from_its_header():
    with pytest.raises(DecodeError, match="image too large: 20000x10000 pixels exceeds the limit of 89478485"):
        decode_image(_png_header_only(20000, 10000), SIDE)


def test_progressive_jpeg_is_limited_by_its_full_size():
    data = _jpeg(Image.new("RGB", (400, 300), (0, 128, 255)), progressive=True)
    with pytest.raises(DecodeError, match="progressive JPEG of 400x300 pixels exceeds the limit of 50000"):
        decode_image(data, SIDE, max_pixels=50_000)  # its draft, 50x38, would be within the limit


def test_max_pixels_overrides_pil_guard_in_threads(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL alone would refuse anything over 2000 pixels
    data = _png(Image.new("RGB", (100, 100), (1, 2, 3)))
    results = []

    def decode():
        results.append(decode_image(data, SIDE, max_pixels=20_000))

    threads = [threading.Thread(target=decode) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8 and all((out == (1, 2, 3)).all() for out in results)
    assert Image.MAX_IMAGE_PIXELS == 1000  # restored once the last decode finished
    with pytest.raises(DecodeError, match="too large: 100x100 pixels exceeds the limit of 9999"):
        decode_image(data, SIDE, max_pixels=9999)


# VmHWM, the peak RSS of this process's memory since exec: ru_maxrss would carry the parent's peak over the exec (the
# kernel keeps the larger), which in a pytest process with torch loaded hides the decode's own peak.
_PEAK_RSS = """
import sys
from vprlib.extract.decode import load_image
def peak():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
before = peak()
load_image(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
print(before, peak())
"""


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")
def test_load_image_peak_memory_within_decode_memory(tmp_path):
    """Noise RGBA PNG (incompressible: the largest file for its pixels), decoded in a fresh process."""
    side, width, height = 512, 4500, 4500
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 4), dtype=np.uint8)
    path = tmp_path / "noise.png"
    path.write_bytes(_png(Image.fromarray(pixels, "RGBA"), compress_level=1))
    del pixels
    run = subprocess.run([sys.executable, "-c", _PEAK_RSS, str(path), str(side), str(width * height)],
                         capture_output=True, text=True, timeout=120, check=True)
    before, peak = map(int, run.stdout.split())
    image_bytes = decode_memory(width * height, 1, side) - decode_memory(0, 1, side)
    assert peak - before < image_bytes  # the decode itself, within the per-pixel allowance
    assert peak < decode_memory(width * height, 1, side)  # and the whole process, interpreter included


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

"""Photo decoding for extraction: any file a user has -> RGB uint8 (side, side, 3), or one line naming the fault.

Grayscale, RGBA, palette, 16-bit and CMYK images are converted to 8-bit RGB; EXIF orientation is applied;
JPEGs are decoded at a reduced scale (PIL draft) when far larger than the map, so memory stays bounded;
an image whose decoded size exceeds `max_pixels` (or trips PIL's own decompression-bomb guard) is refused.
Images are resized to side x side (aspect not kept: the maps cover the photo's whole field of view).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vprlib.data.manifest import url_to_fs


class DecodeError(ValueError):
    """A photo that cannot be used; the message names the cause (and the uri, once wrapped by `load_image`)."""


def read_bytes(uri: str) -> bytes:
    """The file's bytes (local or s3://, credentials from the environment)."""
    fs, path = url_to_fs(uri)
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise DecodeError("missing file") from None
    except IsADirectoryError:
        raise DecodeError("is a directory, not a file") from None


def decode_image(data: bytes, side: int, max_pixels: int = 89_478_485) -> np.ndarray:
    """Decode image bytes to RGB uint8 (side, side, 3); raises DecodeError naming the cause."""
    if not data:
        raise DecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return _to_array(image, side, max_pixels)
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"decompression bomb guard: {exc}") from None
    except UnidentifiedImageError:
        raise DecodeError("not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        if isinstance(exc, DecodeError):
            raise
        raise DecodeError(f"corrupt or truncated image: {exc}") from None


def _to_array(image: Image.Image, side: int, max_pixels: int) -> np.ndarray:
    image.draft("RGB", (side, side))  # JPEG only: DCT scaling by 1/2..1/8, never below the requested size
    width, height = image.size
    if width * height > max_pixels:
        raise DecodeError(f"image too large: {width}x{height} pixels exceeds the limit of {max_pixels}")
    image = ImageOps.exif_transpose(image)
    rgb = _to_rgb(image)
    return np.asarray(rgb.resize((side, side), Image.BILINEAR, reducing_gap=3.0), dtype=np.uint8)


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any mode; 16/32-bit grayscale is scaled, not clipped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float64)
        scale = 257.0 if values.max(initial=0) > 255 else 1.0  # 16-bit data: 65535 -> 255
        gray = np.clip(np.rint(values / scale), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if image.mode == "F":
        gray = np.clip(np.rint(np.asarray(image) * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if image.mode in ("P", "PA", "LA"):  # via RGBA so palette transparency is resolved before alpha is dropped
        image = image.convert("RGBA")
    return image if image.mode == "RGB" else image.convert("RGB")


def load_image(uri: str, side: int, max_pixels: int = 89_478_485) -> np.ndarray:
    """Read and decode one photo; a DecodeError's message names the cause and the uri."""
    try:
        return decode_image(read_bytes(uri), side, max_pixels)
    except DecodeError as exc:
        raise DecodeError(f"{exc}: {uri}") from None
    except MemoryError:
        raise DecodeError(f"out of memory decoding: {uri}") from None
    except OSError as exc:  # network / permission errors from the filesystem
        raise DecodeError(f"cannot read ({type(exc).__name__}: {exc}): {uri}") from None


def decode_batch(batch: dict[str, np.ndarray], side: int, max_pixels: int) -> dict:
    """Ray Data task: add `image` (B,side,side,3 uint8), `status` and `error`; a bad photo becomes an error row."""
    n = len(batch["uri"])
    images = np.zeros((n, side, side, 3), dtype=np.uint8)
    status = np.full(n, "ok", dtype=object)
    error = np.full(n, "", dtype=object)
    for i, uri in enumerate(batch["uri"]):
        try:
            images[i] = load_image(str(uri), side, max_pixels)
        except DecodeError as exc:
            status[i], error[i] = "error", str(exc)
        except Exception as exc:  # anything else a storage client raises: still one error row, never a lost row
            status[i], error[i] = "error", f"cannot read ({type(exc).__name__}: {exc}): {uri}"
    return {**batch, "image": images, "status": status, "error": error}

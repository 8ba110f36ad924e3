"""Photo decoding for extraction: any file a user has -> RGB uint8 (side, side, 3), or one line naming the fault.

Grayscale, RGBA, palette, 16-bit and CMYK images are converted to 8-bit RGB; EXIF orientation is applied;
JPEGs are decoded at a reduced scale (PIL draft) when far larger than the map, so memory stays bounded;
an image whose decoded size exceeds `max_pixels` is refused. That limit replaces PIL's own decompression-bomb
guard (a process-wide setting that cannot follow `--max-image-pixels`), and for a JPEG it applies to the size
after draft, i.e. to what is actually decoded into memory.
Images are resized to side x side (aspect not kept: the maps cover the photo's whole field of view); the resize is
done before the conversion to RGB wherever the result is the same, so a full-size image is held once, not twice.
`decode_memory` is the memory a decode task may need at most, for the job's resource request.
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Iterator

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from vprlib.storage import url_to_fs

_ORIENTATION = {  # EXIF orientation -> the transposition that displays the photo upright (as ImageOps.exif_transpose)
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


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
    return _decode(_as_file(data), side, max_pixels)


def _as_file(data: bytes) -> io.BytesIO:
    """The bytes as a file for PIL; an empty file is refused here, before PIL calls it unrecognised.

    BytesIO shares `data` rather than copying it, so when the caller keeps no reference of its own (`load_image`),
    closing the buffer in `_decode` frees the compressed bytes before the decoded image is converted.
    """
    if not data:
        raise DecodeError("empty file (0 bytes)")
    return io.BytesIO(data)


def _decode(buffer: io.BytesIO, side: int, max_pixels: int) -> np.ndarray:
    """Decode the file in `buffer` (closed once its pixels are read) to RGB uint8 (side, side, 3)."""
    try:
        with _pil_guard_off(), Image.open(buffer) as opened:
            image, transpose = _load(opened, side, max_pixels)
            buffer.close()  # the compressed bytes are no longer needed: free them before the conversion
            rgb = _resize_to_rgb(image, side)
            return np.asarray(rgb if transpose is None else rgb.transpose(transpose), dtype=np.uint8)
    except UnidentifiedImageError:
        raise DecodeError("not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        if isinstance(exc, DecodeError):
            raise
        raise DecodeError(f"corrupt or truncated image: {exc}") from None


_guard_lock = threading.Lock()
_guard_users = 0  # decodes now running in this process, all threads together
_guard_saved: int | None = None  # Image.MAX_IMAGE_PIXELS as it was before the first of them started


@contextlib.contextmanager
def _pil_guard_off() -> Iterator[None]:
    """Switch PIL's decompression-bomb guard off while decodes run, so that `max_pixels` alone decides.

    PIL checks every image it opens against the module global `Image.MAX_IMAGE_PIXELS` (a fixed ~179 MP), on the
    header size; `_load` applies `max_pixels` instead, to the size actually decoded (a 200 MP JPEG's 1/8 draft is
    small). The global is shared by all threads (Ray may run decode tasks in threads), so it is not set per call: the
    first decode to start switches it off and the last to finish restores it, under a lock. (Other code opening
    images in the same process meanwhile runs unguarded; a decode worker has none.)
    """
    global _guard_users, _guard_saved
    with _guard_lock:
        if _guard_users == 0:
            _guard_saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _guard_users += 1
    try:
        yield
    finally:
        with _guard_lock:
            _guard_users -= 1
            if _guard_users == 0:
                Image.MAX_IMAGE_PIXELS = _guard_saved


def _load(image: Image.Image, side: int, max_pixels: int) -> tuple[Image.Image, Image.Transpose | None]:
    """Decode the pixels of an opened image, at JPEG draft scale, after checking the size against `max_pixels`;
    also returns the transposition its EXIF orientation asks for (applied by `_decode` to the small result).

    The check runs on the header, before any pixel is decoded. A baseline JPEG is checked at its draft size
    (DCT scaling by 1/2..1/8, never below side x side): libjpeg decodes it row by row, so memory follows the reduced
    size. A progressive JPEG is checked at its full size, because libjpeg keeps every DCT coefficient of the whole
    image (about 3 bytes per full-size pixel, measured) whatever the output scale.
    """
    full_width, full_height = image.size
    image.draft("RGB", (side, side))  # JPEG only
    width, height = image.size
    if width * height > max_pixels:
        raise DecodeError(f"image too large: {width}x{height} pixels exceeds the limit of {max_pixels}")
    if image.info.get("progressive") and full_width * full_height > max_pixels:
        raise DecodeError(
            f"image too large: progressive JPEG of {full_width}x{full_height} pixels exceeds the limit of {max_pixels}"
        )
    image.load()
    return image, _ORIENTATION.get(image.getexif().get(ExifTags.Base.Orientation, 1))


def _resize_to_rgb(image: Image.Image, side: int) -> Image.Image:
    """side x side 8-bit RGB from any mode; 16/32-bit grayscale is scaled by its type's range, not clipped.

    Peak memory is the decoded image plus one full-size copy at most: each mode is resized in the narrowest form
    that gives the same result as converting first (gray, RGB, CMYK as decoded; RGBA one colour band at a time,
    since PIL resizes RGBA with premultiplied alpha, which would blacken transparent pixels whose colour the map
    keeps), and every full-size intermediate is closed as soon as the next one exists.
    """
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        range_max = 2.0 ** _integer_bits(image) - 1.0  # 65535 for 16 bits: x/257, rounded
        if image.mode != "I":  # PIL resizes 32-bit integers, not 16-bit ones
            image = _replace(image, image.convert("I"))
        values = np.asarray(_resize(image, side), dtype=np.float64)
        return Image.fromarray(np.clip(np.rint(values * (255.0 / range_max)), 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode == "F":  # float data: 0..1
        values = np.asarray(_resize(image, side), dtype=np.float64)
        return Image.fromarray(np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode == "1":  # bilevel resizes only by nearest neighbour
        image = _replace(image, image.convert("L"))
    elif image.mode == "LA":
        image = _replace(image, image.getchannel("L"))
    elif image.mode in ("P", "PA"):  # via RGBA so palette transparency is resolved before alpha is dropped
        image = _replace(image, image.convert("RGBA"))
    if image.mode in ("RGBA", "RGBX"):
        return Image.merge("RGB", [_resize(image.getchannel(band), side) for band in "RGB"])
    if image.mode not in ("L", "RGB", "CMYK"):  # YCbCr, LAB, HSV...: convert at full size, rare enough
        image = _replace(image, image.convert("RGB"))
    small = _resize(image, side)  # CMYK -> RGB multiplies bands per pixel: resizing first differs only slightly
    return small if small.mode == "RGB" else small.convert("RGB")


def _integer_bits(image: Image.Image) -> int:
    """Bits of an integer grayscale image's value range, for scaling it to 8 bits.

    16-bit modes are 16 bits; PIL opens 16-bit PNG/PGM grayscale as 'I;16' or 'I' (PGM scaled to 0..65535). A TIFF
    in mode 'I' says its bits per sample (16 for signed 16-bit, 32); any other 'I' is taken as the full range of
    PIL's signed 32-bit type. The image's own maximum is never used: a dark image must stay dark.
    (16-bit RGB, RGBA and gray+alpha PNGs never get here: PIL keeps their high byte on load, as 8-bit modes.)
    """
    if image.mode.startswith("I;16") or image.format in ("PNG", "PPM"):
        return 16
    bits = getattr(image, "tag_v2", {}).get(258)  # TIFF BitsPerSample: one value per band
    if isinstance(bits, tuple):
        bits = bits[0] if bits else None
    return min(int(bits), 31) if isinstance(bits, int) and bits > 0 else 31


def _resize(image: Image.Image, side: int) -> Image.Image:
    """Bilinear resize to side x side; reducing_gap box-reduces a much larger image first (fast, and antialiased)."""
    return image.resize((side, side), Image.BILINEAR, reducing_gap=3.0)


def _replace(old: Image.Image, new: Image.Image) -> Image.Image:
    """`new`, after freeing `old`'s pixels (close() drops the core image at once, even while `old` is referenced)."""
    old.close()
    return new


DECODE_BYTES_PER_PIXEL = 10  # measured worst case 8.1 (see decode_memory), plus a margin
WORKER_BYTES = 256 << 20  # measured 168 MiB for Python + numpy + PIL + ray.data, plus Ray's own worker runtime


def decode_memory(max_pixels: int, batch_size: int, side: int) -> int:
    """Bytes a decode task may need at most: one image at the pixel limit, the batch's output, the worker itself.

    `load_image` peaks at about 8.1 bytes per decoded pixel on the worst files (incompressible RGBA and 16-bit PNGs,
    CMYK JPEGs; measured per format in benchmarks/RESULTS.md, "Decode memory"), compressed file included;
    DECODE_BYTES_PER_PIXEL = 10 leaves a quarter more. The batch's output, `batch_size` RGB maps, is counted twice
    (the array, then its copy into a Ray block).

        decode_memory = 10 * max_pixels + 2 * batch_size * 3 * side**2 + 256 MiB
    """
    return DECODE_BYTES_PER_PIXEL * max_pixels + 2 * batch_size * 3 * side**2 + WORKER_BYTES


def load_image(uri: str, side: int, max_pixels: int = 89_478_485) -> np.ndarray:
    """Read and decode one photo; a DecodeError's message names the cause and the uri."""
    try:
        return _decode(_as_file(read_bytes(uri)), side, max_pixels)  # no name holds the bytes: freed once decoded
    except DecodeError as exc:
        raise DecodeError(f"{exc}: {uri}") from None
    except MemoryError:
        raise DecodeError(f"out of memory decoding: {uri}") from None
    except OSError as exc:  # network / permission errors from the filesystem
        raise DecodeError(f"cannot read ({type(exc).__name__}: {exc}): {uri}") from None


def fit_image(image: Image.Image, side: int) -> np.ndarray:
    """An image already decoded (a video's frame) as `load_image` returns a photo: RGB uint8 (side, side, 3)."""
    return np.asarray(_resize_to_rgb(image.copy(), side), dtype=np.uint8)


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

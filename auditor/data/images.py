"""Image probing and decoding with PIL: per-file properties at ingest, and deterministic pixel arrays for training.

Decoding problems never raise to the caller of `probe_images`; they come back as error records. No file writes here.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import stat
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from auditor.errors import one_line
from auditor.schema import BRIGHTNESS, CONTENT_HASH, FILE_BYTES, FILEPATH, HEIGHT, MODE, WIDTH

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

# Largest image (in pixels) we agree to decode. Checked from the header before decoding, so a decompression
# bomb is refused without touching PIL's process-wide Image.MAX_IMAGE_PIXELS (other libraries share it).
MAX_IMAGE_PIXELS = 64_000_000

# Largest file we agree to read into memory: well above an uncompressed 64-Mpixel RGBA image, far below what a
# sparse or hostile multi-GB file would cost (read_bytes would allocate all of it before PIL sees a byte).
MAX_FILE_BYTES = 512 * 1024**2

# Why a file cannot be read, by errno, with the fix to offer; anything else falls back to the OS's own words.
_OS_ERROR_HINTS: dict[int, str] = {
    errno.EACCES: "permission denied; make it readable (chmod a+r) or remove it",
    errno.EPERM: "permission denied; make it readable (chmod a+r) or remove it",
    errno.ELOOP: "symbolic link loop; point the link at a real file or remove it",
    errno.EISDIR: "it is a folder, not a file; remove its entry from the manifest",
}

GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})

# Exceptions PIL raises on truncated, corrupt or hostile files (it is not consistent about which).
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    struct.error,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


class ImageReadError(Exception):
    """A single image cannot be read; the message is one human line naming the problem and the fix."""


@dataclass(frozen=True)
class ImageProperties:
    """What ingest records about one readable image."""

    width: int
    height: int
    mode: str
    file_bytes: int
    content_hash: str
    brightness: float


def is_image_file(path: Path) -> bool:
    """True for a visible file with an image extension (case-insensitive)."""
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def _open_checked(data: bytes, path: Path) -> Image.Image:
    """Open `data` as an image after refusing oversized headers; decode the first frame fully."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise ImageReadError(
                f"{path}: image is {image.width}x{image.height} pixels, over the {MAX_IMAGE_PIXELS:,}-pixel "
                "decompression-bomb limit; downscale it or remove it from the dataset"
            )
        image.seek(0)
        image.load()
    return image


def _read_regular_file(path: Path) -> bytes:
    """The bytes of `path` if it is a regular file of at most MAX_FILE_BYTES; ImageReadError otherwise.

    Checked with stat first: reading a FIFO would block forever and a device or sparse file could be endless.
    """
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file (a pipe, socket or device)"
            raise ImageReadError(f"{path}: {kind}; remove it from the data folder or its entry from the manifest")
        if info.st_size > MAX_FILE_BYTES:
            raise ImageReadError(
                f"{path}: file is {info.st_size:,} bytes, over the {MAX_FILE_BYTES:,}-byte limit for one image; "
                "downscale or re-encode it, or remove it from the dataset"
            )
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageReadError(
            f"{path}: file not found (or a broken link); restore it or remove its entry from the dataset"
        ) from None
    except OSError as exc:
        hint = _OS_ERROR_HINTS.get(exc.errno or 0, f"{exc.strerror or exc}; check the file and its permissions")
        raise ImageReadError(f"{path}: cannot read file ({hint})") from None


def read_image(path: Path) -> tuple[Image.Image, bytes]:
    """Read and fully decode `path`; raise ImageReadError with a one-line reason and fix on any problem."""
    data = _read_regular_file(path)
    if not data:
        raise ImageReadError(f"{path}: file is empty (0 bytes); re-export the image or delete it")
    try:
        image = _open_checked(data, path)
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageReadError(
            f"{path}: image exceeds PIL's decompression-bomb limit; downscale it or remove it from the dataset"
        ) from None
    except _DECODE_ERRORS as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageReadError(
            f"{path}: not a readable image ({reason}); re-export it as PNG/JPEG or delete it"
        ) from None
    return image, data


def to_standard_mode(image: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL image to 8-bit "L" (channels=1) or "RGB" (channels=3).

    1-bit becomes L; transparency is composited on white; 16-bit integers are scaled by 1/257; float images
    in [0, 1] are scaled to [0, 255], other floats clipped; CMYK/YCbCr/LAB/HSV go through RGB.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if mode.startswith("I;16") or (mode == "I" and values.size and values.max() > 255):
            values = values / 257.0
        elif mode == "F" and values.size and values.max() <= 1.0:
            values = values * 255.0
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    elif mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba).convert("RGB")
    elif mode == "1":
        image = image.convert("L")
    target = "L" if channels == 1 else "RGB"
    if image.mode != target:
        image = image.convert(target)
    return image


def compute_properties(image: Image.Image, data: bytes) -> ImageProperties:
    """Size, mode, byte count, sha256 of the bytes and mean gray level (0..1) of a decoded image."""
    gray = np.asarray(to_standard_mode(image, 1), dtype=np.float64)
    return ImageProperties(
        width=int(image.width),
        height=int(image.height),
        mode=str(image.mode),
        file_bytes=len(data),
        content_hash=hashlib.sha256(data).hexdigest(),
        brightness=float(gray.mean() / 255.0) if gray.size else 0.0,
    )


def probe_image(path: Path) -> ImageProperties:
    """Decode `path` and return its properties; raise ImageReadError when it cannot be read."""
    image, data = read_image(path)
    try:
        return compute_properties(image, data)
    except _DECODE_ERRORS as exc:
        raise ImageReadError(f"{path}: image decodes but cannot be converted ({exc}); re-export it as PNG") from None
    finally:
        image.close()


def probe_images(filepaths: list[str]) -> tuple[pd.DataFrame, dict[str, str]]:
    """Probe every file; return (properties table indexed like `filepaths`, {filepath: error line}).

    The table has columns filepath, width, height, mode, file_bytes, content_hash, brightness for readable files.
    """
    rows: list[dict[str, object]] = []
    failures: dict[str, str] = {}
    for filepath in filepaths:
        try:
            props = probe_image(Path(filepath))
        except ImageReadError as exc:
            failures[filepath] = one_line(str(exc))  # the errors table promises one line per file
            logger.debug("unreadable image: %s", exc)
            continue
        rows.append(
            {
                FILEPATH: filepath,
                WIDTH: props.width,
                HEIGHT: props.height,
                MODE: props.mode,
                FILE_BYTES: props.file_bytes,
                CONTENT_HASH: props.content_hash,
                BRIGHTNESS: props.brightness,
            }
        )
    columns = [FILEPATH, WIDTH, HEIGHT, MODE, FILE_BYTES, CONTENT_HASH, BRIGHTNESS]
    table = pd.DataFrame(rows, columns=columns)
    table = table.astype({WIDTH: "int64", HEIGHT: "int64", MODE: "object", FILE_BYTES: "int64", BRIGHTNESS: "float64"})
    return table, failures


def infer_channels(samples: pd.DataFrame) -> int:
    """1 if every image's PIL mode is grayscale-like (1, L, LA, I, I;16, F), else 3 (palette images count as 3)."""
    modes = samples[MODE].astype(str)
    if len(modes) and modes.isin(GRAYSCALE_MODES).all():
        return 1
    return 3


def default_image_size(samples: pd.DataFrame, channels: int) -> int:
    """Proxy input size: the median of min(width, height) if it is <= 32 (at least 8), else 28 for grayscale and
    32 for colour.

    Larger inputs are not worth it for a proxy model under a CPU budget: 28/32 px is what Conv-4 and small
    ResNets are sized for (Omniglot 105 px -> 28, mini-ImageNet 84 px -> 32).
    """
    if len(samples) == 0:
        return 28 if channels == 1 else 32
    median = float(np.median(np.minimum(samples[WIDTH].to_numpy(), samples[HEIGHT].to_numpy())))
    if median <= 32:
        return max(8, int(median))
    return 28 if channels == 1 else 32


def load_pixels(samples: pd.DataFrame, size: int, channels: int) -> np.ndarray:
    """Decode every sample's file into a uint8 array [N, channels, size, size], in `samples` row order.

    Images are converted with `to_standard_mode` and resized (aspect ratio not kept) with bilinear
    filtering after an integer box reduction for large downscales; the result is deterministic.
    Raises ImageReadError if a file that passed ingest can no longer be read.
    """
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    out = np.empty((len(samples), channels, size, size), dtype=np.uint8)
    for index, filepath in enumerate(samples[FILEPATH].astype(str)):
        image, _ = read_image(Path(filepath))
        try:
            standard = to_standard_mode(image, channels)
            if standard.size != (size, size):
                standard = standard.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
            array = np.asarray(standard, dtype=np.uint8)
        finally:
            image.close()
        out[index] = array[None, :, :] if channels == 1 else array.transpose(2, 0, 1)
    return out

"""Turning one source image into one prepared image: decode, convert the mode, resize.

This module runs inside the decoding worker processes, so it imports only numpy and PIL.
`decode_batch` never raises for a bad image: it reports the reason, and the ingest stage decides
whether that quarantines the file or stops the run.
"""

from __future__ import annotations

import hashlib
import io
import signal
import warnings
from typing import Any

import numpy as np
from PIL import Image, ImageOps

# We check the pixel count ourselves (data.max_image_pixels) before anything is decoded.
Image.MAX_IMAGE_PIXELS = None

GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_SIXTEEN_BIT = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


def worker_init() -> None:
    """A decoding worker starts here. Where workers are forked they would inherit the parent's signal
    handlers (Prefect's raise on SIGTERM): restore the default, and leave Ctrl-C to the parent, which
    stops the pool."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class BadImage(Exception):
    """One source image that cannot be used; the message is the reason."""


def to_channels(im: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL mode to L (channels=1) or RGB (channels=3), the same way every time.

    Transparency is composited over white; 16- and 32-bit integer images are scaled from
    0..65535 to 0..255; float images are clipped to 0..255; CMYK goes through PIL's conversion;
    RGB to L uses the ITU-R 601-2 luma transform.
    """
    mode = im.mode
    if mode in _SIXTEEN_BIT:
        a = np.asarray(im, dtype=np.int64)
        a = (np.clip(a, 0, 65535) * 255 + 32767) // 65535
        im = Image.fromarray(a.astype(np.uint8), "L")
    elif mode == "F":
        a = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(np.rint(np.nan_to_num(a)), 0, 255).astype(np.uint8), "L")
    elif mode == "P" and "transparency" in im.info or mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba).convert("RGB")
    want = "L" if channels == 1 else "RGB"
    if im.mode != want:
        try:
            im = im.convert(want)
        except (ValueError, OSError) as exc:
            raise BadImage(f"unsupported image mode {mode} ({exc})") from None
    return im


def _read(payload: Any) -> bytes | None:
    if isinstance(payload, np.ndarray):
        return None
    if isinstance(payload, str):
        try:
            with open(payload, "rb") as fh:
                return fh.read()
        except OSError as exc:
            raise BadImage(f"cannot read file ({exc.strerror or exc})") from None
    return payload


_SIGNATURES = [(b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
               (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF")]


def _sniff(data: bytes) -> str | None:
    """The image format a file claims by its first bytes, for a better message when PIL gives up."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in _SIGNATURES if data.startswith(magic)), None)


def _open(payload: Any, data: bytes | None) -> Image.Image:
    if data is None:
        return Image.fromarray(payload)
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        return Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:
        kind = _sniff(data)
        if kind:
            raise BadImage(f"corrupt or truncated {kind} image (unreadable header, {len(data)} bytes)") from None
        raise BadImage("not an image (format not recognised)") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for broken headers
        raise BadImage(f"corrupt image header ({type(exc).__name__}: {exc})") from None


def decode_one(payload: Any, size: int, channels: int, max_pixels: int) -> tuple[np.ndarray, dict]:
    """Payload (encoded bytes, a file path, or a decoded HxW / HxWxC uint8 array) -> (S, S, C) uint8."""
    data = _read(payload)
    raw = data if data is not None else np.ascontiguousarray(payload).tobytes()
    info = {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    try:
        image = _decode(payload, data, size, channels, max_pixels, info)
    except BadImage as exc:
        exc.info = info
        raise
    return image, info


def _decode(payload: Any, data: bytes | None, size: int, channels: int, max_pixels: int, info: dict) -> np.ndarray:
    im = _open(payload, data)
    width, height = im.size
    info.update(width=width, height=height, mode=im.mode, format=im.format or "array")
    if width * height > max_pixels:
        raise BadImage(
            f"image of {width}x{height} pixels exceeds data.max_image_pixels={max_pixels} (decompression bomb?)"
        )
    if width == 0 or height == 0:
        raise BadImage("image has no pixels")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if im.format == "JPEG" and min(width, height) > 2 * size:
                im.draft("RGB" if channels == 3 else "L", (size, size))
            im.load()
            if data is not None and im.format in ("JPEG", "TIFF", "WEBP", "PNG"):
                orientation = im.getexif().get(0x0112, 1)
                if orientation != 1:
                    im = ImageOps.exif_transpose(im)
    except Exception as exc:  # noqa: BLE001
        raise BadImage(f"corrupt or truncated image ({exc})") from None
    return conform(im, size, channels)


def conform(im: Image.Image, size: int, channels: int) -> np.ndarray:
    """A decoded image as the models see it: `channels` (to_channels), resized to size x size with PIL's
    bicubic filter (antialiased when shrinking), (S, S, C) uint8. Ingest and the served model both use
    this, so a model answers a raw image as it was trained on it."""
    im = to_channels(im, channels)
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BICUBIC)
    out = np.asarray(im, dtype=np.uint8)
    if out.ndim == 2:
        out = out[:, :, None]
    return out


def decode_batch(payloads: list[Any], size: int, channels: int, max_pixels: int) -> tuple[np.ndarray, list[dict]]:
    """Decode a batch; returns the good images stacked (k, S, S, C) and one info dict per payload.

    Each info has "ok" and, when not ok, "reason"; good images appear in payload order.
    """
    images: list[np.ndarray] = []
    infos: list[dict] = []
    for payload in payloads:
        try:
            image, info = decode_one(payload, size, channels, max_pixels)
        except BadImage as exc:
            infos.append({"ok": False, "reason": str(exc), **getattr(exc, "info", {})})
            continue
        except MemoryError:
            infos.append({"ok": False, "reason": "image too large to decode (out of memory)"})
            continue
        images.append(image)
        infos.append({"ok": True, **info})
    stacked = np.stack(images) if images else np.zeros((0, size, size, channels), np.uint8)
    return stacked, infos

"""Decoding an image file, and the one resize rule that ``wbc prepare --size`` writes to disk and the loaders
apply to full-size files, so that both give the network the same pixels."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from wbclib.data import transforms


def open_image(path: Path, draft_size: int | None = None, mode: str = "RGB") -> Image.Image:
    """Decode an image to RGB (or 'L'), converting grayscale, RGBA, palette and 16-bit images.

    With ``draft_size`` a JPEG is decoded directly at the smallest DCT scale whose shorter side is still
    >= draft_size (a cheap, high-quality downscale; the exact resize follows in :func:`resize_shorter`).
    """
    return _decode(path, draft_size, mode)[0]


def _decode(path: Path, draft_size: int | None, mode: str) -> tuple[Image.Image, tuple[int, int]]:
    """:func:`open_image`, and the image's size in the file (before any reduced-scale decoding)."""
    img = Image.open(path)
    full = img.size
    if draft_size and img.format == "JPEG":
        w, h = img.size
        ratio = min(w, h) / draft_size
        img.draft("RGB" if mode == "RGB" and img.mode != "L" else img.mode, (int(w / ratio), int(h / ratio)))
    img.load()
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.uint32)
        img = Image.fromarray((arr >> 8 if arr.max() > 255 else arr).astype(np.uint8), "L")
    if mode == "RGB" and img.mode in ("RGBA", "LA", "P", "PA"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return (img.convert(mode) if img.mode != mode else img), full


# -- the one resize rule: `wbc prepare --size` writes it to disk, the loaders apply it to full-size files ------

#: JPEG quality that ``wbc prepare`` writes its images at unless told otherwise (``--quality``).
PREPARED_QUALITY = 90


def target_size(size: tuple[int, int], short: int | None) -> tuple[int, int]:
    """(width, height) of an image of ``size`` once its shorter side is ``short`` (the longer side rounded to
    the nearest pixel); ``size`` itself when ``short`` is None."""
    w, h = size
    if short is None:
        return w, h
    if w <= h:
        return short, max(1, int(h * short / w + 0.5))
    return max(1, int(w * short / h + 0.5)), short


def resize_shorter(img: Image.Image, full: tuple[int, int], short: int | None) -> Image.Image:
    """Resize ``img`` to :func:`target_size` of ``full``, its size before any reduced-scale (draft) decoding,
    with PIL's Lanczos filter. Unchanged when it already has that size."""
    size = target_size(full, short)
    return img if img.size == size else img.resize(size, Image.LANCZOS)


def load_image(path: Path, resize: int | None = None, quality: int | None = PREPARED_QUALITY) -> Image.Image:
    """Decode an image to RGB the way ``wbc prepare --size resize --quality quality`` stores it.

    Without ``resize``, the image as it is. With it, an image whose shorter side is not ``resize`` is decoded
    at the smallest JPEG scale still at least that large, resized by :func:`resize_shorter`, and passed through
    a JPEG of ``quality`` (None: not), so that a full-size file reaches the network with the very pixels its
    prepared copy has. An image already at that scale (a prepared one) is left as it is.
    """
    img, full = _decode(path, resize, "RGB")
    if resize is None or target_size(full, resize) == full:
        return img
    img = resize_shorter(img, full, resize)
    if quality is None:
        return img
    return Image.open(io.BytesIO(transforms.jpeg_bytes(img, quality))).convert("RGB")


def check_image(path: Path) -> str | None:
    """Why ``path`` is not a usable image, or None. Decodes at a reduced scale to catch truncation."""
    try:
        if path.stat().st_size == 0:
            return "zero-byte file: empty"
        with Image.open(path) as img:
            if img.format == "JPEG":
                img.draft(img.mode, (max(1, img.size[0] // 8), max(1, img.size[1] // 8)))
            img.load()
    except Exception as exc:  # PIL raises many types for broken files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"unreadable or truncated image: {reason}"
    return None


def image_size(path: Path) -> tuple[int, int] | None:
    try:
        with Image.open(path) as img:
            return img.size
    except Exception:
        return None

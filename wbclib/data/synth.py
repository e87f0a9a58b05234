"""Procedural synthetic stand-in for the three course datasets (WBC, CAM16, pRCC).

The real course data (Raabin-WBC crops, CAMELYON16 patches, pRCC tiles) is not redistributable, so the
study can run on a synthetic copy written in exactly the same on-disk layout (:mod:`wbclib.data.layout`; the
course's own counts are in the book's data page)::

    <out>/WBC_{1,10,50,100}/train/data/<Class>/<name>.jpg     575 x 575 RGB
    <out>/WBC_{1,10,50,100}/train/mask/<Class>/<name>.jpg     same name as the image, white = cell
    <out>/WBC_100/val/data/<Class>/<name>.jpg                  the one validation set
    <out>/CAM16_100cls_10mask/{train,val,test}/data/{normal,tumor}/<name>.jpg   384 x 384 RGB
    <out>/CAM16_100cls_10mask/train/mask/{normal,tumor}/<name>.jpg
    <out>/pRCC_nolabel/batch_0{1,2}/<x>_<y>_2000.jpg           unlabeled tiles
    <out>/SYNTHETIC.json                                       marker, written last

Counts follow the course table times ``scale``: per class ``max(1, round(n * scale))`` for the WBC_100
training set, the validation set and the CAM16 splits. The subsets are nested (WBC_1 c WBC_10 c WBC_50 c
WBC_100, same files and bytes) with ``max(1, floor(n100 * pct / 100))`` images per class, and each level
has ``floor(n / 10)`` masks per class (nested too). Floors, not rounding, because that is what reproduces
the course table exactly at ``scale=1`` (e.g. WBC_10 Basophil 17 of 176 with 1 mask, and WBC_1 without
masks for Basophil, Eosinophil and Monocyte). CAM16 has ``max(1, floor(n / 10))`` training masks per class.
pRCC has ``max(2, round(1419 * scale))`` tiles of side ``clamp(round(2000 * scale), 576, 2000)``.
``planned_counts(scale)`` returns all of these without writing anything.

Every image is drawn from its own ``numpy.random.Generator`` seeded with ``(seed, dataset, class, index)``,
so the output is byte-identical across runs and independent of the order (or parallelism) of generation.

What the images look like:

* WBC: pale pink background with a lighting gradient, 15-40 red-cell discs with a light centre, and one
  centred leukocyte (sometimes a second, smaller one) whose shape and colours depend on the class:
  neutrophil (3-5 lobes in a curved chain, pale lilac cytoplasm), eosinophil (bilobed nucleus, orange-red
  granules), basophil (dense dark blue-purple granules hiding the nucleus), lymphocyte (large round dark
  nucleus, thin pale-blue rim), monocyte (large, kidney-shaped lighter nucleus, grey-blue cytoplasm,
  vacuoles). Stain, brightness, contrast, size, rotation, blur and noise vary per image.
* CAM16: H&E-like pink stroma with small scattered nuclei; tumor patches hold one or two irregular regions
  of larger, darker, denser, pleomorphic nuclei, which the (training) mask marks. Normal masks are black.
* pRCC: large H&E-like tiles with papillae / tubules lined by purple nuclei.
"""

from __future__ import annotations

import colorsys
import contextlib
import io
import json
import math
import multiprocessing
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from wbclib import CAM16_CLASSES, WBC_CLASSES, WBC_SUBSETS, WbcError
from wbclib.data import layout

__all__ = [
    "MARKER",
    "VERSION",
    "generate",
    "planned_counts",
    "read_marker",
    "render_cam16",
    "render_prcc",
    "render_wbc",
]

VERSION = 1
GENERATOR = "wbclib.synth"
MARKER = "SYNTHETIC.json"
SENTINEL = ".synth-incomplete"

#: Course-table counts (WBC_100 train and the shared validation set), per class in WBC_CLASSES order.
WBC_TRAIN_COUNTS = dict(zip(WBC_CLASSES, (176, 618, 2015, 466, 5172)))
WBC_VAL_COUNTS = dict(zip(WBC_CLASSES, (36, 126, 412, 95, 1059)))
#: The folder of each nested WBC subset, smallest first (each subset is the percentage of WBC_100 it names).
SUBSET_FOLDERS = tuple(layout.wbc_folder(n) for n in WBC_SUBSETS)
CAM16_DIR = layout.CAM16_FOLDER
CAM16_COUNTS = {"train": (379, 378), "val": (54, 54), "test": (108, 108)}
PRCC_DIR = layout.PRCC_FOLDER
PRCC_COUNT = 1419
PRCC_FOLDERS = ("batch_01", "batch_02")

WBC_SIZE = 575
CAM16_SIZE = 384
PRCC_SIDE = 2000
PRCC_MIN_SIDE = 576
JPEG_QUALITY = 90

_KNOWN_ENTRIES = {*SUBSET_FOLDERS} | {CAM16_DIR, PRCC_DIR, MARKER, MARKER + ".tmp", SENTINEL}
# Dataset codes used in the per-image seeds.
_DS_WBC_TRAIN, _DS_WBC_VAL, _DS_CAM16, _DS_PRCC = 1, 2, 10, 20
_TWO_PI = 2.0 * math.pi


# --------------------------------------------------------------------------------------------- counts
def planned_counts(scale: float = 1.0, cam16_scale: float | None = None) -> dict:
    """The per dataset / split / class counts that ``generate(out, scale, cam16_scale=...)`` writes
    (CAM16 follows ``cam16_scale`` when given, else ``scale``).

    ``counts[dataset][split][class] == {"data": n_images, "mask": n_masks}``, except
    ``counts["pRCC_nolabel"] == {"data": n_tiles, "side": tile_side_px}``.
    """
    scale = _check_scale(scale)
    cam_scale = scale if cam16_scale is None else _check_scale(cam16_scale)
    counts: dict = {}
    n100 = {c: max(1, round(n * scale)) for c, n in WBC_TRAIN_COUNTS.items()}
    for name, pct in zip(SUBSET_FOLDERS, WBC_SUBSETS):
        train = {}
        for c in WBC_CLASSES:
            n = n100[c] if pct == 100 else max(1, n100[c] * pct // 100)
            train[c] = {"data": n, "mask": n // 10}
        counts[name] = {"train": train}
    counts[layout.wbc_folder(100)]["val"] = {
        c: {"data": max(1, round(n * scale)), "mask": 0} for c, n in WBC_VAL_COUNTS.items()
    }
    cam: dict = {}
    for split, ns in CAM16_COUNTS.items():
        cam[split] = {}
        for c, n in zip(CAM16_CLASSES, ns):
            k = max(1, round(n * cam_scale))
            cam[split][c] = {"data": k, "mask": max(1, k // 10) if split == "train" else 0}
    counts[CAM16_DIR] = cam
    counts[PRCC_DIR] = {
        "data": max(2, round(PRCC_COUNT * scale)),
        "side": min(PRCC_SIDE, max(PRCC_MIN_SIDE, round(PRCC_SIDE * scale))),
    }
    return counts


def _check_scale(scale) -> float:
    try:
        s = float(scale)
    except (TypeError, ValueError):
        raise WbcError(f"synthetic data: scale must be a number, got {scale!r}") from None
    if not (math.isfinite(s) and s > 0):
        raise WbcError(f"synthetic data: scale must be a positive number, got {scale!r}")
    return s


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise WbcError(f"synthetic data: seed must be a non-negative integer, got {seed!r}")
    return int(seed)


# ------------------------------------------------------------------------------------ drawing helpers
def _stain(
    rng: np.random.Generator, hue: float = 0.04, sat=(0.72, 1.3), val=(0.93, 1.05), spread: float = 6.0
):
    """A per-image stain: returns a function mapping a nominal RGB colour to a jittered float32 RGB."""
    dh = rng.uniform(-hue, hue)
    ds = rng.uniform(*sat)
    dv = rng.uniform(*val)

    def colour(rgb) -> np.ndarray:
        r, g, b = np.clip(np.asarray(rgb, float) + rng.normal(0.0, spread, 3), 0, 255) / 255.0
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        out = colorsys.hsv_to_rgb((h + dh) % 1.0, min(1.0, s * ds), min(1.0, v * dv))
        return np.asarray(out, np.float32) * 255.0

    return colour


def _smooth_noise(rng: np.random.Generator, h: int, w: int, gy: int, gx: int | None = None) -> np.ndarray:
    """Smooth isotropic noise, mean 0.5 and sd about 0.22, with about gy x gx blobs over an h x w field.

    White noise on a grid three times as fine, blurred with a small binomial kernel, then upsampled bicubically
    (plain bicubic value noise shows axis-aligned blocks).
    """
    gx = gy if gx is None else gx
    g = rng.random((3 * max(1, gy) + 6, 3 * max(1, gx) + 6), dtype=np.float32)
    for _ in range(3):
        g = np.concatenate([g[:1], (g[:-2] + 2 * g[1:-1] + g[2:]) * 0.25, g[-1:]], 0)
        g = np.concatenate([g[:, :1], (g[:, :-2] + 2 * g[:, 1:-1] + g[:, 2:]) * 0.25, g[:, -1:]], 1)
    g = g[3:-3, 3:-3]
    g = (g - g.mean()) * (0.22 / (g.std() + 1e-6)) + 0.5
    return np.asarray(Image.fromarray(g).resize((w, h), Image.BICUBIC), dtype=np.float32)


def _local(cx: float, cy: float, r: float, h: int, w: int, pad: int = 2):
    """Clipped bounding box of a disc and its local coordinates (dy column, dx row) relative to the centre."""
    x0, x1 = max(0, math.floor(cx - r) - pad), min(w, math.ceil(cx + r) + pad + 1)
    y0, y1 = max(0, math.floor(cy - r) - pad), min(h, math.ceil(cy + r) + pad + 1)
    if x0 >= x1 or y0 >= y1:
        return None
    ys = (np.arange(y0, y1, dtype=np.float32) - np.float32(cy))[:, None]
    xs = (np.arange(x0, x1, dtype=np.float32) - np.float32(cx))[None, :]
    return (slice(y0, y1), slice(x0, x1)), ys, xs


def _over(region: np.ndarray, alpha: np.ndarray, colour) -> None:
    """Alpha-composite `colour` (RGB, or an HxWx3 array) over `region` in place."""
    region += alpha[..., None] * (colour - region)


def _sd_ellipse(u, v, cu, cv, a, b, rot=0.0):
    """Approximate signed distance (px) to an ellipse centred at (cu, cv) with semi-axes a, b."""
    cu, cv, a, b = float(cu), float(cv), float(a), float(b)
    du, dv = u - cu, v - cv
    if rot:
        c, s = math.cos(rot), math.sin(rot)
        du, dv = du * c + dv * s, dv * c - du * s
    return (np.sqrt((du / a) ** 2 + (dv / b) ** 2) - 1.0) * min(a, b)


def _sd_segment(u, v, p, q, width):
    """Signed distance to a capsule of half-width `width` around the segment p-q."""
    p, q, width = (float(p[0]), float(p[1])), (float(q[0]), float(q[1])), float(width)
    pu, pv = u - p[0], v - p[1]
    bu, bv = q[0] - p[0], q[1] - p[1]
    h = np.clip((pu * bu + pv * bv) / max(bu * bu + bv * bv, 1e-6), 0.0, 1.0)
    return np.hypot(pu - bu * h, pv - bv * h) - width


def _draw_mask(shape, draw_fn, ss: int = 2) -> np.ndarray:
    """Rasterise with PIL.ImageDraw on a supersampled 'L' canvas; returns float32 alpha in [0, 1]."""
    h, w = shape
    im = Image.new("L", (w * ss, h * ss), 0)
    draw_fn(ImageDraw.Draw(im), ss)
    if ss > 1:
        im = im.reduce(ss)
    return np.asarray(im, dtype=np.float32) * np.float32(1.0 / 255.0)


def _dots(shape, xs, ys, rx, ry, vals, ss: int = 2) -> np.ndarray:
    """Alpha of many small filled ellipses (granules, nuclei) at pixel positions (xs, ys)."""

    def draw(d: ImageDraw.ImageDraw, k: int) -> None:
        for x, y, a, b, val in zip(xs * k, ys * k, rx * k, ry * k, vals):
            d.ellipse((x - a, y - b, x + a, y + b), fill=int(val))

    return _draw_mask(shape, draw, ss)


def _blobs(shape, xs, ys, radii, vals, rng, irregular: float, ss: int = 2, nv: int = 14) -> np.ndarray:
    """Alpha of irregular, smoothly lumpy polygons (pleomorphic nuclei)."""
    n = len(xs)
    angles = np.linspace(0, _TWO_PI, nv, endpoint=False)[None, :]
    prof = np.ones((n, nv))
    for k in (2, 3):
        prof += rng.uniform(0, irregular, (n, 1)) * np.cos(k * angles + rng.uniform(0, _TWO_PI, (n, 1)))
    elong = rng.uniform(0.65, 1.0, (n, 1))
    rot = rng.uniform(0, _TWO_PI, (n, 1))
    ca, sa = np.cos(angles) * prof * radii[:, None], np.sin(angles) * prof * radii[:, None] * elong
    px = xs[:, None] + ca * np.cos(rot) - sa * np.sin(rot)
    py = ys[:, None] + ca * np.sin(rot) + sa * np.cos(rot)

    def draw(d: ImageDraw.ImageDraw, k: int) -> None:
        for qx, qy, val in zip(px * k, py * k, vals):
            d.polygon(list(zip(qx.tolist(), qy.tolist())), fill=int(val))

    return _draw_mask(shape, draw, ss)


def _finish(img: np.ndarray, rng: np.random.Generator, blur=(0.3, 1.2), noise=(1.5, 4.5)) -> Image.Image:
    """Brightness / contrast jitter, sensor noise and a slight blur; float32 HxWx3 -> PIL RGB."""
    h, w = img.shape[:2]
    contrast = rng.uniform(0.88, 1.12)
    bright = rng.uniform(-12, 12)
    sigma = rng.uniform(*noise)
    grain = rng.random((h, w, 1), dtype=np.float32)  # uniform grain with standard deviation sigma
    grain *= 3.4641 * sigma
    grain += 128.0 * (1.0 - contrast) + bright - 1.7321 * sigma
    img *= contrast
    img += grain
    np.clip(img, 0, 255, out=img)
    im = Image.fromarray(img.astype(np.uint8))
    return im.filter(ImageFilter.BoxBlur(rng.uniform(*blur)))


# ------------------------------------------------------------------------------------------------- WBC
# Nominal colours (RGB) before the per-image stain jitter.
_WBC_CYTO = {
    "Neutrophil": (228, 200, 220),
    "Eosinophil": (238, 198, 178),
    "Basophil": (205, 175, 220),
    "Lymphocyte": (182, 196, 234),
    "Monocyte": (192, 192, 218),
}
_WBC_NUC = {
    "Neutrophil": (105, 52, 142),
    "Eosinophil": (112, 58, 140),
    "Basophil": (70, 38, 112),
    "Lymphocyte": (82, 44, 128),
    "Monocyte": (146, 106, 178),
}
#: Leukocyte radius range (px at 575 px).
_WBC_RADIUS = {
    "Neutrophil": (60, 88),
    "Eosinophil": (60, 88),
    "Basophil": (55, 80),
    "Lymphocyte": (52, 74),
    "Monocyte": (72, 98),
}


def _nucleus_sd(cls: str, u, v, R: float, rng: np.random.Generator):
    """Signed-distance field of the nucleus, in the cell's rotated frame (u, v)."""
    if cls == "Neutrophil" or cls == "Basophil":
        k = int(rng.integers(3, 6)) if cls == "Neutrophil" else int(rng.integers(2, 4))
        rho = R * rng.uniform(0.30, 0.46)
        span = rng.uniform(2.4, 4.2)
        phis = np.linspace(-span / 2, span / 2, k) + rng.uniform(-0.15, 0.15, k)
        cu, cv = rho * np.cos(phis), rho * np.sin(phis)
        cu, cv = cu - cu.mean() + rng.uniform(-0.05, 0.05) * R, cv - cv.mean() + rng.uniform(-0.05, 0.05) * R
        sd = None
        for j in range(k):
            rl = R * rng.uniform(0.17, 0.24) * (1.2 if cls == "Basophil" else 1.0)
            lobe = _sd_ellipse(u, v, cu[j], cv[j], rl, rl * rng.uniform(0.7, 1.0), rot=phis[j])
            sd = lobe if sd is None else np.minimum(sd, lobe)
            if j:
                width = R * rng.uniform(0.03, 0.06)
                sd = np.minimum(sd, _sd_segment(u, v, (cu[j - 1], cv[j - 1]), (cu[j], cv[j]), width))
        return sd
    if cls == "Eosinophil":
        s = R * rng.uniform(0.25, 0.36)
        off = rng.uniform(-0.08, 0.08, 2) * R
        r1, r2 = R * rng.uniform(0.22, 0.30, 2)
        sd = np.minimum(
            _sd_ellipse(u, v, -s + off[0], off[1], r1, r1 * rng.uniform(0.75, 1.0), rot=rng.uniform(0, 3)),
            _sd_ellipse(
                u, v, s + off[0], off[1] + rng.uniform(-0.1, 0.1) * R, r2, r2 * rng.uniform(0.75, 1.0)
            ),
        )
        return np.minimum(sd, _sd_segment(u, v, (-s + off[0], off[1]), (s + off[0], off[1]), R * 0.05))
    if cls == "Lymphocyte":
        rn = R * rng.uniform(0.76, 0.88)
        ou, ov = (float(o) for o in rng.uniform(-0.1, 0.1, 2) * R)
        d = np.hypot(u - ou, v - ov)
        ang = np.arctan2(v - ov, u - ou)
        rb = rn * (1.0 + 0.04 * np.cos(2 * ang + rng.uniform(0, _TWO_PI)) + 0.02 * np.cos(3 * ang))
        return d - rb
    if cls == "Monocyte":
        a = R * rng.uniform(0.50, 0.62)
        b = R * rng.uniform(0.36, 0.46)
        cv = R * rng.uniform(0.0, 0.12)
        bend = rng.uniform(0.2, 0.6) / R
        vv = v - cv + bend * (u * u - a * a / 2)  # bean-shaped: the ellipse curves around its notch
        sd = _sd_ellipse(u, vv, 0.0, 0.0, a, b)
        rn = R * rng.uniform(0.22, 0.34)
        notch = np.hypot(u - rng.uniform(-0.1, 0.1) * R, vv + b + rn * rng.uniform(0.15, 0.5)) - rn
        return np.maximum(sd, -notch)
    raise ValueError(f"unknown WBC class {cls!r}")


def _leukocyte(img: np.ndarray, cls: str, cx: float, cy: float, R: float, rng, stain) -> tuple:
    """Draw one leukocyte in place; returns (slices, alpha of the whole cell) for the mask."""
    h, w = img.shape[:2]
    sl, ys, xs = _local(cx, cy, R * 1.12, h, w)
    th = rng.uniform(0, _TWO_PI)
    c, s = np.float32(math.cos(th)), np.float32(math.sin(th))
    u = xs * c + ys * s
    v = ys * c - xs * s
    d = np.hypot(u, v)
    ang = np.arctan2(v, u)
    rb = np.float32(R)
    for k in (2, 3, 4):
        rb = rb + R * rng.uniform(0.0, 0.03) * np.cos(k * ang + rng.uniform(0, _TWO_PI))
    cell = np.clip(rb - d + 0.5, 0.0, 1.0)
    region = img[sl]
    bh, bw = cell.shape

    # cytoplasm with a faint texture
    tex = _smooth_noise(rng, bh, bw, max(2, int(R / 10)))
    cyto = stain(_WBC_CYTO[cls])[None, None, :] * (0.94 + 0.12 * tex)[..., None]
    _over(region, cell * np.float32(rng.uniform(0.85, 0.97)), cyto)

    # nucleus, with chromatin texture
    nuc = np.minimum(np.clip(0.5 - _nucleus_sd(cls, u, v, R, rng), 0.0, 1.0), cell)
    chrom = _smooth_noise(rng, bh, bw, max(3, int(R / (4 if cls == "Monocyte" else 6))))
    amp = {"Lymphocyte": 0.35, "Monocyte": 0.3}.get(cls, 0.22)
    ncol = stain(_WBC_NUC[cls])[None, None, :] * (1.0 + amp * (chrom - 0.5))[..., None]
    _over(region, nuc * np.float32(rng.uniform(0.88, 0.98)), ncol)

    cy0, cx0 = cy - sl[0].start, cx - sl[1].start  # cell centre in bbox pixels
    if cls in ("Eosinophil", "Basophil", "Neutrophil"):
        if cls == "Eosinophil":
            gr, dens, vals, colour = (
                R * rng.uniform(0.04, 0.055),
                rng.uniform(0.7, 1.0),
                (150, 255),
                (226, 108, 62),
            )
        elif cls == "Basophil":
            gr, dens, vals, colour = (
                R * rng.uniform(0.05, 0.08),
                rng.uniform(1.3, 2.0),
                (170, 255),
                (58, 36, 108),
            )
        else:  # faint fine granules
            gr, dens, vals, colour = R * rng.uniform(0.025, 0.035), 0.35, (30, 70), (200, 150, 200)
        n = int(dens * (R / gr) ** 2)
        rr = R * 0.93 * np.sqrt(rng.random(n))
        aa = rng.uniform(0, _TWO_PI, n)
        gx, gy = cx0 + rr * np.cos(aa), cy0 + rr * np.sin(aa)
        gv = rng.uniform(*vals, n)
        if cls == "Eosinophil":  # granules thin out over the nucleus
            iy = np.clip(gy.astype(int), 0, bh - 1)
            ix = np.clip(gx.astype(int), 0, bw - 1)
            gv = np.where(nuc[iy, ix] > 0.5, gv * 0.45, gv)
        g_r = gr * rng.uniform(0.8, 1.2, n)
        gran = _dots((bh, bw), gx, gy, g_r, g_r * rng.uniform(0.8, 1.0, n), gv) * cell
        _over(region, gran, stain(colour))

    if cls == "Monocyte":  # a few vacuoles in the cytoplasm
        n = int(rng.integers(0, 7))
        if n:
            rr = R * rng.uniform(0.55, 0.9, n)
            aa = rng.uniform(0, _TWO_PI, n)
            vr = R * rng.uniform(0.03, 0.07, n)
            vac = _dots(
                (bh, bw), cx0 + rr * np.cos(aa), cy0 + rr * np.sin(aa), vr, vr, rng.uniform(120, 200, n)
            )
            _over(region, vac * (1.0 - nuc), stain((236, 234, 246)))
    return sl, np.maximum(cell, nuc)


def render_wbc(cls: str, rng: np.random.Generator, size: int = WBC_SIZE) -> tuple[Image.Image, Image.Image]:
    """One synthetic blood-smear crop of class `cls`: (RGB image, 'L' mask with white = leukocyte)."""
    if cls not in WBC_CLASSES:
        raise ValueError(f"unknown WBC class {cls!r}")
    S = size
    k = S / WBC_SIZE
    stain = _stain(rng)

    # background: pale pink, lighting gradient, vignetting, mottling
    bg = stain((236, 218, 226))
    gx, gy = (float(g) for g in rng.normal(0, 0.06, 2))
    n = S // 8  # smooth, so computed small and upsampled
    ly = np.linspace(-0.5, 0.5, n, dtype=np.float32)[:, None]
    lx = np.linspace(-0.5, 0.5, n, dtype=np.float32)[None, :]
    light = 1.0 + gx * lx + gy * ly - rng.uniform(0.0, 0.12) * (lx * lx + ly * ly)
    light = light * (0.97 + 0.06 * _smooth_noise(rng, n, n, 5))
    light = np.asarray(Image.fromarray(light).resize((S, S), Image.BILINEAR))
    img = bg[None, None, :] * light[..., None]

    # leukocytes: one centred, sometimes a second smaller one off-centre
    R = rng.uniform(*_WBC_RADIUS[cls]) * k
    cells = [(S / 2 + rng.uniform(-30, 30) * k, S / 2 + rng.uniform(-30, 30) * k, R)]
    if rng.random() < 0.1:
        R2 = R * rng.uniform(0.6, 0.8)
        for _ in range(8):
            a = rng.uniform(0, _TWO_PI)
            dist = R + R2 + rng.uniform(15, 80) * k
            x2, y2 = cells[0][0] + dist * math.cos(a), cells[0][1] + dist * math.sin(a)
            if R2 * 0.9 < x2 < S - R2 * 0.9 and R2 * 0.9 < y2 < S - R2 * 0.9:
                cells.append((x2, y2, R2))
                break

    # red blood cells (behind the leukocytes, kept off them)
    n_rbc = int(rng.integers(15, 41))
    r_mean = rng.uniform(27, 37) * k
    cand = rng.uniform(-20 * k, S + 20 * k, (4 * n_rbc, 2))
    radii = r_mean * rng.uniform(0.85, 1.15, 4 * n_rbc)
    ok = np.ones(len(cand), bool)
    for x, y, r in cells:
        ok &= np.hypot(cand[:, 0] - x, cand[:, 1] - y) > r + 0.6 * radii
    cand, radii = cand[ok][:n_rbc], radii[ok][:n_rbc]
    tint = np.float32(stain((222, 118, 134)) / 255.0)
    density = rng.uniform(0.55, 0.85)
    for (x, y), r in zip(cand.tolist(), radii.tolist()):
        loc = _local(x, y, r, S, S)
        if loc is None:
            continue
        sl, ys, xs = loc
        e = rng.uniform(0.88, 1.0)
        t = np.hypot(xs, ys / e) / r
        a = np.clip((1.0 - t) * r + 0.5, 0.0, 1.0) * (density * (0.5 + 0.5 * np.minimum(t, 1.0) ** 2))
        img[sl] *= 1.0 - a[..., None] * (1.0 - tint)

    mask = np.zeros((S, S), np.uint8)
    for x, y, r in cells:
        sl, cell = _leukocyte(img, cls, x, y, r, rng, stain)
        mask[sl] = np.maximum(mask[sl], np.where(cell > 0.5, 255, 0).astype(np.uint8))
    return _finish(img, rng), Image.fromarray(mask)


# ----------------------------------------------------------------------------------------------- CAM16
def render_cam16(
    tumor: bool, rng: np.random.Generator, size: int = CAM16_SIZE
) -> tuple[Image.Image, Image.Image]:
    """One synthetic H&E lymph-node patch: (RGB image, 'L' mask: white over the tumor region, else black)."""
    S = size
    stain = _stain(rng, hue=0.05, sat=(0.7, 1.35), val=(0.9, 1.05))
    yy = np.arange(S, dtype=np.float32)[:, None]
    xx = np.arange(S, dtype=np.float32)[None, :]

    # stroma: pink, wavy fibres, a few white gaps
    t1 = _smooth_noise(rng, S, S, 6)
    t2 = _smooth_noise(rng, S, S, 24)
    fa = rng.uniform(0, math.pi)
    fib = np.sin((xx * math.cos(fa) + yy * math.sin(fa)) * rng.uniform(0.1, 0.25) + 10.0 * t1 + 4.0 * t2)
    tex = 0.45 * t1 + 0.3 * t2 + 0.25 * _smooth_noise(rng, S, S, 64) + rng.uniform(0.0, 0.08) * fib
    img = stain((232, 160, 198))[None, None, :] * (0.8 + 0.32 * tex)[..., None]
    gaps = np.clip((_smooth_noise(rng, S, S, 3) - rng.uniform(0.72, 1.05)) * 12.0, 0.0, 1.0)
    _over(img, gaps, stain((246, 230, 240)))

    region = np.zeros((S, S), np.float32)
    if tumor:
        for _ in range(1 if rng.random() < 0.7 else 2):
            c = rng.uniform(0.2 * S, 0.8 * S, 2).tolist()
            base = S * rng.uniform(0.16, 0.34)
            d = np.hypot(xx - c[0], yy - c[1])
            ang = np.arctan2(yy - c[1], xx - c[0])
            rb = np.float32(base) * (0.92 + 0.16 * t2)
            for k in (2, 3, 4, 5):
                rb = rb + base * rng.uniform(0.0, 0.12) * np.cos(k * ang + rng.uniform(0, _TWO_PI))
            region = np.maximum(region, np.clip((rb - d) / 2.0 + 0.5, 0.0, 1.0))
        tum_bg = stain((206, 132, 192))[None, None, :] * (0.85 + 0.3 * t2)[..., None]
        _over(img, region * np.float32(rng.uniform(0.7, 0.9)), tum_bg)

    # normal nuclei: small, round, scattered (density varies a lot between patches)
    n = int(rng.integers(30, 220)) if rng.random() < 0.7 else int(rng.integers(220, 700))
    px, py = rng.uniform(0, S, n), rng.uniform(0, S, n)
    keep = (region[py.astype(int), px.astype(int)] < 0.5) & (gaps[py.astype(int), px.astype(int)] < 0.5)
    px, py = px[keep], py[keep]
    r = rng.uniform(2.2, 4.2, len(px))
    nn = _dots((S, S), px, py, r, r * rng.uniform(0.7, 1.0, len(px)), rng.uniform(160, 240, len(px)))
    _over(img, nn, stain((72, 40, 130)))

    if tumor:  # tumor nuclei: large, dark, pleomorphic, crowded
        sp = rng.uniform(11, 16)
        g = np.arange(sp / 2, S, sp)
        gx, gy = np.meshgrid(g, g)
        gx = gx.ravel() + rng.uniform(-0.4, 0.4, gx.size) * sp
        gy = gy.ravel() + rng.uniform(-0.4, 0.4, gy.size) * sp
        inside = region[np.clip(gy, 0, S - 1).astype(int), np.clip(gx, 0, S - 1).astype(int)] > 0.5
        inside &= rng.random(gx.size) < rng.uniform(0.6, 0.95)
        gx, gy = gx[inside], gy[inside]
        rad = rng.uniform(4.0, 8.5, len(gx)) * rng.lognormal(0, 0.15, len(gx))
        tn = _blobs(
            (S, S), gx, gy, rad, rng.uniform(rng.uniform(120, 200), 255, len(gx)), rng, irregular=0.18
        )
        chrom = 1.0 + 0.35 * (_smooth_noise(rng, S, S, 48) - 0.5)
        _over(img, tn, stain((62, 26, 104))[None, None, :] * chrom[..., None])

    mask = np.where(region > 0.5, 255, 0).astype(np.uint8)
    return _finish(img, rng, blur=(0.3, 0.9), noise=(1.5, 4.0)), Image.fromarray(mask)


# ------------------------------------------------------------------------------------------------ pRCC
def _outline_points(pts: np.ndarray, spacing: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """Points spaced about `spacing` apart along a closed polygon, and the unit normals there."""
    nxt = np.roll(pts, -1, axis=0)
    seg = nxt - pts
    lens = np.hypot(seg[:, 0], seg[:, 1])
    cum = np.concatenate([[0.0], np.cumsum(lens)])
    n = max(3, int(cum[-1] / spacing))
    t = (np.arange(n) + rng.uniform(-0.3, 0.3, n)) * (cum[-1] / n) % cum[-1]
    i = np.clip(np.searchsorted(cum, t, side="right") - 1, 0, len(pts) - 1)
    f = ((t - cum[i]) / np.maximum(lens[i], 1e-6))[:, None]
    p = pts[i] + seg[i] * f
    normal = np.stack([seg[i, 1], -seg[i, 0]], 1) / np.maximum(lens[i], 1e-6)[:, None]
    return p, normal


def render_prcc(side: int, rng: np.random.Generator) -> Image.Image:
    """One synthetic H&E papillary-renal-cell-carcinoma tile (RGB, side x side)."""
    side = int(side)
    S = side if side <= 1024 else (side + 1) // 2  # big tiles are drawn at half size, then upsampled
    f = S / PRCC_SIDE
    stain = _stain(rng, hue=0.06, sat=(0.7, 1.35), val=(0.9, 1.05))

    def rgba(rgb, a) -> tuple:
        return tuple(int(v) for v in np.clip(rgb, 0, 255)) + (int(a),)

    # background (drawn small, then upsampled): pale pink stroma, white gaps, mottled texture
    L = max(64, S // 8)
    stroma_a = np.clip((_smooth_noise(rng, L, L, 5) - rng.uniform(0.25, 0.6)) * 4.0, 0, 1)[..., None]
    back = stain((246, 238, 244)) * (1 - stroma_a) + stain((234, 180, 210)) * stroma_a
    back = np.clip(back, 0, 255).astype(np.uint8)
    img = Image.fromarray(back).resize((S, S), Image.BILINEAR)
    draw = ImageDraw.Draw(img, "RGBA")

    tissue_c, lining_c, lumen_c = stain((222, 140, 188)), stain((206, 128, 182)), stain((244, 234, 242))
    nuc_c = stain((78, 42, 124))
    nr = max(2.0, S * rng.uniform(0.0032, 0.0045))  # nuclear radius

    def nuclei(xs, ys) -> None:
        n = len(xs)
        ax, ay = nr * rng.uniform(0.8, 1.25, n), nr * rng.uniform(0.6, 1.1, n)
        fills = np.clip(nuc_c[None, :] * rng.uniform(0.75, 1.15, (n, 1)), 0, 255).astype(int)
        fills = np.concatenate([fills, rng.integers(190, 256, (n, 1))], 1).tolist()
        for x, y, a, b, fill in zip(xs.tolist(), ys.tolist(), ax.tolist(), ay.tolist(), fills):
            draw.ellipse((x - a, y - b, x + a, y + b), fill=tuple(fill))

    nv = 40
    ang = np.linspace(0, _TWO_PI, nv, endpoint=False)
    placed: list[tuple[float, float, float]] = []
    for _ in range(int(rng.integers(12, 30))):
        r = S * rng.uniform(0.04, 0.12)
        elong = rng.uniform(1.0, 2.6)
        for _try in range(12):  # keep structures from piling up on each other
            c = rng.uniform(-0.05 * S, 1.05 * S, 2)
            if all(math.hypot(c[0] - x, c[1] - y) > 0.8 * (r * elong + rr) for x, y, rr in placed):
                break
        else:
            continue
        placed.append((float(c[0]), float(c[1]), r * elong))
        rot = rng.uniform(0, math.pi)
        prof = np.ones(nv)
        for k in (2, 3, 4, 5):
            prof += rng.uniform(0, 0.12) * np.cos(k * ang + rng.uniform(0, _TWO_PI))
        ex, ey = r * elong * np.cos(ang) * prof, r * np.sin(ang) * prof
        cr, sr = math.cos(rot), math.sin(rot)
        pts = np.stack([c[0] + ex * cr - ey * sr, c[1] + ex * sr + ey * cr], 1)
        poly = [tuple(p) for p in pts.tolist()]
        draw.polygon(poly, fill=rgba(tissue_c, rng.uniform(200, 245)))
        # epithelial lining: a band along the edge with one or two rows of nuclei
        draw.line(poly + poly[:1], fill=rgba(lining_c, 200), width=max(2, int(5 * nr)), joint="curve")
        for row in range(1 + int(rng.random() < 0.5)):
            p, nrm = _outline_points(pts, 2.3 * nr, rng)  # counter-clockwise polygon: normals point outwards
            p = p - nrm * nr * (rng.uniform(0.8, 1.4, (len(p), 1)) + 2.2 * row)
            nuclei(p[:, 0], p[:, 1])
        k_in = int(rng.integers(0, 12) * (r * r * elong) / (S * 0.08) ** 2)  # a few nuclei in the core
        if k_in:
            t, rad = rng.uniform(0, _TWO_PI, k_in), 0.6 * np.sqrt(rng.random(k_in))
            qx, qy = r * elong * np.cos(t) * rad, r * np.sin(t) * rad
            nuclei(c[0] + qx * cr - qy * sr, c[1] + qx * sr + qy * cr)
        if rng.random() < 0.5:  # tubule: a central lumen lined by nuclei
            inner = c + (pts - c) * rng.uniform(0.3, 0.55)
            draw.polygon([tuple(q) for q in inner.tolist()], fill=rgba(lumen_c, 235))
            p, nrm = _outline_points(inner, 2.3 * nr, rng)
            p = p + nrm * nr * rng.uniform(0.8, 1.4, (len(p), 1))
            nuclei(p[:, 0], p[:, 1])
    n_str = int(rng.uniform(80, 300) * f * f) + 10  # scattered stromal nuclei
    nuclei(rng.uniform(0, S, n_str), rng.uniform(0, S, n_str))
    # fine mottled texture over everything (cytoplasm, stroma)
    T = max(64, S // 3)
    tex = _smooth_noise(rng, T, T, T // 5) + 0.5 * _smooth_noise(rng, T, T, T // 12)
    tex = (255 * (0.86 + 0.14 * np.clip(tex / 1.5, 0, 1))).astype(np.uint8)
    tex_l = Image.fromarray(tex).resize((S, S), Image.BILINEAR)
    img = ImageChops.multiply(img, Image.merge("RGB", (tex_l, tex_l, tex_l)))
    blur = rng.uniform(0.5, 1.0)
    if S != side:
        return img.resize((side, side), Image.BICUBIC)
    return img.filter(ImageFilter.BoxBlur(blur))


# -------------------------------------------------------------------------------------------- planning
def _raabin_names(seed: int, n: int) -> list[str]:
    """`n` unique Raabin-WBC-like names (date_time_index.jpg), in a seeded random order."""
    rng = np.random.default_rng([seed, 300])
    steps = rng.integers(5, 400, n)
    t0 = datetime(2019, 5, 26, 9, 0, 0) + timedelta(days=int(rng.integers(0, 30)))
    secs = np.cumsum(steps)
    idx = rng.choice(4, n, p=(0.6, 0.25, 0.1, 0.05))
    names = [f"{(t0 + timedelta(seconds=int(s))):%Y%m%d_%H%M%S}_{int(i)}.jpg" for s, i in zip(secs, idx)]
    return [names[j] for j in rng.permutation(n)]


def _plan(out: Path, counts: dict, seed: int) -> tuple[list, list]:
    """All images to render: (kind, params, image paths, mask paths), and the directories to create."""
    items: list = []
    dirs: list[Path] = []
    full = layout.wbc_folder(100)
    n100 = {c: counts[full]["train"][c]["data"] for c in WBC_CLASSES}
    nval = {c: counts[full]["val"][c]["data"] for c in WBC_CLASSES}
    train = {name: layout.wbc_split(out, n, "train") for name, n in zip(SUBSET_FOLDERS, WBC_SUBSETS)}
    val = layout.images(layout.wbc_split(out, 100, "val"))
    names = iter(_raabin_names(seed, sum(n100.values()) + sum(nval.values())))
    for ci, c in enumerate(WBC_CLASSES):
        dirs += [d for split in train.values() for d in (layout.images(split) / c, layout.masks(split) / c)]
        # nested subsets: the first n_k of a seeded permutation; nested masks chosen level by level
        sel = np.random.default_rng([seed, 100, ci])
        perm = sel.permutation(n100[c])
        members: dict[str, set] = {}
        masked_at: dict[str, set] = {}
        masked: list[int] = []
        for name in SUBSET_FOLDERS:
            nk, mk = counts[name]["train"][c]["data"], counts[name]["train"][c]["mask"]
            members[name] = set(perm[:nk].tolist())
            taken = set(masked)
            cand = [int(i) for i in perm[:nk] if int(i) not in taken]
            if mk > len(masked):
                masked += [cand[j] for j in sorted(sel.choice(len(cand), mk - len(masked), replace=False))]
            masked_at[name] = set(masked)
        for i in range(n100[c]):
            fn = next(names)
            imgs = [str(layout.images(train[k]) / c / fn) for k in SUBSET_FOLDERS if i in members[k]]
            masks = [str(layout.masks(train[k]) / c / fn) for k in SUBSET_FOLDERS if i in masked_at[k]]
            items.append(("wbc", (ci, _DS_WBC_TRAIN, i), imgs, masks))
    for ci, c in enumerate(WBC_CLASSES):
        dirs.append(val / c)
        for j in range(nval[c]):
            items.append(("wbc", (ci, _DS_WBC_VAL, j), [str(val / c / next(names))], []))

    nrng = np.random.default_rng([seed, 400])
    g = 0
    for si, (split, per_class) in enumerate(counts[CAM16_DIR].items()):
        for ci, c in enumerate(CAM16_CLASSES):
            base = layout.cam16_split(out, split)
            dirs.append(layout.images(base) / c)
            if split == "train":
                dirs.append(layout.masks(base) / c)
            n, m = per_class[c]["data"], per_class[c]["mask"]
            with_mask = set(np.random.default_rng([seed, 410, si, ci]).choice(n, m, replace=False).tolist())
            for i in range(n):
                slide = int(nrng.integers(1, 160))
                x, y = 384 * (g % 211), 384 * (g // 211)  # unique per patch
                fn = f"slide{slide:03d}_{x}_{y}.jpg"
                g += 1
                masks = [str(layout.masks(base) / c / fn)] if i in with_mask else []
                items.append(("cam", (si, ci, i), [str(layout.images(base) / c / fn)], masks))

    n_prcc, side = counts[PRCC_DIR]["data"], counts[PRCC_DIR]["side"]
    prcc = []
    for k, folder in enumerate(PRCC_FOLDERS):
        dirs.append(out / PRCC_DIR / folder)
        x0, y0 = (int(v) * 2000 for v in np.random.default_rng([seed, 500, k]).integers(0, 20, 2))
        x0 += 100_000 * k  # names unique across folders too
        lo, hi = k * n_prcc // len(PRCC_FOLDERS), (k + 1) * n_prcc // len(PRCC_FOLDERS)
        for i in range(lo, hi):
            j = i - lo
            fn = f"{x0 + 2000 * (j % 30)}_{y0 + 2000 * (j // 30)}_2000.jpg"
            prcc.append(("prcc", (i, side), [str(out / PRCC_DIR / folder / fn)], []))
    # slow tiles first, so that parallel workers finish together
    return prcc + items, dirs


def _encode(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _render_item(item, seed: int) -> None:
    kind, params, img_paths, mask_paths = item
    if kind == "wbc":
        ci, ds, i = params
        im, mask = render_wbc(WBC_CLASSES[ci], np.random.default_rng([seed, ds, ci, i]))
    elif kind == "cam":
        si, ci, i = params
        im, mask = render_cam16(ci == 1, np.random.default_rng([seed, _DS_CAM16 + si, ci, i]))
    else:
        i, side = params
        im, mask = render_prcc(side, np.random.default_rng([seed, _DS_PRCC, 0, i])), None
    data = _encode(im)
    for p in img_paths:
        Path(p).write_bytes(data)
    if mask_paths:
        data = _encode(mask)
        for p in mask_paths:
            Path(p).write_bytes(data)


def _render_chunk(chunk, seed: int) -> int:
    for item in chunk:
        _render_item(item, seed)
    return len(chunk)


def _run(chunks: list, seed: int, workers: int, bar) -> None:
    """Render all chunks: in worker processes when that pays off, else (or if they cannot start) here."""
    todo = set(range(len(chunks)))
    # fork, like torch's DataLoader workers on Linux: spawn / forkserver would re-run an unguarded
    # calling script in every worker. The workers only use numpy and Pillow.
    can_fork = sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()
    if can_fork and workers > 1 and len(chunks) > 1 and sum(len(c) for c in chunks) >= 48:
        from concurrent.futures.process import BrokenProcessPool

        ctx = multiprocessing.get_context("fork")
        try:
            with ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=ctx) as ex:
                futures = {ex.submit(_render_chunk, chunks[i], seed): i for i in sorted(todo)}
                try:
                    for fut in as_completed(futures):
                        bar.update(fut.result())
                        todo.discard(futures[fut])
                except BaseException:
                    ex.shutdown(wait=True, cancel_futures=True)
                    raise
        except BrokenProcessPool:
            bar.write("synthetic data: worker processes could not run; continuing in this process")
    for i in sorted(todo):
        bar.update(_render_chunk(chunks[i], seed))


def _default_workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


# -------------------------------------------------------------------------------------------- generate
def read_marker(root: str | Path) -> dict | None:
    """The parsed ``SYNTHETIC.json`` of a finished synthetic tree under `root`, or None."""
    p = Path(root) / MARKER
    try:
        info = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("generator") != GENERATOR or "counts" not in info:
        return None
    return info


def _clear_partial(out: Path) -> None:
    for p in out.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


@contextlib.contextmanager
def _exclusive(out: Path):
    """Hold an exclusive lock for `out` (a file beside it), so concurrent calls generate only once."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        yield
        return
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fh = open(out.parent / f".{out.name}.synth-lock", "a")
    except OSError:  # e.g. a read-only parent folder: go on without a lock
        yield
        return
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def generate(
    out: str | Path, scale: float = 1.0, seed: int = 0, progress: bool = True, *,
    cam16_scale: float | None = None, workers: int | None = None
) -> dict:
    """Write the full course layout of synthetic data under `out`; return its summary.

    The summary is the content of ``out/SYNTHETIC.json``: ``{"generator": "wbclib.synth", "version": 1,
    "scale": ..., "seed": ..., "images": ..., "counts": planned_counts(scale)}``.

    - If `out` already holds a finished tree with the same version, scale and seed, nothing is written
      and its summary is returned (a cache).
    - If `out` holds an unfinished tree (``.synth-incomplete``) or one made with another scale / seed, and
      nothing but the generator's own entries, it is deleted and regenerated.
    - Any other non-empty `out` raises :class:`wbclib.WbcError` (a user's folder is never overwritten).

    Concurrent calls for the same `out` are serialised with a lock file beside it
    (``.<name>.synth-lock``), so the tree is generated once. `workers` processes render in parallel
    (default: the usable CPU cores, at most 8; 1 = in this process); the output does not depend on it.
    `progress` shows a tqdm bar over the images. `cam16_scale` sizes CAM16 separately (its test set is
    only 216 images: a small `scale` would leave a handful).
    """
    scale = _check_scale(scale)
    cam16_scale = scale if cam16_scale is None else _check_scale(cam16_scale)
    seed = _check_seed(seed)
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise WbcError(f"synthetic data: {out} exists and is not a folder")
    info = _finished(out, scale, seed, cam16_scale)
    if info is not None:  # the cache: nothing is written, not even a lock file
        return info
    with _exclusive(out):
        info = _finished(out, scale, seed, cam16_scale)  # another process may have just finished it
        return info if info is not None else _generate(out, scale, seed, progress, workers, cam16_scale)


def _finished(out: Path, scale: float, seed: int, cam16_scale: float) -> dict | None:
    info = read_marker(out) if out.is_dir() else None
    if (info and info.get("version") == VERSION and info.get("scale") == scale and info.get("seed") == seed
            and info.get("cam16_scale", scale) == cam16_scale):
        return info
    return None


def _generate(out: Path, scale: float, seed: int, progress: bool, workers: int | None,
              cam16_scale: float) -> dict:
    info = read_marker(out) if out.is_dir() else None
    if out.is_dir() and any(out.iterdir()):
        ours = info is not None or (out / SENTINEL).exists()
        foreign = sorted(p.name for p in out.iterdir() if p.name not in _KNOWN_ENTRIES)
        if not ours or foreign:
            raise WbcError(
                f"synthetic data: {out} is not empty and holds no finished synthetic dataset "
                f"({MARKER} missing or {', '.join(foreign[:3]) or 'other files'} present): "
                "choose an empty or new folder"
            )
        _clear_partial(out)  # an interrupted run, or another scale / seed: start again

    counts = planned_counts(scale, cam16_scale)
    out.mkdir(parents=True, exist_ok=True)
    (out / SENTINEL).write_text("generation in progress or interrupted; delete this folder or rerun\n")
    items, dirs = _plan(out, counts, seed)
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)

    workers = _default_workers() if workers is None else max(1, int(workers))
    # pRCC tiles cost ~ (side / 575)^2 WBC images: keep chunks of similar cost
    chunks, cur, cost = [], [], 0.0
    for item in items:
        cur.append(item)
        cost += (item[1][1] / WBC_SIZE) ** 2 if item[0] == "prcc" else 1.0
        if cost >= 8:
            chunks.append(cur)
            cur, cost = [], 0.0
    if cur:
        chunks.append(cur)

    from tqdm import tqdm

    with tqdm(total=len(items), desc="synthetic data", unit="img", disable=not progress) as bar:
        _run(chunks, seed, workers, bar)

    info = {
        "generator": GENERATOR,
        "version": VERSION,
        "scale": scale,
        "cam16_scale": cam16_scale,
        "seed": seed,
        "images": len(items),
        "counts": counts,
    }
    tmp = out / (MARKER + ".tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, out / MARKER)
    (out / SENTINEL).unlink(missing_ok=True)
    return info

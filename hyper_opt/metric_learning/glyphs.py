"""``glyphs``: a many-class image dataset rendered at run time from the fonts matplotlib ships.

In the spirit of Omniglot: a class is a character (digits, Latin, Greek, Cyrillic, symbols), its
samples are that character drawn in different typefaces (the DejaVu Sans / Sans Mono / Serif
and STIX families, each regular, bold, italic and bold italic: 16 faces) with a random affine
distortion, stroke width and pixel noise. Nothing is downloaded: the TrueType files are part of
matplotlib (``matplotlib.get_data_path()/fonts/ttf``) and the images are drawn with Pillow.

Construction, all of it deterministic given ``seed`` (and the installed fonts):

1. Candidates: the characters of :data:`SCRIPTS`, in that order. A character is kept when at
   least ``min_faces`` faces have a glyph for it that draws ink.
2. Homoglyphs are merged: Latin ``A``, Greek ``Α`` and Cyrillic ``А`` are one shape. Each
   character is drawn undistorted in every face; a character whose drawing correlates above
   :data:`HOMOGLYPH_CORRELATION` with an earlier kept character (the median over the faces both
   have) is dropped.
3. Samples: ``samples_per_class`` per character; the faces are dealt in a shuffled cycle (so every
   class sees all its faces), each drawn on a 64x64 canvas at a random size (40-52 px), stroke width 0 or 1,
   rotated, sheared, scaled and shifted at random, reduced to ``image_size`` pixels, then given
   Gaussian noise. Pixels are ink intensity in [0, 1] (1: ink), shape ``1 x image_size x image_size``.

With the defaults this gives 270 or so classes of 20 samples in a few seconds. The arrays are
cached in ``$XDG_CACHE_HOME/hyper_opt/glyphs`` (default ``~/.cache/hyper_opt/glyphs``) under a
name that hashes every option, the font files and the Pillow version, written atomically so
that workers building it at once do not collide; later calls load the file (milliseconds).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the construction changes: old cache files are then ignored
FAMILIES = ("DejaVuSans", "DejaVuSansMono", "DejaVuSerif", "STIXGeneral")
FACE_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
)


def _chars(*ranges: tuple[int, int]) -> str:
    return "".join(chr(c) for lo, hi in ranges for c in range(lo, hi + 1))


SCRIPTS: dict[str, str] = {
    "digits": "0123456789",
    "latin": _chars((0x41, 0x5A), (0x61, 0x7A)) + "ÆæØøßÞþÐðŁłŒœ",
    "greek": _chars((0x391, 0x3A1), (0x3A3, 0x3A9), (0x3B1, 0x3C9)),
    "cyrillic": _chars((0x410, 0x44F)) + "ЁёЂђЄєЉљЊњЋћЏџҐґ",
    "symbols": "#$%&@?!§¶©®¢£¥€+±×÷=≠≈≡<>≤≥∞∑∏√∫∂∇∈∉∋⊂⊃⊆⊇∪∩∀∃∄¬∧∨⊕⊗⊥∠∴∵→←↑↓↔↕⇒⇐⇔♠♣♥♦★☆♪♫☺☼✓✗",
}
HOMOGLYPH_CORRELATION = 0.97  # drawings this alike (median over the common faces) are one class
CANVAS = 64


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/hyper_opt`` or ``~/.cache/hyper_opt``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.path.expandvars(base)).expanduser() / "hyper_opt"


def font_dir() -> Path:
    """The folder of the TrueType fonts matplotlib ships."""
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError("the glyphs dataset draws the fonts matplotlib ships: pip install matplotlib "
                          "(included in hyper_opt[metric-learning])") from err
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def font_files() -> list[Path]:
    folder = font_dir()
    files = [folder / name for name in FACE_FILES if (folder / name).is_file()]
    if not files:
        raise FileNotFoundError(f"none of the fonts {', '.join(FACE_FILES)} is in {folder}")
    return files


# --------------------------------------------------------------------------- building


def _glyph_sets(files: Sequence[Path]) -> list[set[int]]:
    from matplotlib.ft2font import FT2Font

    return [set(FT2Font(str(f)).get_charmap()) for f in files]


def _draw(font: Any, char: str, *, stroke: int = 0, offset: tuple[float, float] = (0.0, 0.0)) -> Any:
    """``char`` on a CANVAS x CANVAS grey image, its ink box centred (plus ``offset``)."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (CANVAS, CANVAS), 0)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((0, 0), char, font=font, stroke_width=stroke)
    x = (CANVAS - (right - left)) / 2 - left + offset[0]
    y = (CANVAS - (bottom - top)) / 2 - top + offset[1]
    draw.text((x, y), char, fill=255, font=font, stroke_width=stroke, stroke_fill=255)
    return image


def _affine(image: Any, rng: np.random.Generator) -> Any:
    """A random rotation (+-15 deg), shear (+-0.25), scale (0.8-1.1) and shift (+-4 px) about the centre."""
    from PIL import Image

    angle = np.deg2rad(rng.uniform(-15, 15))
    shear = rng.uniform(-0.25, 0.25)
    scale = rng.uniform(0.8, 1.1)
    tx, ty = rng.uniform(-4, 4, size=2)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    forward = scale * rot @ np.array([[1.0, shear], [0.0, 1.0]])
    inverse = np.linalg.inv(forward)
    c = CANVAS / 2
    shift = np.array([c, c]) - inverse @ np.array([c + tx, c + ty])  # output pixel -> input pixel
    coeffs = (inverse[0, 0], inverse[0, 1], shift[0], inverse[1, 0], inverse[1, 1], shift[1])
    return image.transform(image.size, Image.AFFINE, coeffs, resample=Image.BILINEAR)


def _reduce(image: Any, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(image.resize((size, size), Image.BOX), dtype=np.float32) / 255.0


def _homoglyph_free(candidates: list[str], faces: list[list[int]], files: Sequence[Path]) -> list[int]:
    """Indices of the candidates kept after merging look-alikes (see the module docstring)."""
    from PIL import ImageFont

    fonts = [ImageFont.truetype(str(f), 40) for f in files]
    n, size = len(candidates), 16
    vectors = np.zeros((len(files), n, size * size), dtype=np.float32)
    present = np.zeros((len(files), n), dtype=bool)
    for i, char in enumerate(candidates):
        for f in faces[i]:
            v = _reduce(_draw(fonts[f], char), size).ravel()
            v = v - v.mean()
            norm = np.linalg.norm(v)
            if norm > 0:
                vectors[f, i] = v / norm
                present[f, i] = True
    kept: list[int] = []
    for i in range(n):
        duplicate = False
        for j in kept:
            common = present[:, i] & present[:, j]
            if common.any() and float(np.median([vectors[f, i] @ vectors[f, j] for f in np.flatnonzero(common)])
                                      ) > HOMOGLYPH_CORRELATION:
                duplicate = True
                break
        if not duplicate:
            kept.append(i)
    return kept


def build_glyphs(*, image_size: int = 32, samples_per_class: int = 20, seed: int = 0,
                 scripts: Sequence[str] = tuple(SCRIPTS),
                 min_faces: int = 8) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Draw the dataset: ``(images uint8 N x 1 x S x S, labels, class names)`` (no cache)."""
    from PIL import ImageFont

    files = font_files()
    charmaps = _glyph_sets(files)
    candidates, faces = [], []
    for script in scripts:
        for char in SCRIPTS[script]:
            have = [f for f, cmap in enumerate(charmaps) if ord(char) in cmap]
            if len(have) >= min_faces:
                candidates.append(char)
                faces.append(have)
    kept = _homoglyph_free(candidates, faces, files)
    rng = np.random.default_rng(seed)
    sizes = (40, 44, 48, 52)
    fonts: dict[tuple[int, int], Any] = {}
    images = np.zeros((len(kept) * samples_per_class, 1, image_size, image_size), dtype=np.uint8)
    labels = np.repeat(np.arange(len(kept), dtype=np.int64), samples_per_class)
    k = 0
    for label, i in enumerate(kept):
        char, have = candidates[i], faces[i]
        order: list[int] = []
        while len(order) < samples_per_class:
            order.extend(rng.permutation(have).tolist())
        for f in order[:samples_per_class]:
            px = int(sizes[rng.integers(len(sizes))])
            font = fonts.get((f, px))
            if font is None:
                font = fonts[(f, px)] = ImageFont.truetype(str(files[f]), px)
            image = _affine(_draw(font, char, stroke=int(rng.integers(0, 2))), rng)
            x = _reduce(image, image_size)
            x = np.clip(x + rng.normal(0.0, rng.uniform(0.02, 0.12), size=x.shape), 0.0, 1.0)
            images[k, 0] = np.round(x * 255).astype(np.uint8)
            k += 1
    return images, labels, [candidates[i] for i in kept]


def _cache_key(options: dict[str, Any], files: Sequence[Path]) -> str:
    import PIL

    fingerprint = {"version": FORMAT_VERSION, "options": options, "pillow": PIL.__version__,
                   "fonts": [(f.name, f.stat().st_size) for f in files]}
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


def load_glyphs(*, image_size: int = 32, samples_per_class: int = 20, seed: int = 0,
                scripts: Sequence[str] = tuple(SCRIPTS), min_faces: int = 8,
                cache: bool = True) -> tuple[np.ndarray, np.ndarray, list[str], Path | None]:
    """The dataset from the cache, drawn (and cached) when missing: (images, labels, class names,
    cache file or None)."""
    _check(image_size=image_size, samples_per_class=samples_per_class, scripts=scripts, min_faces=min_faces)
    options = {"image_size": int(image_size), "samples_per_class": int(samples_per_class), "seed": int(seed),
               "scripts": list(scripts), "min_faces": int(min_faces)}
    path = cache_dir() / "glyphs" / f"glyphs-{_cache_key(options, font_files())}.npz" if cache else None
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as saved:
                return saved["images"], saved["labels"], [str(c) for c in saved["classes"]], path
        except (OSError, ValueError, KeyError) as err:  # a damaged file is rebuilt
            logger.warning("rebuilding the glyphs cache %s: %s", path, err)
    images, labels, classes = build_glyphs(**options)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".glyphs-", suffix=".npz", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                np.savez(out, images=images, labels=labels, classes=np.asarray(classes))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return images, labels, classes, path


def _check(*, image_size: int, samples_per_class: int, scripts: Sequence[str], min_faces: int) -> None:
    if not isinstance(image_size, int) or not 8 <= image_size <= CANVAS:
        raise ValueError(f"glyphs: image_size must be an integer in [8, {CANVAS}], got {image_size!r}")
    if not isinstance(samples_per_class, int) or samples_per_class < 2:
        raise ValueError(f"glyphs: samples_per_class must be an integer >= 2, got {samples_per_class!r}")
    if isinstance(scripts, str) or not scripts or any(s not in SCRIPTS for s in scripts):
        raise ValueError(f"glyphs: scripts must be a list of {', '.join(SCRIPTS)}, got {scripts!r}")
    if not isinstance(min_faces, int) or not 1 <= min_faces <= len(FACE_FILES):
        raise ValueError(f"glyphs: min_faces must be an integer in [1, {len(FACE_FILES)}], got {min_faces!r}")

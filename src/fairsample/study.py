"""``fairsample study``: the FairGen-Table-1 comparison as one resumable grid, built only from the public SDK.

The grid (issue #7): every training method in :data:`METHODS` is fine-tuned from one base model with the same seed,
batch, learning rate and number of steps (``vanilla`` too, so every row had the same extra training), its U-Net is
exported once (content-addressed engine cache), and a balanced synthetic set is generated with the ``conditional``
sampler. ``attribute_switch`` (τ from :func:`~fairsample.tau_search.find_tau`) and ``fairdiffusion_perturbed``
(offsets from :func:`~fairsample.tune_perturbation.tune_perturbation`) are added on the ``vanilla`` and
``fairdiffusion`` models. One :func:`~fairsample.eval.evaluate.evaluate` call then scores every set in one feature
space: ``real_only`` is the "Base" row, ``real_plus_synthetic`` gives one row per set, all tested on the same real
test split with the same classifier seeds.

Every grid cell — base model (tiny profile), preference pairs, training run, export, τ, perturbation, generated set,
evaluation — lives in its own folder ``S/cells/<kind>/<name>/``:

- ``cell.start.json`` is written when the cell starts (its settings key and an attempt counter);
- ``cell.json`` (settings key, outputs, wall time, captured warnings) is written **last**, atomically.

A re-run of the same command skips every cell whose ``cell.json`` carries the same settings key and resumes the others
(training continues from its newest checkpoint, generation fills in missing images); a cell started with other
settings is cleared first. ``S/results.json`` (every number, per-seed values, cell folders, command, versions,
profile, timings) and ``S/RESULTS.md`` (rendered only from ``results.json``) are rebuilt at the end of every run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fairsample.errors import ConfigError, DataError, FairsampleWarning

__all__ = [
    "METHODS",
    "PROFILES",
    "SAMPLERS",
    "SCHEMA",
    "StudyProfile",
    "StudyResult",
    "plan_study",
    "run_study",
]

#: ``results.json`` schema tag.
SCHEMA = "fairsample.study/1"
#: training methods of the grid, in Table-1 order (FairGen Table 1: SD, CBRS, SQRS, CBDM, FairDiffusion, FairGen;
#: plus FairSkin-S).
METHODS: tuple[str, ...] = ("vanilla", "cbrs", "sqrs", "cbdm", "fairskin-s", "fairdiffusion", "fairgen")
#: samplers of the grid; ``conditional`` runs on every model, the others on :data:`SAMPLER_MODELS` only.
SAMPLERS: tuple[str, ...] = ("conditional", "attribute_switch", "fairdiffusion_perturbed")
#: the models the sampling-time methods run on.
SAMPLER_MODELS: tuple[str, ...] = ("vanilla", "fairdiffusion")
#: Table-1 columns: (key in the evaluation summary, heading, better direction).
TABLE1_METRICS: tuple[tuple[str, str, str], ...] = (
    ("accuracy", "Accuracy", "higher"),
    ("essp", "ESSP", "higher"),
    ("dp_gap", "DP gap", "lower"),
    ("eopp_gap", "EOpp gap", "lower"),
    ("nar", "NAR", "lower"),
)

_BAD_PROFILE = "`profile` must be one of {allowed}, got {value!r}."
_BAD_METHOD = "`methods` names unknown method(s) {bad}; the study's methods are {allowed}."
_BAD_SAMPLER = "`samplers` names unknown sampler(s) {bad}; the study's samplers are {allowed}."
_EMPTY = "`{name}` is empty; give at least one of {allowed}."
_NO_CONDITIONAL = (
    "`samplers` must include 'conditional': every method row is a conditional set, and the other samplers are "
    "compared against it."
)
_BAD_SEEDS = "`seeds` must be an integer >= 1 (classifier seeds 0..N-1), got {value!r}."
_BAD_THREADS = "`threads` must be an integer >= 1 or None, got {value!r}."
_BAD_BACKEND = "`backend` must be 'onnxruntime' or 'torch', got {value!r}."
_NO_ATTRIBUTE = (
    "the data folder {root} names no sensitive attribute (its fairsample.toml has no `groups`); pass --attribute "
    "COLUMN with a column of {columns} that holds each image's group."
)
_UNKNOWN_ATTRIBUTE = (
    "attribute {value!r} is not a group column of {root} (group columns: {groups}; columns: {columns}); pass "
    "--attribute with a column holding each image's group."
)
_FEW_VALUES = "attribute {attribute!r} has {n} value(s) {values} in {root}; a fairness comparison needs at least 2."
_BASE_MISMATCH = (
    "the data's {what} {values} are unknown to the base model {model} (it knows {known}); the {profile!r} profile "
    "fine-tunes that model, so use data with its cells (e.g. `fairsample data demo DIR`) or --profile tiny."
)
_OTHER_STUDY = (
    "`output_dir` {path} holds a study with {key}={old!r}, not {new!r}; re-run with the original value or choose a "
    "new --output-dir."
)
_NOT_STUDY = (
    "`output_dir` {path} exists and is not a fairsample study folder (no study.json); choose a new or empty "
    "--output-dir."
)


# ------------------------------------------------------------------------------------------------------ profiles


@dataclass(frozen=True)
class StudyProfile:
    """Every size setting of a study (the profile is recorded in ``results.json``)."""

    name: str  # profile name
    description: str  # one line for RESULTS.md
    base: str  # "embedded" (fine-tune the embedded model) or "scratch" (train a base model first)
    base_steps: int  # scratch only: steps of the base model (vanilla, from random init)
    architecture: str  # scratch only: built-in U-Net config
    image_size: int  # scratch only: training resolution
    cross_attention_dim: int  # scratch only: token width
    train_steps: int  # fine-tuning steps per method (same for every method, vanilla included)
    batch_size: int  # images per fine-tuning step
    learning_rate: float  # peak AdamW learning rate of the fine-tuning (cosine after warmup)
    lr_warmup_steps: int  # linear warmup steps
    checkpoint_every: int  # training checkpoints (resume points) every N steps
    train_seed: int  # the training seed of every method
    device: str  # training / sampling device ("cpu" or "auto")
    prefs_per_cell: int  # fairgen: proxy preference pairs per cell
    prefs_candidates: int  # fairgen: candidates per cell the pairs are chosen from
    prefs_classifier_epochs: int  # fairgen: epochs of the confidence classifier
    images_per_set: int  # images per generated set (balanced over the cells)
    sample_steps: int  # DDIM steps (generation, τ search, perturbation search, preference candidates)
    sample_batch: int  # images per engine batch
    tau_n_per_label: int  # τ search: trajectory pairs per label and attribute-value pair
    tau_grid: int  # τ search: grid spacing in training timesteps (on the 100-step search schedule: 10 = every step)
    perturb_iterations: int | None  # GP-UCB proposals after the initial design (None: zero offsets, no search)
    perturb_n_eval: int  # images per group and perturbation evaluation
    eval_epochs: int  # downstream classifier epochs per seed
    eval_k: int  # size-matched FID draws per group
    eval_resamples: int  # bootstrap resamples per fairness report
    eval_feature_epochs: int | None  # DomainFeatures epochs (None: evaluate's default, >= 300 steps)
    eval_ber_epochs: int  # attribute-classifier epochs (BER)
    eval_size: int | None  # image side for every metric (None: the model's resolution)
    exporters: tuple[str, ...] | None = None  # ONNX exporter chain (None: the engine's default)
    torch_threads: int | None = None  # torch intra-op threads of the whole run (None: torch's default)
    default_methods: tuple[str, ...] = METHODS  # methods run when none are given
    default_samplers: tuple[str, ...] = SAMPLERS  # samplers run when none are given

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


PROFILES: dict[str, StudyProfile] = {
    # measured on the 2-core CPU: see docs/RESULTS.md (per-stage wall times) and docs/decisions.md
    "small": StudyProfile(
        name="small",
        description="2-core CPU, <= 60 min: fine-tune the embedded 32x32 model, few DDIM steps, 3 classifier seeds",
        base="embedded",
        base_steps=0,
        architecture="tiny-32",
        image_size=32,
        cross_attention_dim=64,
        train_steps=100,
        batch_size=32,
        learning_rate=1e-4,
        lr_warmup_steps=10,
        checkpoint_every=25,
        train_seed=0,
        device="cpu",
        prefs_per_cell=4,
        prefs_candidates=8,
        prefs_classifier_epochs=8,
        images_per_set=450,
        sample_steps=10,
        sample_batch=32,
        tau_n_per_label=4,
        tau_grid=10,
        perturb_iterations=4,
        perturb_n_eval=16,
        eval_epochs=10,
        eval_k=10,
        eval_resamples=100,
        eval_feature_epochs=None,
        eval_ber_epochs=8,
        eval_size=None,
        # OpenMP spin-waiting makes 2 torch threads 13-17x slower as soon as another process uses the other core
        # (fine-tuning step 11.7 s vs 0.9 s on 1 thread; 8 classifier epochs 129 s vs 7.6 s); see docs/RESULTS.md
        torch_threads=1,
    ),
    "full": StudyProfile(
        name="full",
        description="GPU: longer fine-tuning, larger sets, 50 DDIM steps, full perturbation search",
        base="embedded",
        base_steps=0,
        architecture="tiny-32",
        image_size=32,
        cross_attention_dim=64,
        train_steps=2000,
        batch_size=64,
        learning_rate=1e-4,
        lr_warmup_steps=100,
        checkpoint_every=250,
        train_seed=0,
        device="auto",
        prefs_per_cell=16,
        prefs_candidates=64,
        prefs_classifier_epochs=8,
        images_per_set=1500,
        sample_steps=50,
        sample_batch=64,
        tau_n_per_label=8,
        tau_grid=10,
        perturb_iterations=20,
        perturb_n_eval=32,
        eval_epochs=20,
        eval_k=10,
        eval_resamples=100,
        eval_feature_epochs=None,
        eval_ber_epochs=8,
        eval_size=None,
    ),
    # for tests: the whole pipeline on the 8x8 'test' U-Net in about a minute (numbers are meaningless)
    "tiny": StudyProfile(
        name="tiny",
        description="tests only: 8x8 'test' U-Net trained from scratch for a few steps; numbers are meaningless",
        base="scratch",
        base_steps=6,
        architecture="test",
        image_size=8,
        cross_attention_dim=8,
        train_steps=2,
        batch_size=8,
        learning_rate=1e-3,
        lr_warmup_steps=0,
        checkpoint_every=1,
        train_seed=0,
        device="cpu",
        prefs_per_cell=1,
        prefs_candidates=2,
        prefs_classifier_epochs=1,
        images_per_set=45,
        sample_steps=3,
        sample_batch=16,
        tau_n_per_label=1,
        tau_grid=250,
        perturb_iterations=None,
        perturb_n_eval=4,
        eval_epochs=1,
        eval_k=2,
        eval_resamples=0,
        eval_feature_epochs=1,
        eval_ber_epochs=1,
        eval_size=8,
        exporters=("legacy",),  # 5 s instead of 22 s per export of the test U-Net
        torch_threads=1,
        default_methods=("vanilla", "fairdiffusion"),
    ),
}


# ---------------------------------------------------------------------------------------------------- the grid


@dataclass(frozen=True)
class GridCell:
    """One planned cell: ``S/cells/<kind>/<name>/``."""

    kind: str  # base | prefs | train | export | tau | perturbation | generate | evaluate
    name: str  # method, "<method>.<sampler>", or "all"
    needs: tuple[str, ...] = ()  # ids of the cells it depends on

    @property
    def id(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclass(frozen=True)
class StudyPlan:
    """The resolved grid: what a run computes, in order."""

    profile: StudyProfile
    methods: tuple[str, ...]
    samplers: tuple[str, ...]
    seeds: tuple[int, ...]
    attribute: str
    sets: tuple[tuple[str, str, str], ...]  # (set name, method, sampler), Table-1 order
    cells: tuple[GridCell, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile.name,
            "methods": list(self.methods),
            "samplers": list(self.samplers),
            "seeds": list(self.seeds),
            "attribute": self.attribute,
            "sets": [{"name": n, "method": m, "sampler": s} for n, m, s in self.sets],
            "cells": [c.id for c in self.cells],
        }


def set_name(method: str, sampler: str) -> str:
    """The evaluation name of a generated set: the method for ``conditional``, else ``<method>.<sampler>``."""
    return method if sampler == "conditional" else f"{method}.{sampler}"


def _split_names(values: Sequence[str] | str | None) -> list[str] | None:
    """``["vanilla,cbrs", "cbdm"]`` → ``["vanilla", "cbrs", "cbdm"]`` (None stays None)."""
    if values is None:
        return None
    items = [values] if isinstance(values, str) else list(values)
    out: list[str] = []
    for item in items:
        out += [v.strip() for v in str(item).split(",") if v.strip()]
    return out


def plan_study(
    *,
    profile: str = "small",
    methods: Sequence[str] | str | None = None,
    samplers: Sequence[str] | str | None = None,
    seeds: int = 3,
    attribute: str = "tone",
) -> StudyPlan:
    """The grid of a study, without touching any data (``--dry-run``).

    Args:
        profile: a key of :data:`PROFILES`.
        methods: subset of :data:`METHODS` (names or comma lists; default: the profile's).
        samplers: subset of :data:`SAMPLERS`, must include ``conditional`` (default: the profile's).
        seeds: number of downstream classifier seeds (0..N-1).
        attribute: the sensitive attribute (recorded only).

    Returns:
        :class:`StudyPlan`.

    Raises:
        ConfigError: unknown profile, method or sampler; no ``conditional``; ``seeds`` < 1.

    Example:
        >>> p = plan_study(profile="tiny", methods="vanilla", samplers=["conditional", "attribute_switch"])
        >>> [name for name, _, _ in p.sets]
        ['vanilla', 'vanilla.attribute_switch']
    """
    if profile not in PROFILES:
        raise ConfigError(_BAD_PROFILE.format(allowed=sorted(PROFILES), value=profile))
    prof = PROFILES[profile]
    wanted_m = _split_names(methods)
    wanted_s = _split_names(samplers)
    wanted_m = list(prof.default_methods) if wanted_m is None else wanted_m
    wanted_s = list(prof.default_samplers) if wanted_s is None else wanted_s
    bad = [m for m in wanted_m if m not in METHODS]
    if bad:
        raise ConfigError(_BAD_METHOD.format(bad=bad, allowed=list(METHODS)))
    bad = [s for s in wanted_s if s not in SAMPLERS]
    if bad:
        raise ConfigError(_BAD_SAMPLER.format(bad=bad, allowed=list(SAMPLERS)))
    if not wanted_m:
        raise ConfigError(_EMPTY.format(name="methods", allowed=list(METHODS)))
    if not wanted_s:
        raise ConfigError(_EMPTY.format(name="samplers", allowed=list(SAMPLERS)))
    if "conditional" not in wanted_s:
        raise ConfigError(_NO_CONDITIONAL)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(_BAD_SEEDS.format(value=seeds))
    ms = tuple(m for m in METHODS if m in wanted_m)
    ss = tuple(s for s in SAMPLERS if s in wanted_s)

    sets = [(m, m, "conditional") for m in ms]
    for s in ss[1:]:
        sets += [(set_name(m, s), m, s) for m in SAMPLER_MODELS if m in ms]
    cells: list[GridCell] = []
    base_id = None
    if prof.base == "scratch":
        cells.append(GridCell("base", "vanilla"))
        base_id = "base/vanilla"
    base_needs = (base_id,) if base_id else ()
    if "fairgen" in ms:
        cells.append(GridCell("prefs", "fairgen", base_needs))
    for m in ms:
        needs = base_needs + (("prefs/fairgen",) if m == "fairgen" else ())
        cells.append(GridCell("train", m, needs))
    for m in ms:
        cells.append(GridCell("export", m, (f"train/{m}",)))
        cells.append(GridCell("generate", m, (f"export/{m}",)))
        if m in SAMPLER_MODELS and "attribute_switch" in ss:
            cells.append(GridCell("tau", m, (f"export/{m}",)))
            cells.append(GridCell("generate", set_name(m, "attribute_switch"), (f"tau/{m}",)))
        if m in SAMPLER_MODELS and "fairdiffusion_perturbed" in ss:
            cells.append(GridCell("perturbation", m, (f"export/{m}",)))
            cells.append(GridCell("generate", set_name(m, "fairdiffusion_perturbed"), (f"perturbation/{m}",)))
    cells.append(GridCell("evaluate", "all", tuple(f"generate/{n}" for n, _, _ in sets)))
    return StudyPlan(prof, ms, ss, tuple(range(seeds)), attribute, tuple(sets), tuple(cells))


# ----------------------------------------------------------------------------------------------- cell machinery


def _digest(doc: Any) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _write_json(path: Path, doc: Any) -> None:
    """Atomic JSON write (temporary sibling + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(doc, indent=2, default=str, allow_nan=False) + "\n")
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _append_jsonl(path: Path, doc: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(doc, default=str) + "\n")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every platform
        return None


class _Grid:
    """Runs cells with a completion marker written last; completed cells with the same key are skipped."""

    def __init__(self, root: Path, say: Callable[[str], None]) -> None:
        self.root = root
        self.say = say
        self.t0 = time.perf_counter()
        self.ran: list[str] = []
        self.skipped: list[str] = []
        self.markers: dict[str, dict[str, Any]] = {}

    def folder(self, cell: GridCell) -> Path:
        return self.root / "cells" / cell.kind / cell.name

    def done(self, cell: GridCell, key: dict[str, Any]) -> dict[str, Any] | None:
        marker = _read_json(self.folder(cell) / "cell.json")
        if isinstance(marker, dict) and marker.get("key") == _digest(key) and marker.get("complete"):
            return marker
        return None

    def run(self, cell: GridCell, key: dict[str, Any], fn: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        folder = self.folder(cell)
        digest = _digest(key)
        marker = self.done(cell, key)
        if marker is not None:
            self.skipped.append(cell.id)
            self.markers[cell.id] = marker
            self.say(f"{cell.id}: complete ({marker['seconds']:.1f} s earlier), skipped")
            return marker
        start = _read_json(folder / "cell.start.json")
        attempt = 1
        if isinstance(start, dict) and start.get("key") == digest:
            attempt = int(start.get("attempt", 0)) + 1
            self.say(f"{cell.id}: resuming (attempt {attempt})")
        elif folder.exists():
            shutil.rmtree(folder)  # another setting's (partial) output: start clean
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cell.json").unlink(missing_ok=True)
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        _write_json(folder / "cell.start.json", {"key": digest, "attempt": attempt, "started": started})
        if attempt == 1:
            self.say(f"{cell.id}: running")
        t = time.perf_counter()
        load_before = _load_average()
        with _capture_warnings() as caught:
            outputs = fn(folder)
        seconds = time.perf_counter() - t
        marker = {
            "cell": cell.id,
            "kind": cell.kind,
            "name": cell.name,
            "complete": True,
            "key": digest,
            "settings": key,
            "outputs": outputs,
            "seconds": round(seconds, 3),
            "attempt": attempt,
            "started": started,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "load_average": {"start": load_before, "end": _load_average()},
            "warnings": caught,
        }
        for message in caught:
            self.say(f"  warning: {message}")
        _write_json(folder / "cell.json", marker)
        self.ran.append(cell.id)
        self.markers[cell.id] = marker
        self.say(f"{cell.id}: done in {seconds:.1f} s")
        return marker


@contextlib.contextmanager
def _capture_warnings() -> Iterator[list[str]]:
    """FairsampleWarnings of a cell, collected once each (the caller prints and records them); others pass on."""
    caught: list[str] = []
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always", FairsampleWarning)
        yield caught
    for w in records:
        if issubclass(w.category, FairsampleWarning):
            if str(w.message) not in caught:
                caught.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


# -------------------------------------------------------------------------------------------------------- result


@dataclass
class StudyResult:
    """What :func:`run_study` wrote."""

    output_dir: Path
    results: dict[str, Any] = field(repr=False)  # the results.json document
    results_path: Path = Path()
    markdown_path: Path = Path()
    ran: list[str] = field(default_factory=list)  # cells computed by this call
    skipped: list[str] = field(default_factory=list)  # cells found complete
    seconds: float = 0.0  # wall time of this call


# ---------------------------------------------------------------------------------------------------------- run


def _check_data(data: Any, attribute: str | None) -> tuple[Any, str]:
    """The real dataset (FolderDataset) and the resolved attribute; DataError before anything runs."""
    from fairsample.data.folder import FolderDataset, find_metadata, load_folder, read_metadata
    from fairsample.data.validate import _NO_GROUPS

    if isinstance(data, FolderDataset):
        ds = data
    else:
        root = Path(data)
        columns = [c for c in read_metadata(find_metadata(root)).columns if c != "file_name"]
        if attribute is not None and attribute not in columns:
            raise DataError(_UNKNOWN_ATTRIBUTE.format(value=attribute, root=root, groups=[], columns=columns))
        try:
            ds = load_folder(root, group_cols=[attribute] if attribute else None)
        except DataError as exc:
            if attribute is None and str(exc).startswith(_NO_GROUPS.split("{")[0]):
                raise DataError(_NO_ATTRIBUTE.format(root=root, columns=columns)) from None
            raise
    columns = [c for c in ds.frame.columns if c != ds.spec.file_col]
    if attribute is None:
        if not ds.spec.groups:
            raise DataError(_NO_ATTRIBUTE.format(root=ds.root, columns=columns))
        attribute = ds.spec.groups[0]
    if attribute not in ds.spec.groups:
        raise DataError(
            _UNKNOWN_ATTRIBUTE.format(value=attribute, root=ds.root, groups=list(ds.spec.groups), columns=columns)
        )
    values = ds.attribute_values()[attribute]
    if len(values) < 2:
        raise DataError(_FEW_VALUES.format(attribute=attribute, n=len(values), values=values, root=ds.root))
    return ds, attribute


def _check_base(ds: Any, profile: StudyProfile) -> None:
    """The embedded base model must know the data's groups, values and labels."""
    if profile.base != "embedded":
        return
    from fairsample.models.bundle import default_model_path

    cfg = json.loads((default_model_path() / "fairsample_config.json").read_text(encoding="utf-8"))
    model = cfg.get("name", "embedded")
    if sorted(cfg.get("groups", [])) != sorted(ds.spec.groups):
        raise DataError(_BASE_MISMATCH.format(what="groups", values=list(ds.spec.groups), model=model,
                                              known=cfg.get("groups"), profile=profile.name))  # fmt: skip
    known_cells = set(cfg.get("cells", []))
    label = ds.spec.label
    missing = sorted({c.to_text(label) for c in ds.cells()} - known_cells)
    if missing:
        known = sorted(known_cells)[:5] + ["..."]
        raise DataError(
            _BASE_MISMATCH.format(what="cells", values=missing[:5], model=model, known=known, profile=profile.name)
        )


def _versions() -> dict[str, str]:
    from fairsample.eval.evaluate import versions

    out = versions(extra=("diffusers", "onnxruntime", "onnx", "accelerate", "botorch"))
    out["cpu_count"] = str(os.cpu_count())
    return out


def run_study(
    data: Any,
    output_dir: str | os.PathLike[str],
    *,
    profile: str = "small",
    methods: Sequence[str] | str | None = None,
    samplers: Sequence[str] | str | None = None,
    seeds: int = 3,
    attribute: str | None = None,
    backend: str = "onnxruntime",
    cache_dir: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    command: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> StudyResult:
    """Run (or resume) the comparison grid and write ``results.json`` and ``RESULTS.md``.

    Args:
        data: the real dataset folder (or :class:`~fairsample.data.folder.FolderDataset`); its train split trains
            the models, its test split tests every downstream classifier.
        output_dir: ``S``: cells go to ``S/cells/``; ``S/results.json``, ``S/RESULTS.md`` and ``S/plots/``.
        profile: ``"small"`` (2-core CPU, ≤ 60 min), ``"full"`` (GPU) or ``"tiny"`` (tests).
        methods, samplers: subsets of :data:`METHODS` / :data:`SAMPLERS` (names or comma lists).
        seeds: downstream classifier seeds 0..N-1 (tables show mean ± sd over them).
        attribute: the sensitive attribute (default: the data's first group column).
        backend: sampling engine, ``"onnxruntime"`` (exported once per model, cached) or ``"torch"``.
        cache_dir: engine artifact store (default ``$FAIRSAMPLE_CACHE_DIR`` or ``~/.cache/fairsample/engines``).
        threads: torch and ONNX Runtime intra-op threads (None: the profile's ``torch_threads`` and ONNX Runtime's
            default).
        command: the command line recorded in the results (the CLI sets it).
        progress: receives one line per cell event.

    Returns:
        :class:`StudyResult`.

    Raises:
        ConfigError: bad options, or an ``output_dir`` holding another study or other files.
        DataError: no usable attribute, or data the profile's base model does not know.

    Example:
        >>> run_study("demo", "study", profile="small")  # doctest: +SKIP
    """
    t_start = time.perf_counter()
    say = progress or (lambda _line: None)
    if backend not in ("onnxruntime", "torch"):
        raise ConfigError(_BAD_BACKEND.format(value=backend))
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(_BAD_THREADS.format(value=threads))
    plan = plan_study(profile=profile, methods=methods, samplers=samplers, seeds=seeds, attribute=attribute or "?")
    ds, attr = _check_data(data, attribute)
    plan = dataclasses.replace(plan, attribute=attr)
    prof = plan.profile
    _check_base(ds, prof)

    root = Path(output_dir).expanduser().absolute()
    identity = {"profile": prof.name, "data": str(Path(ds.root).absolute()), "attribute": attr, "backend": backend}
    study_file = root / "study.json"
    if study_file.is_file():
        old = _read_json(study_file) or {}
        for key, new in identity.items():
            if old.get(key) != new:
                raise ConfigError(_OTHER_STUDY.format(path=root, key=key, old=old.get(key), new=new))
    elif root.exists() and any(root.iterdir()):
        raise ConfigError(_NOT_STUDY.format(path=root))
    root.mkdir(parents=True, exist_ok=True)
    _write_json(study_file, identity | {"schema": SCHEMA, "profile_settings": prof.to_dict()})

    import torch

    old_threads = torch.get_num_threads()
    if threads is not None or prof.torch_threads is not None:
        torch.set_num_threads(threads if threads is not None else prof.torch_threads)  # type: ignore[arg-type]
    runner = _Runner(plan, ds, root, backend=backend, cache_dir=cache_dir, threads=threads, say=say)
    load_start = _load_average()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    _append_jsonl(root / "invocations.jsonl", {"event": "start", "time": started, "command": command,
                                                 "load_average": load_start})  # fmt: skip
    say(f"study {root}: profile {prof.name}, {len(plan.methods)} methods, {len(plan.sets)} sets, "
        f"{len(plan.cells)} cells, attribute {attr!r}, torch threads {torch.get_num_threads()}")  # fmt: skip
    try:
        with _cache_env(cache_dir):
            runner.run_all()
        versions = _versions()  # with the run's torch threads
    finally:
        runner.close()
        torch_threads = torch.get_num_threads()
        torch.set_num_threads(old_threads)

    from fairsample.study_report import build_results, render_markdown, write_plots

    wall = time.perf_counter() - t_start
    load_end = _load_average()
    this_run: dict[str, Any] = {
        "started": started,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_seconds": round(wall, 2),
        "ran": runner.grid.ran,
        "skipped": runner.grid.skipped,
        "load_average": {"start": load_start, "end": load_end},
        "torch_threads": torch_threads,
        "threads_option": threads,
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
    }
    _append_jsonl(root / "invocations.jsonl", {"event": "end", "time": this_run["finished"], "command": command,
                                                 "wall_seconds": this_run["wall_seconds"],
                                                 "ran": len(runner.grid.ran), "skipped": len(runner.grid.skipped),
                                                 "load_average": load_end})  # fmt: skip
    results = build_results(
        plan=plan,
        root=root,
        markers=runner.grid.markers,
        data=ds,
        identity=identity,
        command=command,
        versions=versions,
        run=this_run,
        invocations=_read_jsonl(root / "invocations.jsonl"),
    )
    results["plots"] = write_plots(results, root)
    results_path = root / "results.json"
    _write_json(results_path, results)
    markdown_path = root / "RESULTS.md"
    tmp = markdown_path.with_name(".RESULTS.md.tmp")
    tmp.write_text(render_markdown(results), encoding="utf-8")
    os.replace(tmp, markdown_path)
    return StudyResult(root, results, results_path, markdown_path, runner.grid.ran, runner.grid.skipped,
                       time.perf_counter() - t_start)  # fmt: skip


class _Runner:
    """Executes the plan's cells in order, keeping one engine per model in memory."""

    def __init__(
        self,
        plan: StudyPlan,
        ds: Any,
        root: Path,
        *,
        backend: str,
        cache_dir: str | os.PathLike[str] | None,
        threads: int | None,
        say: Callable[[str], None],
    ) -> None:
        self.plan, self.ds, self.root = plan, ds, root
        self.prof = plan.profile
        self.backend, self.cache_dir, self.threads = backend, cache_dir, threads
        self.grid = _Grid(root, say)
        self.say = say
        self.keys: dict[str, dict[str, Any]] = {}  # cell id -> settings key (downstream keys include upstream ones)
        self.engines: dict[str, Any] = {}
        self.bundles: dict[str, Any] = {}

    # -- helpers ---------------------------------------------------------------------------------------------------
    def close(self) -> None:
        for engine in self.engines.values():
            with contextlib.suppress(Exception):
                engine.close()
        self.engines.clear()

    def _cell(self, kind: str, name: str) -> GridCell:
        for c in self.plan.cells:
            if c.kind == kind and c.name == name:
                return c
        raise KeyError(f"{kind}/{name}")  # pragma: no cover - internal invariant

    def _key(self, cell: GridCell, own: dict[str, Any]) -> dict[str, Any]:
        key = {"cell": cell.id, "settings": own, "needs": {n: _digest(self.keys[n]) for n in cell.needs}}
        self.keys[cell.id] = key
        return key

    def _base_path(self) -> Path:
        if self.prof.base == "scratch":
            return self.grid.folder(self._cell("base", "vanilla")) / "model"
        from fairsample.models.bundle import default_model_path

        return default_model_path()

    def _model_path(self, method: str) -> Path:
        return self.grid.folder(self._cell("train", method)) / "model"

    def _bundle(self, method: str) -> Any:
        if method not in self.bundles:
            from fairsample.models.bundle import ModelBundle

            self.bundles[method] = ModelBundle.load(self._model_path(method))
        return self.bundles[method]

    def _engine(self, method: str) -> Any:
        if method not in self.engines:
            from fairsample.engines import load_engine

            bundle = self._bundle(method)
            options: dict[str, Any] = {}
            if self.backend == "onnxruntime" and self.threads is not None:
                options["intra_op_threads"] = self.threads
            if self.backend == "onnxruntime" and self.prof.exporters:
                options["exporters"] = self.prof.exporters
            self.engines[method] = load_engine(bundle, backend=self.backend, device=self._device(), **options)
        return self.engines[method]

    def _device(self) -> str:
        from fairsample.train.loop import resolve_device

        return resolve_device(self.prof.device)

    def _cells_of_data(self, bundle: Any) -> list[Any]:
        """The model's cells that have real images (the generation plan's cells)."""
        real = {(tuple(sorted(c.groups)), c.label) for c in self.ds.cells()}
        return [c for c in bundle.cells() if (tuple(sorted(c.groups)), c.label) in real]

    def _train_config(self, **changes: Any) -> Any:
        from fairsample.config import TrainConfig

        p = self.prof
        base = TrainConfig(
            max_steps=p.train_steps,
            batch_size=p.batch_size,
            learning_rate=p.learning_rate,
            lr_warmup_steps=p.lr_warmup_steps,
            checkpoint_every=p.checkpoint_every,
            checkpoints_total_limit=1,
            seed=p.train_seed,
            device=p.device,
            split="train",
        )
        return dataclasses.replace(base, **changes)

    def _train(self, folder: Path, cfg: Any) -> dict[str, Any]:
        from fairsample.train.loop import train

        out = folder / "model"
        res = train(self.ds, out, cfg, resume=True, progress=False, log=lambda line: self.say(f"  {line}"))
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # the bundle is complete; keep S small
        return {"bundle": str(out.relative_to(self.root)), "steps": res.steps, "resumed_from": res.resumed_from,
                "final_loss": res.final_loss, "log": str(res.log_path.relative_to(self.root)),
                "train_config": cfg.to_dict()}  # fmt: skip

    # -- the stages ------------------------------------------------------------------------------------------------
    def run_all(self) -> None:
        p = self.prof
        data_key = {"root": str(Path(self.ds.root).absolute()), "n": len(self.ds), "attribute": self.plan.attribute}
        for cell in self.plan.cells:
            if cell.kind == "base":
                cfg = self._train_config(method="vanilla", max_steps=p.base_steps, architecture=p.architecture,
                                         image_size=p.image_size, cross_attention_dim=p.cross_attention_dim,
                                         learning_rate=1e-3, checkpoint_every=0)  # fmt: skip
                self.grid.run(cell, self._key(cell, {"data": data_key, "train": cfg.to_dict()}),
                              functools.partial(self._train, cfg=cfg))  # fmt: skip
            elif cell.kind == "prefs":
                self.grid.run(cell, self._key(cell, {"data": data_key, "base": str(self._base_path()),
                                                     "per_cell": p.prefs_per_cell, "candidates": p.prefs_candidates,
                                                     "steps": p.sample_steps, "backend": self.backend,
                                                     "epochs": p.prefs_classifier_epochs}),
                              self._prefs)  # fmt: skip
            elif cell.kind == "train":
                options: dict[str, Any] = {}
                if cell.name == "fairgen":
                    options["preferences"] = str(self.grid.folder(self._cell("prefs", "fairgen")) / "preferences.csv")
                cfg = self._train_config(method=cell.name, method_options=options, init_from=str(self._base_path()))
                self.grid.run(cell, self._key(cell, {"data": data_key, "train": cfg.to_dict()}),
                              functools.partial(self._train, cfg=cfg))  # fmt: skip
            elif cell.kind == "export":
                self.grid.run(cell, self._key(cell, {"backend": self.backend, "exporters": p.exporters}),
                              functools.partial(self._export, method=cell.name))  # fmt: skip
            elif cell.kind == "tau":
                self.grid.run(cell, self._key(cell, {"n_per_label": p.tau_n_per_label, "grid": p.tau_grid,
                                                     "search_steps": 100, "steps": p.sample_steps,
                                                     "attribute": self.plan.attribute}),
                              functools.partial(self._tau, method=cell.name))  # fmt: skip
            elif cell.kind == "perturbation":
                self.grid.run(cell, self._key(cell, {"iterations": p.perturb_iterations, "n_eval": p.perturb_n_eval,
                                                     "steps": p.sample_steps, "attribute": self.plan.attribute,
                                                     "data": data_key}),
                              functools.partial(self._perturbation, method=cell.name))  # fmt: skip
            elif cell.kind == "generate":
                name, method, sampler = next(s for s in self.plan.sets if s[0] == cell.name)
                self.grid.run(cell, self._key(cell, {"images": p.images_per_set, "steps": p.sample_steps,
                                                     "batch": p.sample_batch, "sampler": sampler,
                                                     "backend": self.backend}),
                              functools.partial(self._generate, method=method, sampler=sampler))  # fmt: skip
                if method in self.engines and not self._still_needed(method, cell):
                    self.engines.pop(method).close()
            elif cell.kind == "evaluate":
                self.close()
                self.grid.run(cell, self._key(cell, {"seeds": list(self.plan.seeds), "epochs": p.eval_epochs,
                                                     "k": p.eval_k, "resamples": p.eval_resamples,
                                                     "feature_epochs": p.eval_feature_epochs,
                                                     "ber_epochs": p.eval_ber_epochs, "size": p.eval_size,
                                                     "sets": [s[0] for s in self.plan.sets], "data": data_key}),
                              self._evaluate)  # fmt: skip

    def _still_needed(self, method: str, after: GridCell) -> bool:
        later = self.plan.cells[self.plan.cells.index(after) + 1 :]
        return any(c.kind in ("generate", "tau", "perturbation") and c.name.split(".")[0] == method for c in later)

    def _prefs(self, folder: Path) -> dict[str, Any]:
        from fairsample.data.splits import split_indices
        from fairsample.models.bundle import ModelBundle
        from fairsample.prefs_build import build_preferences

        p = self.prof
        train_rows = split_indices(self.ds, seed=0)["train"]  # the scorer never sees the val / test images
        res = build_preferences(ModelBundle.load(self._base_path()), self.ds.subset(train_rows), folder,
                                per_cell=p.prefs_per_cell, candidates=p.prefs_candidates, steps=p.sample_steps,
                                classifier_epochs=p.prefs_classifier_epochs, batch_size=p.sample_batch,
                                backend=self.backend, device=self._device(),
                                log=lambda line: self.say(f"  {line}"))  # fmt: skip
        return {"preferences": str(res.preferences.relative_to(self.root)), "n_pairs": res.n_pairs,
                "n_candidates": res.n_candidates, "source": res.doc.get("source"),
                "scorer_data": "real train split only"}  # fmt: skip

    def _export(self, folder: Path, method: str) -> dict[str, Any]:
        engine = self._engine(method)
        manifest = dict(getattr(engine, "manifest", {}) or {})
        return {"backend": engine.backend, "engine_key": manifest.get("key"), "model": str(self._model_path(method))}

    def _tau(self, folder: Path, method: str) -> dict[str, Any]:
        from fairsample.tau_search import plot_tau, resolve_tau

        p = self.prof
        bundle, engine = self._bundle(method), self._engine(method)
        attr = self.plan.attribute
        values = bundle.attribute_values[attr]
        ordered = [(s0, s1) for s0 in values for s1 in values if s0 != s1]
        # tau_search.resolve_tau: argmin of the mean J over the ordered pairs, on a 100-step search schedule
        res, info = resolve_tau(bundle, engine, attribute=attr, pairs=ordered, n_per_label=p.tau_n_per_label,
                                search_steps=100, grid=p.tau_grid)  # fmt: skip
        plot = plot_tau(res, folder / "tau.png")
        doc = {"tau_star": res.tau_star, "step_index": res.step_index, "search_steps": res.search_steps,
               "rule": info["rule"], "taus": res.taus, "objective": res.objective, "pairs": info["pairs"],
               "plot": str(plot.relative_to(self.root))}  # fmt: skip
        _write_json(folder / "tau.json", doc)
        return {"tau_star": res.tau_star, "step_index": res.step_index, "search_steps": res.search_steps,
                "tau_json": str((folder / "tau.json").relative_to(self.root)),
                "pairs": {k: v["tau_star"] for k, v in info["pairs"].items()}, "plot": doc["plot"]}  # fmt: skip

    def _perturbation(self, folder: Path, method: str) -> dict[str, Any]:
        from fairsample.samplers.perturbed import Perturbation

        p = self.prof
        path = folder / "perturbation.json"
        if p.perturb_iterations is None:
            reason = f"profile {p.name!r} does not search offsets: zero offsets (= conditional sampling)"
            meta = {"kept": "zero", "searched": False, "reason": reason}
            Perturbation(meta=meta).save(path)
            return {"perturbation": str(path.relative_to(self.root)), "kept": "zero", "searched": False}
        from fairsample.tune_perturbation import tune_perturbation

        res = tune_perturbation(self._bundle(method), self._engine(method), self.ds, attribute=self.plan.attribute,
                                n_eval=p.perturb_n_eval, iterations=p.perturb_iterations, steps=p.sample_steps,
                                seed=0, progress=lambda line: self.say(f"  {line}"))  # fmt: skip
        res.perturbation.save(path)
        return {"perturbation": str(path.relative_to(self.root)), "kept": res.kept, "searched": True,
                "evaluations": len(res.trace), "held_out": res.held_out,
                "guidance": res.perturbation.to_dict().get("guidance"),
                "temperature": res.perturbation.to_dict().get("temperature")}  # fmt: skip

    def _generate(self, folder: Path, method: str, sampler: str) -> dict[str, Any]:
        from fairsample.pipeline import FairSamplePipeline, GenerationPlan

        p = self.prof
        bundle = self._bundle(method)
        pipe = FairSamplePipeline(bundle, engine=self._engine(method), device=self._device())
        options: dict[str, Any] = {}
        attr = self.plan.attribute
        if sampler == "attribute_switch":
            tau = self.grid.markers[f"tau/{method}"]["outputs"]["tau_star"]
            options = {"attribute": attr, "tau": tau}
            if len(bundle.attribute_values[attr]) > 2:
                options["to"] = "uniform"
        elif sampler == "fairdiffusion_perturbed":
            pert = self.grid.folder(self._cell("perturbation", method)) / "perturbation.json"
            options = {"perturbation": str(pert)}
        cfg = pipe.default_config().replace(sampler=sampler, sampler_options=options, steps=p.sample_steps,
                                            batch_size=p.sample_batch, backend=self.backend,
                                            device=self._device())  # fmt: skip
        plan = GenerationPlan.balanced(self._cells_of_data(bundle), p.images_per_set)  # seeds 0..N-1 in every set
        res = pipe.generate_to_folder(folder / "set", plan, cfg, progress=False)
        return {"set": str((folder / "set").relative_to(self.root)), "n_images": res.n_images,
                "n_generated_now": res.n_generated, "sample_config": cfg.to_dict(),
                "plan_digest": plan.digest(bundle.label_name), "model": str(self._model_path(method))}  # fmt: skip

    def _evaluate(self, folder: Path) -> dict[str, Any]:
        from fairsample.eval.evaluate import evaluate

        p = self.prof
        sets = {name: self.grid.folder(self._cell("generate", name)) / "set" for name, _, _ in self.plan.sets}
        t0 = time.perf_counter()
        res = evaluate(
            self.ds,
            sets,
            attribute=self.plan.attribute,
            protocols=("real_only", "real_plus_synthetic"),
            seeds=self.plan.seeds,
            epochs=p.eval_epochs,
            size=p.eval_size or self._bundle(self.plan.methods[0]).image_shape[-1],
            k=p.eval_k,
            n_resamples=p.eval_resamples,
            seed=0,
            feature_epochs=p.eval_feature_epochs,
            ber_epochs=p.eval_ber_epochs,
            allow_few_seeds=len(self.plan.seeds) < 3,
            progress=lambda line: self.say(f"  [{time.perf_counter() - t0:6.1f} s] {line}"),
        )
        res.command = "fairsample.study.run_study (one evaluate call over every set)"
        files = res.save(folder / "report", overwrite=True)
        return {"report": str(Path(files["json"]).relative_to(self.root)),
                "markdown": str(Path(files["markdown"]).relative_to(self.root)),
                "plots": {k: str(Path(v).relative_to(self.root)) for k, v in files["plots"].items()},
                "seconds_by_stage": res.report["run"]["seconds"]}  # fmt: skip


@contextlib.contextmanager
def _cache_env(cache_dir: str | os.PathLike[str] | None) -> Iterator[None]:
    """``$FAIRSAMPLE_CACHE_DIR`` = ``cache_dir`` for the run, so engines, preference candidates and τ share it."""
    if cache_dir is None:
        yield
        return
    from fairsample.export.cache import CACHE_ENV

    old = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(Path(cache_dir).expanduser().absolute())
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = old


def pooled_sd(sd_a: float | None, sd_b: float | None) -> float | None:
    """√((sd_a² + sd_b²) / 2), None when either is undefined."""
    if sd_a is None or sd_b is None or not (math.isfinite(sd_a) and math.isfinite(sd_b)):
        return None
    return math.sqrt((sd_a**2 + sd_b**2) / 2.0)

"""Quality per second: images/s and fidelity of every (scheduler, steps, backend) setting, against the anchor.

The protocol is fixed in ``docs/decisions.md`` ("Quality per second (issue #15)") and followed step by step:

1. *Reference.* The real test split of ``dataset``; a DomainFeatures module trained once on its train split (the
   evaluation module's feature space) and the conditioning judges (:func:`fairsample.evaluation.conditioning.
   train_judges`, trained on the train split).
2. *Anchor.* The plain loop a user writes: torch eager (batched), DDIM (``anchor_scheduler``; not the bundle's
   recommended scheduler, which ``--apply`` changes), ``anchor_steps`` steps, the bundle's guidance. It is sampled
   on ``len(anchor_seed_sets)`` disjoint seed sets; the sd over them is the sampling noise of every fidelity number.
3. *Fidelity per setting.* ``n_images`` images (the model's cells in turn, seeds ``0..n_images-1``, the same for
   every setting: paired noise) on the first float32 fidelity backend (onnxruntime where installed: its images match
   torch within the engines' validation tolerance); FID and KID against the real test split, label and attribute
   accuracy of the samples under the judges.
4. *Speed per setting and backend.* Wall time of ``speed_images`` images in batches of ``batch``, after one untimed
   batch, best of ``repeats``, backends interleaved; images/s and speed-up over the anchor timed the same way (before
   the grid, between scheduler groups and after it; the best anchor timing is used).
5. *Verdict.* Within noise of the anchor ⇔ FID ≤ anchor + z·sd, KID ≤ anchor + z·sd, every accuracy ≥ anchor − z·sd
   (z = 2; accuracy sd floored at the binomial sd). The recommended setting is the fastest one within noise (ties:
   fewer steps).

Everything runs in one process, so the ratios compare like with like. :func:`pareto_plot` draws images/s against
FID with the Pareto front and the anchor.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fairsample.core.errors import ConfigError
from fairsample.evaluation.metric_info import METRICS

__all__ = [
    "QualitySetting",
    "apply_recommendation",
    "pareto_plot",
    "run_quality_bench",
    "speed_record",
    "within_noise",
]

SCHEMA = "fairsample.workflows.quality_bench/1"
#: the solvers compared by default (issue #15 §2), all diffusers schedulers built from the bundle's config
DEFAULT_SCHEDULERS = ("ddim", "euler", "dpmsolver++", "dpmsolver++3m", "unipc", "deis")
DEFAULT_STEPS = (5, 8, 12, 20, 30, 50)
Z = 2.0
_BAD_LIST = "`{name}` must be a non-empty list of {what}, got {value!r}."
_BAD_INT = "`{name}` must be an int >= {low}, got {value!r}."


@dataclass(frozen=True)
class QualitySetting:
    """One sampling setting: a diffusers scheduler name and a step count."""

    scheduler: str
    steps: int

    @property
    def key(self) -> str:
        """``"dpmsolver++/12"``."""
        return f"{self.scheduler}/{self.steps}"


def _check(
    schedulers: Sequence[str],
    steps: Sequence[int],
    n_images: int,
    batch: int,
    speed_images: int,
    anchor_scheduler: str = "ddim",
) -> None:
    """Option checks before any model or data work (the messages name the option and the fix)."""
    from fairsample.samplers.schedulers import SCHEDULER_NAMES

    if anchor_scheduler not in SCHEDULER_NAMES:
        raise ConfigError(
            f"`anchor_scheduler` must be one of {list(SCHEDULER_NAMES)}, got {anchor_scheduler!r}; the protocol's "
            "anchor is 'ddim'."
        )

    if not schedulers or any(s not in SCHEDULER_NAMES for s in schedulers):
        raise ConfigError(
            _BAD_LIST.format(name="schedulers", what=f"names among {list(SCHEDULER_NAMES)}", value=schedulers)
        )
    if not steps or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in steps):
        raise ConfigError(_BAD_LIST.format(name="steps", what="ints >= 1", value=steps))
    for name, value, low in (("n_images", n_images, 2), ("batch", batch, 1), ("speed_images", speed_images, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(_BAD_INT.format(name=name, low=low, value=value))


# ------------------------------------------------------------------------------------------------ 1. reference


@dataclass
class _Reference:
    """The real test images ``(M, H, W, 3)`` uint8, the feature module and the judges."""

    test_images: np.ndarray
    features: Any
    judges: Any
    n_train: int


def _reference(
    dataset: Any, size: int, seed: int, feature_epochs: int | None, say: Callable[[str], None]
) -> _Reference:
    """Step 1: the real test split, DomainFeatures trained on the train split, the conditioning judges."""
    from fairsample.data.splits import split_indices
    from fairsample.evaluation.conditioning import train_judges
    from fairsample.evaluation.features import DomainFeatures

    parts = split_indices(dataset, seed=seed)
    test = np.stack([np.asarray(dataset.load_image(int(i), size=size), np.uint8) for i in parts["test"]])
    say(f"reference: {len(test)} real test images; training the feature module on {len(parts['train'])} images")
    features = DomainFeatures.fit_folder(dataset, rows=parts["train"], size=size, epochs=feature_epochs, seed=seed)
    say("reference: conditioning judges (cached after the first run)")
    judges = train_judges(dataset, size=size, seed=seed, split_seed=seed)
    return _Reference(test, features, judges, len(parts["train"]))


# ------------------------------------------------------------------------------------------------ 2-3. fidelity


def _plan(cells: Sequence[Any], n: int, first_seed: int) -> tuple[list[Any], list[int]]:
    """The model's cells in turn and consecutive seeds: ``n`` images."""
    return [cells[i % len(cells)] for i in range(n)], list(range(first_seed, first_seed + n))


def _sample(
    pipe: Any, cells: list[Any], seeds: list[int], setting: QualitySetting, batch: int, guidance: float
) -> np.ndarray:
    """``(N, H, W, 3)`` uint8 samples of ``setting``."""
    out = pipe(
        cells,
        seeds,
        steps=setting.steps,
        scheduler=setting.scheduler,
        guidance_scale=guidance,
        batch_size=batch,
        output_type="np",
    )
    return np.rint(np.asarray(out.images) * 255.0).astype(np.uint8)


def _fidelity(images: np.ndarray, cells: Sequence[Any], ref: _Reference, seed: int) -> dict[str, Any]:
    """FID, KID (mean) against the real test split and the judges' accuracy per target."""
    from fairsample.evaluation.generative import fid, kid

    kid_mean, _ = kid(ref.test_images, images, features=ref.features, seed=seed)
    pred = ref.judges.predict(images)
    acc = {}
    for target in ref.judges.targets:
        want = [c.label if target == ref.judges.label else dict(c.groups)[target] for c in cells]
        acc[target] = float(np.mean([str(p) == str(w) for p, w in zip(pred[target], want, strict=True)]))
    return {"fid": fid(ref.test_images, images, features=ref.features), "kid": float(kid_mean), "accuracy": acc}


def _noise(runs: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """Mean and sd (ddof=1) of the anchor's numbers over its seed sets; accuracy sd floored at the binomial sd."""
    out: dict[str, Any] = {}
    for key in ("fid", "kid"):
        v = np.array([r[key] for r in runs], dtype=float)
        out[key] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "values": v.tolist()}
    out["accuracy"] = {}
    for target in runs[0]["accuracy"]:
        v = np.array([r["accuracy"][target] for r in runs], dtype=float)
        p = float(v.mean())
        sd = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        binomial = math.sqrt(max(p * (1 - p), 1.0 / n) / n)  # never 0: one image of n is the resolution
        out["accuracy"][target] = {"mean": p, "sd": max(sd, binomial), "sd_seed_sets": sd, "values": v.tolist()}
    return out


def within_noise(row: dict[str, Any], noise: dict[str, Any], z: float = Z) -> dict[str, Any]:
    """Whether one setting's fidelity is within ``z`` sd of the anchor (one-sided: better is fine).

    Args:
        row: ``{"fid", "kid", "accuracy": {target: acc}}``.
        noise: the anchor's ``{"fid": {"mean", "sd"}, "kid": {...}, "accuracy": {target: {"mean", "sd"}}}``.
        z: the tolerance in anchor sds.

    Returns:
        ``{"ok": bool, "failed": [reason, ...]}``.

    Example:
        >>> noise = {"fid": {"mean": 1.0, "sd": 0.1}, "kid": {"mean": 0.01, "sd": 0.005},
        ...          "accuracy": {"label": {"mean": 0.9, "sd": 0.02}}}
        >>> within_noise({"fid": 1.15, "kid": 0.0, "accuracy": {"label": 0.85}}, noise)
        {'ok': False, 'failed': ['label accuracy 0.850 < 0.860']}
    """
    failed = []
    for key in ("fid", "kid"):
        limit = noise[key]["mean"] + z * noise[key]["sd"]
        if not row[key] <= limit:
            failed.append(f"{key.upper()} {row[key]:.4g} > {limit:.4g}")
    for target, acc in row["accuracy"].items():
        a = noise["accuracy"][target]
        limit = a["mean"] - z * a["sd"]
        if not acc >= limit:
            failed.append(f"{target} accuracy {acc:.3f} < {limit:.3f}")
    return {"ok": not failed, "failed": failed}


# ------------------------------------------------------------------------------------------------ 4. speed


def _images_per_s(
    pipe: Any, cells: list[Any], setting: QualitySetting, batch: int, guidance: float, n: int, repeats: int
) -> float:
    """Best-of-``repeats`` images/s for ``n`` images in batches of ``batch`` after one untimed batch."""
    c, s = _plan(cells, n, 0)
    _sample(pipe, c[:batch], s[:batch], setting, batch, guidance)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        _sample(pipe, c, s, setting, batch, guidance)
        best = min(best, time.perf_counter() - t0)
    return n / best


# ------------------------------------------------------------------------------------------------ the run


#: backends whose images differ from float32 (reduced precision): each gets its own fidelity row per setting
REDUCED_PRECISION = {"openvino-bf16": "bf16"}
BACKEND_NAMES = ("torch-eager", "onnxruntime", *REDUCED_PRECISION)


def _pipelines(bundle: Any, backends: Sequence[str], cache_dir: Any) -> dict[str, Any]:
    """``{backend: FairSamplePipeline}``: ``torch-eager`` (batched, the anchor's engine), ``onnxruntime`` and
    ``openvino-bf16`` (:func:`fairsample.engines.openvino_engine.load_bf16_engine`: refused without CPU bf16, and
    only after its image gate passes)."""
    from fairsample.engines import load_engine
    from fairsample.generation.pipeline import FairSamplePipeline

    out = {}
    for name in backends:
        if name == "torch-eager":
            engine = load_engine(bundle, "torch", batch_invariant=False)
        elif name == "onnxruntime":
            engine = load_engine(bundle, "onnxruntime", cache_dir=cache_dir)
        elif name == "openvino-bf16":
            from fairsample.engines.openvino_engine import load_bf16_engine

            engine = load_bf16_engine(bundle, cache_dir=cache_dir)
        else:
            raise ConfigError(f"`backends` entries must be among {list(BACKEND_NAMES)}, got {name!r}.")
        out[name] = FairSamplePipeline(bundle, engine=engine)
    return out


def run_quality_bench(
    bundle: Any,
    dataset: Any,
    *,
    schedulers: Sequence[str] = DEFAULT_SCHEDULERS,
    steps: Sequence[int] = DEFAULT_STEPS,
    backends: Sequence[str] | None = None,
    n_images: int = 150,
    batch: int = 8,
    speed_images: int = 64,
    repeats: int = 2,
    anchor_steps: int = 50,
    anchor_scheduler: str = "ddim",
    anchor_seed_sets: Sequence[int] = (0, 10_000, 20_000),
    seed: int = 0,
    feature_epochs: int | None = None,
    cache_dir: Any = None,
    progress: Callable[[str], None] | None = None,
    confirm: bool = True,
    confirm_tries: int = 4,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Measure images/s and fidelity of every (scheduler, steps) × backend setting against the 50-step anchor.

    Args:
        bundle: a model bundle (:class:`~fairsample.models.bundle.ModelBundle`).
        dataset: the real data the model was trained on (a :class:`~fairsample.data.folder.FolderDataset` with the
            model's label and attribute columns); its test split is the reference.
        schedulers: scheduler names (:data:`fairsample.samplers.SCHEDULER_NAMES`).
        steps: step counts per scheduler.
        backends: float32 backends timed (default: ``torch-eager`` and, when installed, ``onnxruntime``); fidelity is
            measured on the last of them.
        n_images: images per fidelity measurement (the cells in turn).
        batch: images per sampling call B.
        speed_images: images per timed run; repeats: timed runs (best kept).
        anchor_steps: the anchor's steps (torch eager).
        anchor_scheduler: the anchor's scheduler; fixed (DDIM, the plain loop) rather than the bundle's recommended
            one, so that applying a recommendation (``--apply``) does not move the anchor of the next run.
        anchor_seed_sets: first seeds of the anchor's disjoint seed sets (its noise); at least 2.
        seed: feature module, judges, data split and KID subsets.
        feature_epochs: DomainFeatures epochs (None: the evaluation module's default).
        cache_dir: engine artifact cache.
        progress: receives one line per finished measurement.
        confirm: run the confirmation step (docs/decisions.md): the recommended setting and the fastest at any
            precision are sampled again on the anchor's other seed sets and kept only if the mean over all seed sets
            is within noise; otherwise the next candidate is tried (at most ``confirm_tries`` each). The
            single-seed-set choice stays in ``unconfirmed``; every try is in ``confirmation``.
        on_row: receives each finished row (and each skipped setting) as it is measured, so a long run that is
            interrupted keeps what it measured (the CLI appends them to ``<output>.rows.jsonl``).

    Returns:
        JSON-safe ``{"schema", "machine", "config", "anchor": {...}, "rows": [{"scheduler", "steps", "fid", "kid",
        "accuracy", "within_noise", "speed": {backend: {"images_per_s", "speedup_over_anchor"}}}], "recommended",
        "best_speedup_within_noise"}``.

    Raises:
        ConfigError: a bad option (named).

    Example:
        >>> doc = run_quality_bench(bundle, load_folder("demo"), schedulers=["unipc"], steps=[10])  # doctest: +SKIP
        >>> doc["recommended"]  # doctest: +SKIP
    """

    import torch

    _check(schedulers, steps, n_images, batch, speed_images, anchor_scheduler)
    if len(anchor_seed_sets) < 2:
        raise ConfigError(
            f"`anchor_seed_sets` needs at least 2 first seeds for the anchor's noise, got {list(anchor_seed_sets)}."
        )
    say = progress or (lambda _line: None)
    names = list(backends or default_backends())
    if "torch-eager" not in names:
        names.insert(0, "torch-eager")
    reduced = [b for b in names if b in REDUCED_PRECISION]
    fp32 = [b for b in names if b not in REDUCED_PRECISION]
    t_start = time.perf_counter()
    size = int(bundle.image_shape[-1])
    defaults = bundle.sampling_defaults()
    guidance = float(defaults.get("guidance_scale", 1.0))
    anchor = QualitySetting(anchor_scheduler, int(anchor_steps))
    cells = bundle.cells()

    ref = _reference(dataset, size, seed, feature_epochs, say)
    pipes = _pipelines(bundle, names, cache_dir)
    fidelity_backend = fp32[-1]

    # 2. the anchor on its seed sets (its noise)
    anchor_runs = []
    for first in anchor_seed_sets:
        c, s = _plan(cells, n_images, int(first))
        anchor_runs.append(_fidelity(_sample(pipes["torch-eager"], c, s, anchor, batch, guidance), c, ref, seed))
        last = anchor_runs[-1]
        say(f"anchor {anchor.key} seeds {first}..: FID {last['fid']:.4g}, accuracy {last['accuracy']}")
    noise = _noise(anchor_runs, n_images)

    def time_anchor() -> float:
        """The anchor's images/s, timed again between scheduler groups; the best of all timings is the anchor's
        speed, so a slow moment of a shared machine does not inflate every speed-up."""
        ips = _images_per_s(pipes["torch-eager"], cells, anchor, batch, guidance, speed_images, repeats)
        anchor_timings.append(round(ips, 3))
        return max(anchor_timings)

    anchor_timings: list[float] = []
    say(f"anchor speed: {time_anchor():.2f} images/s (torch eager, B={batch})")

    # 3-4. every setting
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    c, s = _plan(cells, n_images, int(anchor_seed_sets[0]))
    for name in schedulers:
        if anchor_timings and name != schedulers[0]:
            time_anchor()
        for n_steps in steps:
            setting = QualitySetting(name, int(n_steps))
            try:
                fidelity = _fidelity(_sample(pipes[fidelity_backend], c, s, setting, batch, guidance), c, ref, seed)
            except ConfigError as err:  # a setting this model cannot run (repeated timesteps): recorded, not fatal
                skipped.append({"scheduler": name, "steps": int(n_steps), "error": str(err)})
                if on_row is not None:
                    on_row(skipped[-1])
                say(f"{setting.key:18s} SKIPPED: {err}")
                continue
            speed = {}
            for backend, pipe in pipes.items():  # interleaved per setting
                ips = _images_per_s(pipe, cells, setting, batch, guidance, speed_images, repeats)
                speed[backend] = {"images_per_s": round(ips, 3)}
            verdict = within_noise(fidelity, noise)
            row = {"scheduler": name, "steps": int(n_steps), **fidelity, "within_noise": verdict, "speed": speed}
            for backend in reduced:  # reduced precision changes the images: its own fidelity and verdict
                own = _fidelity(_sample(pipes[backend], c, s, setting, batch, guidance), c, ref, seed)
                row.setdefault("reduced_precision", {})[backend] = {**own, "within_noise": within_noise(own, noise)}
            rows.append(row)
            if on_row is not None:
                on_row(row)
            best = max(v["images_per_s"] for v in speed.values())
            anchor_ips = max(anchor_timings)
            say(
                f"{setting.key:18s} {METRICS['fid'].name}={fidelity['fid']:.4g} "
                f"{METRICS['kid'].name}={fidelity['kid']:.4g} "
                f"acc {' '.join(f'{k}={v:.3f}' for k, v in fidelity['accuracy'].items())} "
                f"{best:.2f} img/s ({best / anchor_ips:.2f}×) "
                + ("within noise" if verdict["ok"] else "OUT: " + "; ".join(verdict["failed"]))
            )
    time_anchor()
    anchor_ips = max(anchor_timings)
    for r in rows:  # speed-ups against the best anchor timing of the whole run
        for v in r["speed"].values():
            v["speedup_over_anchor"] = round(v["images_per_s"] / anchor_ips, 3)
    fastest, best_any = _choose(rows, fp32, reduced)
    doc = {
        "schema": SCHEMA,
        "machine": _machine(torch),
        "config": {
            "model": getattr(bundle, "bundle_id", None),
            "data": str(getattr(dataset, "root", "")),
            "n_reference": int(len(ref.test_images)),
            "n_feature_train": ref.n_train,
            "n_images": n_images,
            "batch": batch,
            "speed_images": speed_images,
            "repeats": repeats,
            "guidance_scale": guidance,
            "seed": seed,
            "z": Z,
            "backends": names,
            "fidelity_backend": fidelity_backend,
            "precision": {b: REDUCED_PRECISION.get(b, "float32") for b in names},
            "protocol": "docs/decisions.md, 'Quality per second (issue #15)'",
        },
        "anchor": {
            "scheduler": anchor.scheduler,
            "steps": anchor.steps,
            "backend": "torch-eager",
            "seed_sets": [int(x) for x in anchor_seed_sets],
            "runs": anchor_runs,
            "noise": noise,
            "images_per_s": round(anchor_ips, 3),
            "images_per_s_timings": anchor_timings,
        },
        "rows": rows,
        "skipped": skipped,
        "recommended": None
        if fastest is None
        else {
            "scheduler": fastest["scheduler"],
            "steps": fastest["steps"],
            "backend": max(fp32, key=lambda b: fastest["speed"][b]["images_per_s"]),
            "speed": fastest["speed"],
        },
        "best_speedup_within_noise": None
        if fastest is None
        else max(fastest["speed"][b]["speedup_over_anchor"] for b in fp32),
        "fastest_within_noise_any_precision": best_any,
    }
    try:
        if confirm:
            _apply_confirmation(doc, pipes, ref, cells, confirm_tries, say)
    finally:
        for p in pipes.values():
            p.engine.close()
    doc["seconds"] = round(time.perf_counter() - t_start, 1)
    return doc


def default_backends() -> list[str]:
    """``torch-eager``, plus ``onnxruntime`` where installed, plus ``openvino-bf16`` where openvino is installed and
    the CPU has native bf16 (:func:`fairsample.engines.openvino_engine.bf16_supported`)."""
    import importlib.util

    names = ["torch-eager"]
    if importlib.util.find_spec("onnxruntime") is not None:
        names.append("onnxruntime")
    if importlib.util.find_spec("openvino") is not None:
        from fairsample.engines.openvino_engine import bf16_supported

        if bf16_supported()[0]:
            names.append("openvino-bf16")
    return names


def _ranked(
    rows: list[dict[str, Any]], fp32: list[str], reduced: list[str]
) -> tuple[list[tuple[dict[str, Any], str]], list[tuple[dict[str, Any], str]]]:
    """Within-noise candidates, fastest first (ties: fewer steps): ``(float32: [(row, its fastest float32 backend)],
    any precision: [(row, backend)])``; a reduced-precision backend counts where its own images are within noise."""

    def fastest_fp32(r: dict[str, Any]) -> str:
        return max(fp32, key=lambda b: r["speed"][b]["images_per_s"])

    ok = [r for r in rows if r["within_noise"]["ok"]]
    float32 = sorted(
        ((r, fastest_fp32(r)) for r in ok), key=lambda rb: (-rb[0]["speed"][rb[1]]["images_per_s"], rb[0]["steps"])
    )
    anyp = [(r, b) for r in ok for b in fp32]
    anyp += [(r, b) for r in rows for b in reduced if r["reduced_precision"][b]["within_noise"]["ok"]]
    anyp.sort(key=lambda rb: (-rb[0]["speed"][rb[1]]["images_per_s"], rb[0]["steps"]))
    return float32, anyp


def _choose(rows: list[dict[str, Any]], fp32: list[str], reduced: list[str]) -> tuple[Any, Any]:
    """(the fastest float32 row within noise — ties: fewer steps — or None; the fastest (setting, backend) within
    noise at any precision: ``{"scheduler", "steps", "backend", "precision", "images_per_s", "speedup_over_anchor"}``
    or None)."""
    float32, anyp = _ranked(rows, fp32, reduced)
    fastest = float32[0][0] if float32 else None
    return fastest, (_best_entry(*anyp[0]) if anyp else None)


def _best_entry(r: dict[str, Any], b: str) -> dict[str, Any]:
    return {
        "scheduler": r["scheduler"],
        "steps": r["steps"],
        "backend": b,
        "precision": REDUCED_PRECISION.get(b, "float32"),
        **r["speed"][b],
    }


def _confirm(
    candidates: list[tuple[dict[str, Any], str]],
    sample_fidelity: Callable[[str, QualitySetting, int], dict[str, Any]],
    noise: dict[str, Any],
    seed_sets: Sequence[int],
    max_tries: int,
    say: Callable[[str], None],
) -> tuple[tuple[dict[str, Any], str] | None, list[dict[str, Any]]]:
    """The confirmation step (docs/decisions.md): each candidate in turn, fastest first, is sampled again on the
    anchor's other seed sets; it is confirmed when the mean of its numbers over all seed sets passes
    :func:`within_noise` against the anchor's mean and sd. Returns (the first confirmed candidate or None, the
    record of every try)."""
    tried: list[dict[str, Any]] = []
    for r, b in candidates[:max_tries]:
        setting = QualitySetting(r["scheduler"], int(r["steps"]))
        first = r if b not in REDUCED_PRECISION else r["reduced_precision"][b]
        runs = [{"fid": first["fid"], "kid": first["kid"], "accuracy": dict(first["accuracy"])}]
        runs += [sample_fidelity(b, setting, int(s)) for s in seed_sets[1:]]
        mean = {
            "fid": float(np.mean([x["fid"] for x in runs])),
            "kid": float(np.mean([x["kid"] for x in runs])),
            "accuracy": {k: float(np.mean([x["accuracy"][k] for x in runs])) for k in runs[0]["accuracy"]},
        }
        verdict = within_noise(mean, noise)
        tried.append(
            {
                "scheduler": setting.scheduler,
                "steps": setting.steps,
                "backend": b,
                "runs": runs,
                "mean": mean,
                "within_noise": verdict,
            }
        )
        say(
            f"confirm {setting.key} on {b}: mean over {len(runs)} seed sets {METRICS['fid'].name} {mean['fid']:.4g} "
            f"{METRICS['kid'].name} {mean['kid']:.4g} -> "
            + ("confirmed" if verdict["ok"] else "OUT: " + "; ".join(verdict["failed"]))
        )
        if verdict["ok"]:
            return (r, b), tried
    return None, tried


def confirm_quality(
    bundle: Any,
    dataset: Any,
    doc: dict[str, Any],
    *,
    max_tries: int = 4,
    cache_dir: Any = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the confirmation step on a finished ``bench --quality`` document (one written before the step existed,
    or with ``confirm=False``): rebuilds the same reference (same seed: same feature module and judges) and
    engines, confirms the float32 recommendation and the fastest setting at any precision, and returns ``doc`` with
    ``confirmation``, ``recommended`` and ``fastest_within_noise_any_precision`` set from the confirmed settings.

    Example:
        >>> doc = confirm_quality(bundle, load_folder("demo"), json.load(open("quality.json")))  # doctest: +SKIP
    """
    say = progress or (lambda _line: None)
    cfg = doc["config"]
    names = list(cfg["backends"])
    ref = _reference(dataset, int(bundle.image_shape[-1]), int(cfg["seed"]), None, say)
    pipes = _pipelines(bundle, names, cache_dir)
    try:
        _apply_confirmation(doc, pipes, ref, bundle.cells(), max_tries, say)
    finally:
        for p in pipes.values():
            p.engine.close()
    return doc


def _apply_confirmation(
    doc: dict[str, Any], pipes: dict[str, Any], ref: _Reference, cells: Sequence[Any], max_tries: int, say: Any
) -> None:
    """Confirm ``doc``'s candidates in place (see :func:`_confirm`)."""
    cfg, anchor = doc["config"], doc["anchor"]
    names = list(cfg["backends"])
    reduced = [b for b in names if b in REDUCED_PRECISION]
    fp32 = [b for b in names if b not in REDUCED_PRECISION]
    n, batch, guidance, seed = int(cfg["n_images"]), int(cfg["batch"]), float(cfg["guidance_scale"]), int(cfg["seed"])

    def sample_fidelity(backend: str, setting: QualitySetting, first: int) -> dict[str, Any]:
        c, s = _plan(cells, n, first)
        pipe = pipes[cfg["fidelity_backend"] if backend not in REDUCED_PRECISION else backend]
        return _fidelity(_sample(pipe, c, s, setting, batch, guidance), c, ref, seed)

    float32, anyp = _ranked(doc["rows"], fp32, reduced)
    seed_sets = anchor["seed_sets"]
    got32, tried32 = _confirm(float32, sample_fidelity, anchor["noise"], seed_sets, max_tries, say)
    if anyp and got32 is not None and anyp[0][0] is got32[0] and anyp[0][1] == got32[1]:
        gotany, triedany = got32, []
    else:
        gotany, triedany = _confirm(anyp, sample_fidelity, anchor["noise"], seed_sets, max_tries, say)
    doc["confirmation"] = {
        "rule": "mean over the anchor's seed sets within noise of the anchor's mean (docs/decisions.md)",
        "float32": tried32,
        "any_precision": triedany,
    }
    doc["unconfirmed"] = {
        "recommended": doc.get("recommended"),
        "fastest_within_noise_any_precision": doc.get("fastest_within_noise_any_precision"),
    }
    if got32 is None:
        doc["recommended"], doc["best_speedup_within_noise"] = None, None
    else:
        r, b = got32
        doc["recommended"] = {"scheduler": r["scheduler"], "steps": r["steps"], "backend": b, "speed": r["speed"]}
        doc["best_speedup_within_noise"] = max(r["speed"][x]["speedup_over_anchor"] for x in fp32)
    doc["fastest_within_noise_any_precision"] = None if gotany is None else _best_entry(*gotany)


def _machine(torch: Any) -> dict[str, Any]:
    """Where the numbers come from: platform, CPU flags that matter (bf16), library versions."""
    from fairsample.core.provenance import package_versions

    flags = set()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        flags = set(next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []))
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "cpu_bf16": bool(flags & {"avx512_bf16", "amx_bf16"}),
        "cuda": bool(torch.cuda.is_available()),
        "versions": package_versions(("torch", "diffusers", "onnxruntime")),
    }


# ------------------------------------------------------------------------------------------------ plot


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both images/s (higher) and FID (lower), by images/s.

    Example:
        >>> pareto_front([(1.0, 1.0), (2.0, 2.0), (1.5, 3.0), (3.0, 2.5)])
        [0, 1, 3]
    """
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], points[i][1]))
    front, best_fid = [], math.inf
    for i in order:
        if points[i][1] < best_fid:
            front.append(i)
            best_fid = points[i][1]
    return sorted(front, key=lambda i: points[i][0])


def pareto_plot(doc: dict[str, Any], path: str | Path) -> Path:
    """Images/s (log x, fastest float32 backend per setting) against FID, one colour per scheduler, step counts
    printed; hollow = outside the anchor's noise; the anchor starred with its ``+2 sd`` FID band; the Pareto front
    dashed."""
    from matplotlib.figure import Figure

    rows, anchor = doc["rows"], doc["anchor"]
    fig = Figure(figsize=(8.0, 5.2), dpi=110, layout="constrained")
    ax = fig.subplots()
    colors = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
    schedulers = list(dict.fromkeys(r["scheduler"] for r in rows))
    pts = [
        (max(v["images_per_s"] for b, v in r["speed"].items() if b not in REDUCED_PRECISION), r["fid"]) for r in rows
    ]
    for k, name in enumerate(schedulers):
        idx = [i for i, r in enumerate(rows) if r["scheduler"] == name]
        col = colors[k % len(colors)]
        for i in idx:
            ok = rows[i]["within_noise"]["ok"]
            ax.scatter(*pts[i], s=36, color=col if ok else "white", edgecolor=col, linewidth=1.4, zorder=3)
            ax.annotate(
                str(rows[i]["steps"]), pts[i], xytext=(4, 3), textcoords="offset points", fontsize=7, color=col
            )
        ax.plot([pts[i][0] for i in idx], [pts[i][1] for i in idx], color=col, linewidth=0.8, alpha=0.6, label=name)
    for b in REDUCED_PRECISION:  # reduced precision: its own images, so its own FID; diamonds
        extra = [(r["speed"][b]["images_per_s"], r["reduced_precision"][b]) for r in rows if b in r["speed"]]
        for x, own in extra:
            col = "#555555" if own["within_noise"]["ok"] else "white"
            ax.scatter(x, own["fid"], marker="D", s=30, color=col, edgecolor="#555555", linewidth=1.2, zorder=3)
        if extra:
            ax.scatter([], [], marker="D", s=30, color="#555555", label=f"{b} (own images)")
    front = pareto_front(pts)
    ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "k--", linewidth=0.8, label="Pareto front")
    noise = anchor["noise"]["fid"]
    ax.axhspan(noise["mean"] - Z * noise["sd"], noise["mean"] + Z * noise["sd"], color="#dddddd", alpha=0.6, zorder=0)
    ax.scatter(
        anchor["images_per_s"],
        noise["mean"],
        marker="*",
        s=180,
        color="black",
        zorder=4,
        label=f"anchor: {anchor['scheduler']} {anchor['steps']} steps, torch eager",
    )
    ax.set_xscale("log")
    ax.set_xlabel(f"images/s (B = {doc['config']['batch']}, fastest float32 backend; log scale)")
    fid_info = METRICS["fid"]
    ax.set_ylabel(f"{fid_info.name} in the DomainFeatures space ({fid_info.better})")
    ax.set_title(
        f"Quality per second — grey band: anchor FID ± {Z:g} sd over {len(anchor['seed_sets'])} seed sets; "
        "hollow: outside the anchor's noise",
        fontsize=9,
    )
    ax.legend(fontsize=8, frameon=False)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


# ------------------------------------------------------------------------------------------------ 5. the choice


def speed_record(doc: dict[str, Any], command: str | None = None) -> dict[str, Any]:
    """The ``sampling_speed`` entry a bundle keeps: the anchor, the table (one row per setting: FID, KID,
    accuracies, images/s per backend, verdict), the recommended setting and the command that reproduces it."""
    table = [
        {
            "scheduler": r["scheduler"],
            "steps": r["steps"],
            "fid": round(r["fid"], 4),
            "kid": round(r["kid"], 5),
            "accuracy": {k: round(v, 4) for k, v in r["accuracy"].items()},
            "images_per_s": {b: v["images_per_s"] for b, v in r["speed"].items()},
            "within_noise": r["within_noise"]["ok"],
        }
        for r in doc["rows"]
    ]
    a = doc["anchor"]
    return {
        "schema": SCHEMA,
        "protocol": doc["config"]["protocol"],
        "command": command or "fairsample bench --quality --output quality.json",
        "anchor": {
            "scheduler": a["scheduler"],
            "steps": a["steps"],
            "backend": a["backend"],
            "images_per_s": a["images_per_s"],
            "noise": a["noise"],
        },
        "recommended": doc["recommended"],
        "best_speedup_within_noise": doc["best_speedup_within_noise"],
        "fastest_within_noise_any_precision": doc.get("fastest_within_noise_any_precision"),
        "confirmation": [
            {
                "scheduler": t["scheduler"],
                "steps": t["steps"],
                "backend": t["backend"],
                "mean": t["mean"],
                "confirmed": t["within_noise"]["ok"],
            }
            for part in ("float32", "any_precision")
            for t in (doc.get("confirmation") or {}).get(part, [])
        ],
        "skipped": doc.get("skipped", []),
        "machine": doc["machine"],
        "table": table,
    }


def apply_recommendation(bundle_dir: str | Path, doc: dict[str, Any], command: str | None = None) -> dict[str, Any]:
    """Write the recommended (scheduler, steps) into a bundle's ``sampling`` (guidance and the rest kept) and the
    whole measurement as ``sampling_speed``; nothing is changed when no setting was within the anchor's noise.

    The within-noise rule keeps every accuracy within 2 sd of the anchor's, which is stricter than the conditioning
    guard's "no drop over 0.15", so a recommended setting keeps the guard's verdict.

    Returns:
        The bundle's new ``sampling`` table.

    Raises:
        ConfigError: ``doc`` recommends nothing, or ``bundle_dir`` is not a bundle.
    """
    from fairsample.models.bundle import update_bundle_config

    rec = doc.get("recommended")
    if rec is None:
        raise ConfigError("no setting was within the anchor's noise; nothing to write (the bundle keeps its settings)")
    import json

    cfg_path = Path(bundle_dir) / "fairsample_config.json"
    current = json.loads(cfg_path.read_text(encoding="utf-8")).get("sampling", {}) if cfg_path.is_file() else {}
    sampling = {**current, "scheduler": rec["scheduler"], "steps": int(rec["steps"])}
    update_bundle_config(bundle_dir, {"sampling": sampling, "sampling_speed": speed_record(doc, command)})
    return sampling

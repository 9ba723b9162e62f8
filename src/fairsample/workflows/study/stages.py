"""The study's stages: what each grid cell computes, through the public SDK only.

:class:`StudyContext` is everything a stage needs (plan, data, folders, engine settings) and is picklable, so a
worker process can run a model's whole chain (:func:`run_chain`). Settings keys are computed up front by
:func:`cell_keys` from the plan alone: a cell's key holds its own settings and the digests of the keys of the cells
it needs, so changing a setting re-runs that cell and everything downstream of it, and nothing else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fairsample.workflows.study.grid import Grid, digest, write_json
from fairsample.workflows.study.plan import GridCell, StudyPlan

#: the split every stage uses (the training loop's and the evaluation's default split)
SPLIT_SEED = 0


@dataclass
class StudyContext:
    """What every stage needs; picklable (sent to worker processes)."""

    plan: StudyPlan
    data: Any  # the real FolderDataset
    root: Path  # the study folder S
    backend: str  # sampling engine backend
    cache_dir: str | None  # engine artifact store (None: $FAIRSAMPLE_CACHE_DIR or the default)
    threads: int | None  # torch / ONNX Runtime intra-op threads (None: the profile's)
    minority: str  # the minority value of the attribute (fewest training images)
    counterfactual: str | None  # the counterfactual test set folder, if any
    holdout: str | None  # the oracle's pool of real held-out images, if any
    base: str | None  # a user-named base bundle
    verbose: bool = True
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def prof(self) -> Any:
        return self.plan.profile


def _say(ctx: StudyContext, prefix: str = "") -> Callable[[str], None]:
    def say(line: str) -> None:
        if ctx.verbose:
            print(f"{prefix}{line}", file=sys.stderr, flush=True)

    return say


# ------------------------------------------------------------------------------------------------------ settings


def train_rows(ds: Any) -> Any:
    """Row indices of the real train split (the loop's and the evaluation's split)."""
    from fairsample.data.splits import split_indices

    return split_indices(ds, seed=SPLIT_SEED)["train"]


def augmentation(ctx: StudyContext) -> Any:
    """The one augmentation plan of the study: water-filling of the real train split to ``augment_total`` images."""
    from fairsample.generation.augment import augmentation_plan

    sub = ctx.data.subset(train_rows(ctx.data))
    return augmentation_plan(sub, target="balanced", total=ctx.prof.augment_total, attribute=ctx.plan.attribute)


def _data_key(ctx: StudyContext) -> dict[str, Any]:
    return {
        "root": str(Path(ctx.data.root).absolute()),
        "n": len(ctx.data),
        "attribute": ctx.plan.attribute,
        "minority": ctx.minority,
    }


def base_path(ctx: StudyContext) -> Path:
    """The shared base bundle: the user's, or the base cell's."""
    if ctx.base is not None:
        return Path(ctx.base)
    return ctx.root / "cells" / "base" / "base" / "model"


def model_path(ctx: StudyContext, model: str) -> Path:
    return ctx.root / "cells" / "train" / model / "model"


def train_config(ctx: StudyContext, method: str, seed: int, **changes: Any) -> Any:
    """The fine-tuning config of one model (every method gets the same budget from the same base)."""
    from fairsample.core.config import TrainConfig

    p = ctx.prof
    cfg = TrainConfig(
        method=method,
        max_steps=p.train_steps,
        batch_size=p.batch_size,
        learning_rate=p.learning_rate,
        lr_warmup_steps=p.lr_warmup_steps,
        checkpoint_every=p.checkpoint_every,
        checkpoints_total_limit=1,
        seed=seed,
        device=p.device,
        split="train",
        split_seed=SPLIT_SEED,
        init_from=str(base_path(ctx)),
    )
    cfg = _with_guard(cfg, p)
    return dataclasses.replace(cfg, **changes)


def _with_guard(cfg: Any, prof: Any) -> Any:
    """The conditioning guard is part of the protocol: always on (whatever ``$FAIRSAMPLE_GUARD`` says), with the
    profile's sample count."""
    return dataclasses.replace(
        cfg,
        guard=True,
        guard_images_per_cell=prof.guard_images_per_cell,
        guard_steps=prof.sample_steps,
        guard_guidance=tuple(prof.guard_guidance),
    )


def base_config(ctx: StudyContext) -> Any:
    from fairsample.core.config import TrainConfig

    p = ctx.prof
    cfg = TrainConfig(
        method="vanilla",
        max_steps=p.base_steps,
        batch_size=p.base_batch_size,
        learning_rate=p.base_learning_rate,
        lr_warmup_steps=min(100, max(0, p.base_steps // 10)),
        checkpoint_every=max(1, min(250, p.base_steps // 4)),
        checkpoints_total_limit=1,
        seed=0,
        device=p.device,
        split="all",  # the base cell passes the train split without the minority
        architecture=p.architecture,
        image_size=p.image_size,
        cross_attention_dim=p.cross_attention_dim,
    )
    return _with_guard(cfg, p)


#: the TrainConfig fields that determine a base model's weights (an explicit list, so that a release adding an
#: unrelated field does not invalidate a finished base: it is the longest cell of a study)
_BASE_FIELDS = (
    "method",
    "method_options",
    "max_steps",
    "batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "lr_schedule",
    "lr_warmup_steps",
    "weight_decay",
    "adam_betas",
    "max_grad_norm",
    "mixed_precision",
    "use_ema",
    "ema_decay",
    "prediction_type",
    "p_uncond",
    "p_slot",
    "architecture",
    "image_size",
    "cross_attention_dim",
    "init_from",
    "split",
    "split_seed",
    "hflip",
    "seed",
)


def weights_settings(cfg: Any) -> dict[str, Any]:
    """The base's training settings that determine its weights (:data:`_BASE_FIELDS`)."""
    d = cfg.to_dict()
    return {k: d[k] for k in _BASE_FIELDS if k in d}


def method_options(ctx: StudyContext, method: str) -> dict[str, Any]:
    if method == "fairgen":
        return {"preferences": str(ctx.root / "cells" / "prefs" / "fairgen" / "preferences.csv")}
    return {}


def _own_settings(ctx: StudyContext, cell: GridCell) -> dict[str, Any]:
    """The settings of one cell (without its upstream cells)."""
    p = ctx.prof
    data = _data_key(ctx)
    if cell.kind == "base":
        return {"data": data, "keep": p.base_minority_keep, "train": weights_settings(base_config(ctx))}
    if cell.kind == "prefs":
        return {
            "data": data,
            "base": str(base_path(ctx)),
            "cells": "every cell of the train split",
            "per_cell": p.prefs_per_cell,
            "candidates": p.prefs_candidates,
            "steps": p.sample_steps,
            "backend": ctx.backend,
            "epochs": p.prefs_classifier_epochs,
        }
    if cell.kind == "oracle":
        return {"data": data, "holdout": ctx.holdout, "plan": augmentation(ctx).to_dict()}
    if cell.kind == "evaluate":
        return {
            "data": data,
            "seeds": list(ctx.plan.seeds),
            "epochs": p.eval_epochs,
            "k": p.eval_k,
            "resamples": p.eval_resamples,
            "feature_epochs": p.eval_feature_epochs,
            "ber_epochs": p.eval_ber_epochs,
            "size": p.eval_size,
            "counterfactual": ctx.counterfactual,
            "sets": [s[0] for s in ctx.plan.sets],
            "generator_seeds": list(ctx.plan.generator_seeds),
        }
    method, seed = cell.model.split("@") if cell.model else ("", "0")
    if cell.kind == "train":
        cfg = train_config(
            ctx,
            method,
            int(seed),
            method_options=method_options(ctx, method),
            snapshot_every=_snapshot_every(ctx, cell.model),
        )
        return {"data": data, "train": cfg.to_dict()}
    if cell.kind == "curve":
        return {"images_per_cell": p.curve_images_per_cell, "every": p.curve_every}
    if cell.kind == "export":
        return {"backend": ctx.backend, "exporters": p.exporters}
    if cell.kind == "tau":
        return {"n_per_label": p.tau_n_per_label, "search_steps": p.tau_search_steps, "attribute": ctx.plan.attribute}
    if cell.kind == "perturbation":
        return {
            "iterations": p.perturb_iterations,
            "n_eval": p.perturb_n_eval,
            "steps": p.sample_steps,
            "attribute": ctx.plan.attribute,
            "data": data,
            "tuner": "per-group reward, paired guard",
        }
    if cell.kind == "generate":
        return {
            "plan": augmentation(ctx).to_dict(),
            "steps": p.sample_steps,
            "batch": p.sample_batch,
            "sampler": _set_of(ctx, cell)[2],
            "backend": ctx.backend,
        }
    raise KeyError(cell.id)  # pragma: no cover - internal invariant


def _snapshot_every(ctx: StudyContext, model: str | None) -> int:
    """Vanilla's first model writes the curve's snapshots; no other model does."""
    return ctx.prof.curve_every if any(c.kind == "curve" and c.model == model for c in ctx.plan.cells) else 0


def _set_of(ctx: StudyContext, cell: GridCell) -> tuple[str, str, str]:
    name = cell.name.rsplit("@", 1)[0]
    return next(s for s in ctx.plan.sets if s[0] == name)


def cell_keys(ctx: StudyContext) -> dict[str, dict[str, Any]]:
    """Every cell's settings key, in plan order (upstream digests included)."""
    keys: dict[str, dict[str, Any]] = {}
    for cell in ctx.plan.cells:
        keys[cell.id] = {
            "cell": cell.id,
            "settings": _own_settings(ctx, cell),
            "needs": {n: digest(keys[n]) for n in cell.needs},
        }
    return keys


# ---------------------------------------------------------------------------------------------------- the stages


@contextlib.contextmanager
def cache_env(cache_dir: str | os.PathLike[str] | None) -> Iterator[None]:
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


class Stages:
    """Runs cells of one process: the main process (base, prefs, oracle, evaluate) or a worker (one model chain)."""

    def __init__(self, ctx: StudyContext, say: Callable[[str], None]) -> None:
        self.ctx = ctx
        self.say = say
        self.grid = Grid(ctx.root, say)
        self.engines: dict[str, Any] = {}
        self.bundles: dict[str, Any] = {}

    def close(self) -> None:
        for engine in self.engines.values():
            with contextlib.suppress(Exception):
                engine.close()
        self.engines.clear()

    def run(self, cell: GridCell) -> dict[str, Any]:
        fn = getattr(self, f"_{cell.kind}")
        return self.grid.run(cell.id, self.ctx.keys[cell.id], lambda folder: fn(folder, cell))

    # -- helpers ---------------------------------------------------------------------------------------------------
    def _device(self) -> str:
        from fairsample.train.loop import resolve_device

        return resolve_device(self.ctx.prof.device)

    def _bundle(self, model: str) -> Any:
        if model not in self.bundles:
            from fairsample.models.bundle import ModelBundle

            self.bundles[model] = ModelBundle.load(model_path(self.ctx, model))
        return self.bundles[model]

    def _engine(self, model: str) -> Any:
        if model not in self.engines:
            from fairsample.engines import load_engine

            options: dict[str, Any] = {}
            if self.ctx.backend == "onnxruntime" and self.ctx.threads is not None:
                options["intra_op_threads"] = self.ctx.threads
            if self.ctx.backend == "onnxruntime" and self.ctx.prof.exporters:
                options["exporters"] = self.ctx.prof.exporters
            self.engines[model] = load_engine(
                self._bundle(model), backend=self.ctx.backend, device=self._device(), **options
            )
        return self.engines[model]

    def _marker(self, cell_id: str) -> dict[str, Any]:
        if cell_id not in self.grid.markers:
            from fairsample.workflows.study.grid import read_json

            self.grid.markers[cell_id] = read_json(self.grid.folder(cell_id) / "cell.json")
        return self.grid.markers[cell_id]

    def _fit(self, ds: Any, out: Path, cfg: Any, **kwargs: Any) -> dict[str, Any]:
        from fairsample.train.loop import train

        res = train(ds, out, cfg, resume=True, progress=False, log=lambda line: self.say(f"  {line}"), **kwargs)
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # the bundle is complete; keep S small
        config = _read_config(out)
        return {
            "bundle": str(out.relative_to(self.ctx.root)),
            "steps": res.steps,
            "resumed_from": res.resumed_from,
            "final_loss": res.final_loss,
            "log": str(res.log_path.relative_to(self.ctx.root)),
            "train_config": cfg.to_dict(),
            "seconds_train": round(res.seconds, 2),
            "conditioning_guard": config.get("conditioning_guard"),
            "sampling": config.get("sampling"),
            "method": config.get("method"),
            "method_status": config.get("method_status"),
        }

    # -- main-process stages ---------------------------------------------------------------------------------------
    def _base(self, folder: Path, cell: GridCell) -> dict[str, Any]:
        import numpy as np

        ds, attr, p = self.ctx.data, self.ctx.plan.attribute, self.ctx.prof
        rows = np.asarray(train_rows(ds))
        col = ds.frame[attr].astype(str).to_numpy()
        minority = rows[col[rows] == self.ctx.minority]
        keep = minority[: int(round(p.base_minority_keep * len(minority)))]
        chosen = np.sort(np.concatenate([rows[col[rows] != self.ctx.minority], keep]))
        vocabulary = (ds.attribute_values(), ds.label_values())
        out = self._fit(ds.subset(chosen), folder / "model", base_config(self.ctx), vocabulary=vocabulary)
        return out | {
            "n_images": int(len(chosen)),
            "minority": self.ctx.minority,
            "minority_images": int(len(keep)),
            "minority_in_train_split": int(len(minority)),
        }

    def _prefs(self, folder: Path, cell: GridCell) -> dict[str, Any]:
        from fairsample.models.bundle import ModelBundle
        from fairsample.train.prefs_build import build_preferences

        p, ds = self.ctx.prof, self.ctx.data
        train = ds.subset(train_rows(ds))
        # every cell of the data, the minority's too: the base never drew them, and FairGen's raters judge every
        # subgroup (the base bundle lists only the cells it was trained on)
        res = build_preferences(
            ModelBundle.load(base_path(self.ctx)),
            train,
            folder,
            cells=train.cells(),
            per_cell=p.prefs_per_cell,
            candidates=p.prefs_candidates,
            steps=p.sample_steps,
            classifier_epochs=p.prefs_classifier_epochs,
            batch_size=p.sample_batch,
            backend=self.ctx.backend,
            device=self._device(),
            log=lambda line: self.say(f"  {line}"),
        )
        return {
            "preferences": str(res.preferences.relative_to(self.ctx.root)),
            "n_pairs": res.n_pairs,
            "n_candidates": res.n_candidates,
            "source": res.doc.get("source"),
            "scorer_data": "real train split only",
            "model": "the shared base",
        }

    def _oracle(self, folder: Path, cell: GridCell) -> dict[str, Any]:
        return write_oracle(self.ctx, folder / "set")

    def _evaluate(self, folder: Path, cell: GridCell) -> dict[str, Any]:
        from fairsample.evaluation.evaluate import evaluate

        p, plan = self.ctx.prof, self.ctx.plan
        sets = {
            name: [self.grid.folder(f"generate/{name}@{s}") / "set" for s in plan.generator_seeds]
            for name, _, _ in plan.sets
        }
        oracle = self.grid.folder("oracle/oracle") / "set" if self.ctx.holdout else None
        size = p.eval_size or p.image_size
        t0 = time.perf_counter()
        options: dict[str, Any] = {}
        if self.ctx.counterfactual:
            options["counterfactual"] = self.ctx.counterfactual
        if oracle is not None:
            options["oracle"] = oracle
        res = evaluate(
            self.ctx.data,
            sets,
            attribute=plan.attribute,
            protocols=("real_only", "real_plus_synthetic"),
            seeds=plan.seeds,
            epochs=p.eval_epochs,
            size=size,
            k=p.eval_k,
            n_resamples=p.eval_resamples,
            seed=0,
            feature_epochs=p.eval_feature_epochs,
            ber_epochs=p.eval_ber_epochs,
            allow_few_seeds=len(plan.seeds) < 3,
            minority=self.ctx.minority,
            reference="vanilla",
            progress=lambda line: self.say(f"  [{time.perf_counter() - t0:6.1f} s] {line}"),
            **options,
        )
        res.command = "fairsample.workflows.study.run_study (one evaluate call over every set, oracle and view)"
        files = res.save(folder / "report", overwrite=True)
        return {
            "report": str(Path(files["json"]).relative_to(self.ctx.root)),
            "markdown": str(Path(files["markdown"]).relative_to(self.ctx.root)),
            "plots": {k: str(Path(v).relative_to(self.ctx.root)) for k, v in files["plots"].items()},
            "seconds_by_stage": res.report["run"]["seconds"],
        }

    # -- chain stages (one model) ----------------------------------------------------------------------------------
    def _train(self, folder: Path, cell: GridCell) -> dict[str, Any]:
        method, seed = cell.model.split("@")
        cfg = train_config(
            self.ctx,
            method,
            int(seed),
            method_options=method_options(self.ctx, method),
            snapshot_every=_snapshot_every(self.ctx, cell.model),
        )
        return self._fit(self.ctx.data, folder / "model", cfg)

    def _curve(self, folder: Path, cell: GridCell) -> dict[str, Any]:
        from fairsample.workflows.study.curve import fidelity_curve

        p = self.ctx.prof
        model_dir = model_path(self.ctx, cell.model)
        doc = fidelity_curve(
            model_dir,
            self.ctx.data,
            attribute=self.ctx.plan.attribute,
            minority=self.ctx.minority,
            base=base_path(self.ctx),
            images_per_cell=p.curve_images_per_cell,
            steps=p.sample_steps,
            out_png=folder / "curve.png",
        )
        write_json(folder / "curve.json", doc)
        return {
            "curve": str((folder / "curve.json").relative_to(self.ctx.root)),
            "plot": str((folder / "curve.png").relative_to(self.ctx.root)),
            "points": doc["points"],
            "plateau": doc.get("plateau"),
        }

    def _export(self, folder: Path, cell: GridCell) -> dict[str, Any]:
        engine = self._engine(cell.model)
        manifest = dict(getattr(engine, "manifest", {}) or {})
        return {
            "backend": engine.backend,
            "engine_key": manifest.get("key"),
            "model": str(model_path(self.ctx, cell.model)),
        }

    def _tau(self, folder: Path, cell: GridCell) -> dict[str, Any]:
        from fairsample.samplers.schedulers import make_scheduler
        from fairsample.samplers.switch import switch_step
        from fairsample.samplers.tau import MIN_SEARCH_STEPS
        from fairsample.samplers.tau_search import plot_tau, resolve_tau

        p, attr = self.ctx.prof, self.ctx.plan.attribute
        bundle, engine = self._bundle(cell.model), self._engine(cell.model)
        values = bundle.attribute_values[attr]
        ordered = [(s0, s1) for s0 in values for s1 in values if s0 != s1]
        # one implementation (tau_search.resolve_tau): argmin of the mean J over the ordered pairs, each unordered
        # pair searched once on its own schedule of tau_search_steps; only the tiny test profile goes below 100
        res, info = resolve_tau(
            bundle,
            engine,
            attribute=attr,
            pairs=ordered,
            n_per_label=p.tau_n_per_label,
            search_steps=p.tau_search_steps,
            allow_coarse=p.tau_search_steps < MIN_SEARCH_STEPS,
        )
        step = switch_step(res.tau_star, make_scheduler("ddim", bundle.scheduler.config), p.sample_steps)
        plot = plot_tau(res, folder / "tau.png")
        doc = {
            "tau_star": res.tau_star,
            "step_index": res.step_index,
            "search_steps": res.search_steps,
            "sample_steps": p.sample_steps,
            "switch_step": step,
            "rule": info["rule"],
            "taus": res.taus,
            "objective": res.objective,
            "pairs": info["pairs"],
            "seconds": info["seconds"],
            "plot": str(plot.relative_to(self.ctx.root)),
        }
        write_json(folder / "tau.json", doc)
        return {
            "tau_star": res.tau_star,
            "step_index": res.step_index,
            "search_steps": res.search_steps,
            "switch_step": step,
            "tau_json": str((folder / "tau.json").relative_to(self.ctx.root)),
            "pairs": {k: v["tau_star"] for k, v in info["pairs"].items()},
            "plot": doc["plot"],
        }

    def _perturbation(self, folder: Path, cell: GridCell) -> dict[str, Any]:
        from fairsample.samplers.perturbed import Perturbation

        p = self.ctx.prof
        path = folder / "perturbation.json"
        if p.perturb_iterations is None:
            reason = f"profile {p.name!r} does not search offsets: zero offsets (= conditional sampling)"
            Perturbation(meta={"kept": "zero", "searched": False, "reason": reason}).save(path)
            return {
                "perturbation": str(path.relative_to(self.ctx.root)),
                "kept": "zero",
                "searched": False,
                "reason": reason,
            }
        from fairsample.workflows.tune_perturbation import tune_perturbation

        res = tune_perturbation(
            self._bundle(cell.model),
            self._engine(cell.model),
            self.ctx.data,
            attribute=self.ctx.plan.attribute,
            n_eval=p.perturb_n_eval,
            iterations=p.perturb_iterations,
            steps=p.sample_steps,
            seed=0,
            progress=lambda line: self.say(f"  {line}"),
        )
        res.perturbation.save(path)
        meta = res.perturbation.meta or {}
        return {
            "perturbation": str(path.relative_to(self.ctx.root)),
            "kept": res.kept,
            "searched": True,
            "evaluations": len(res.trace),
            "held_out": res.held_out,
            "reason": meta.get("reason"),
            "guidance": res.perturbation.to_dict().get("guidance"),
            "temperature": res.perturbation.to_dict().get("temperature"),
        }

    def _generate(self, folder: Path, cell: GridCell) -> dict[str, Any]:
        from fairsample.generation.pipeline import FairSamplePipeline

        p, attr = self.ctx.prof, self.ctx.plan.attribute
        name, method, sampler = _set_of(self.ctx, cell)
        bundle = self._bundle(cell.model)
        pipe = FairSamplePipeline(bundle, engine=self._engine(cell.model), device=self._device())
        options: dict[str, Any] = {}
        if sampler == "attribute_switch":
            tau = self._marker(f"tau/{cell.model}")["outputs"]["tau_star"]
            options = {"attribute": attr, "tau": tau}
            if len(bundle.attribute_values[attr]) > 2:
                options["to"] = "uniform"
        elif sampler == "fairdiffusion_perturbed":
            options = {"perturbation": str(self.grid.folder(f"perturbation/{cell.model}") / "perturbation.json")}
        cfg = pipe.default_config().replace(
            sampler=sampler,
            sampler_options=options,
            steps=p.sample_steps,
            batch_size=p.sample_batch,
            backend=self.ctx.backend,
            device=self._device(),
        )
        plan = augmentation(self.ctx).to_generation_plan()  # the same cells and seeds in every set
        res = pipe.generate_to_folder(folder / "set", plan, cfg, progress=False)
        return {
            "set": str((folder / "set").relative_to(self.ctx.root)),
            "n_images": res.n_images,
            "n_generated_now": res.n_generated,
            "sample_config": cfg.to_dict(),
            "plan_digest": plan.digest(bundle.label_name),
            "model": str(model_path(self.ctx, cell.model)),
        }


def _read_config(folder: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads((folder / "fairsample_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_oracle(ctx: StudyContext, out: Path) -> dict[str, Any]:
    """The oracle set: real holdout images in exactly the augmentation plan's per-cell numbers (first images of
    each cell in the holdout's row order, which :func:`fairsample.data.demo.make_demo_dataset` shuffles)."""
    from fairsample.core.errors import DataError
    from fairsample.data.folder import load_folder

    pool = load_folder(ctx.holdout, label_col=ctx.data.spec.label, group_cols=list(ctx.data.spec.groups))
    by_cell: dict[Any, list[int]] = {}
    for i, c in enumerate(pool.cell_ids()):
        by_cell.setdefault((c.groups, c.label), []).append(i)
    plan = augmentation(ctx)
    rows: list[int] = []
    short = []
    for r in plan.rows:
        if r.synthetic == 0:
            continue
        have = by_cell.get((r.cell.groups, r.cell.label), [])
        if len(have) < r.synthetic:
            short.append(f"{r.cell.to_text(plan.label_col)} needs {r.synthetic}, has {len(have)}")
        rows += have[: r.synthetic]
    if short:
        raise DataError(
            f"`holdout` {ctx.holdout} has too few real images for the oracle row ({'; '.join(short[:3])}); add real "
            "held-out images of those cells or lower the augmentation total."
        )
    if out.exists():
        shutil.rmtree(out)
    (out / "images").mkdir(parents=True)
    frame = pool.frame.iloc[rows].copy()
    files = []
    for k, src in enumerate(pool.frame[pool.spec.file_col].iloc[rows]):
        name = f"images/{k:05d}{Path(src).suffix}"
        shutil.copyfile(Path(pool.root) / src, out / name)
        files.append(name)
    frame[pool.spec.file_col] = files
    frame["source_file"] = list(pool.frame[pool.spec.file_col].iloc[rows])
    frame.to_csv(out / "metadata.csv", index=False)
    counts = {r.cell.to_text(plan.label_col): r.synthetic for r in plan.rows if r.synthetic}
    return {
        "set": str(out.relative_to(ctx.root)),
        "n_images": len(rows),
        "counts": counts,
        "holdout": str(ctx.holdout),
    }


def run_chain(job: tuple[StudyContext, str]) -> dict[str, Any]:
    """Worker entry point: every cell of one model's chain, in order; returns the markers (by cell id)."""
    ctx, model = job
    p = ctx.prof
    threads = ctx.threads if ctx.threads is not None else p.torch_threads
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    stages = Stages(ctx, _say(ctx, f"[{model}] "))
    try:
        with cache_env(ctx.cache_dir):
            for cell in ctx.plan.chain(model):
                stages.run(cell)
    finally:
        stages.close()
    return {"markers": stages.grid.markers, "ran": stages.grid.ran, "skipped": stages.grid.skipped}

"""``FairSamplePipeline``: bundle + engine + scheduler → images, and generation plans written as dataset folders.

A *generation plan* is a list of (cell, seed) items. Image k depends only on its cell and its seed (one CPU generator
per image, STYLE.md rule 3), so the same plan gives byte-identical PNGs whatever the batch size, and an interrupted
run can be re-run to fill in exactly the missing images.

Output folder (STYLE.md §6.2), readable by ``fairsample data check`` and ``datasets``::

    out/
      images/000000.png ...     # {seed:06d}.png, lossless
      metadata.csv              # file_name, <group cols>, <label>, seed, sampler, method_status (written last)
      fairsample.toml           # which columns are groups / label
      config.json               # resolved settings, plan hash, bundle, versions, "complete": true
      plan.json                 # the plan (written first; lets a re-run resume)

Sharding (design README §4): the plan's items are dealt round-robin, item i to process ``i % world`` — by plan index,
never by what is already on disk, so every process agrees on who owns what without talking. Round-robin (not
contiguous blocks) keeps every process's share of every cell equal, so a plan ordered cell by cell is balanced across
processes whatever the per-cell cost. Each process streams its images to disk batch by batch (memory stays flat as
the plan grows) and the folder is finalized (``metadata.csv``, ``fairsample.toml``, ``config.json``) only once every
image of the plan exists, by one process. Because image k depends only on its cell and seed, the union of the shards
is byte-identical to a single-process run.

- ``distributed=None`` (default, auto): sharded over accelerate's ``PartialState`` when the process was started by
  ``accelerate launch`` / ``torchrun`` with more than one process (``WORLD_SIZE`` > 1); otherwise one process.
  The main process prepares the folder and writes ``plan.json`` first, every process generates its items, then
  ``wait_for_everyone``, the main process finalizes, and ``wait_for_everyone`` again: when the call returns on any
  rank, the folder is complete. The call is then collective: every process must make it, with the same plan.
- ``shard=(rank, world)``: independent processes (separate jobs, no process group). Each generates its items; the
  one that finds every image present at its end finalizes (two finishing together both write identical bytes via
  atomic renames). A shard that finishes early returns ``complete=False``; re-running the same call — sharded or on
  one process — fills in whatever is missing and finalizes.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from fairsample.core.atomic import atomic_path, write_atomic
from fairsample.core.config import SampleConfig
from fairsample.core.errors import ConfigError
from fairsample.data.schema import CellKey
from fairsample.engines import Engine, load_engine
from fairsample.models.bundle import ModelBundle, library_versions
from fairsample.samplers import METHOD_STATUS as SAMPLER_STATUS
from fairsample.samplers import get_sampler, switched_cells
from fairsample.samplers.base import ConditioningPlan, initial_latents, make_generators
from fairsample.samplers.guidance import check_guidance_rescale
from fairsample.samplers.options import resolve_sampler_options
from fairsample.samplers.schedulers import init_noise_sigma, make_scheduler

_TOO_FEW_SEEDS = "`seeds` gives {have} seeds but the plan needs {need} images; pass a longer --seeds range."
_DUP_SEEDS = "`seeds` repeats seed(s) {dups}; every image needs its own seed (files are named by seed)."
_BAD_COUNT = "`{name}` must be >= 1, got {value!r}."
_BOTH_COUNTS = "give either --per-cell or --balanced, not both."
_OTHER_PLAN = (
    "`output_dir` {path} holds a different generation (plan {old} != {new}); choose a new --output-dir or pass "
    "--overwrite to replace it."
)
_NOT_EMPTY = (
    "`output_dir` {path} exists and is not a fairsample generation folder; choose a new --output-dir or pass "
    "--overwrite."
)
_BAD_OUTPUT_TYPE = "`output_type` must be one of ['np', 'pil', 'pt'], got {value!r}."
_BAD_STEPS = "`steps` must be >= 1, got {value!r}."
_BAD_BATCH = "`batch_size` must be >= 1, got {value!r}."
_NO_RESCALE = (
    "`guidance_rescale` {value!r} is applied by the 'conditional' sampler only, not {sampler!r}; pass "
    "--guidance-rescale 0 (guidance_rescale=0.0) with this sampler."
)
_NO_CELLS = "`cells` is empty; give at least one cell (e.g. --cells tone=dark,label=3) or omit it to use every cell."
_BAD_SHARD = "`shard` must be (rank, world) with 0 <= rank < world, got {value!r}."
_SHARD_AND_DISTRIBUTED = "give either `shard` (independent processes) or `distributed=True` (accelerate), not both."
_NEG_COUNT = "`counts` gives cell {cell} {value!r} images; counts must be integers >= 0."
_NO_IMAGES = "the plan has no images (every count is 0); give at least one positive count."
_NEED_ACCELERATE = "distributed generation needs accelerate: pip install 'fairsample[train]'"
_SHARDS_MISSING = (
    "{n} image(s) of the plan are missing after every process finished (first: {first}); the output folder must be "
    "on a file system every process shares. Re-run the same command to complete it."
)


@dataclass(frozen=True)
class PlanItem:
    """One image to generate."""

    cell: CellKey
    seed: int


@dataclass(frozen=True)
class GenerationPlan:
    """An ordered list of (cell, seed) items; seeds are unique (they name the files).

    Example:
        >>> cells = [CellKey((("tone", "dark"),), "0"), CellKey((("tone", "light"),), "0")]
        >>> plan = GenerationPlan.per_cell(cells, 2)
        >>> [(str(i.cell), i.seed) for i in plan.items]
        [('tone=dark,label=0', 0), ('tone=dark,label=0', 1), ('tone=light,label=0', 2), ('tone=light,label=0', 3)]
    """

    items: tuple[PlanItem, ...]

    def __len__(self) -> int:
        return len(self.items)

    @staticmethod
    def _assign(counts: Sequence[tuple[CellKey, int]], seeds: Sequence[int] | None) -> GenerationPlan:
        need = sum(n for _, n in counts)
        if seeds is None:
            seeds = range(need)
        seeds = [int(s) for s in seeds]
        if len(seeds) < need:
            raise ConfigError(_TOO_FEW_SEEDS.format(have=len(seeds), need=need))
        seen: set[int] = set()
        dups = sorted({s for s in seeds[:need] if s in seen or seen.add(s)})  # type: ignore[func-returns-value]
        if dups:
            raise ConfigError(_DUP_SEEDS.format(dups=dups[:5]))
        items, k = [], 0
        for cell, n in counts:
            for _ in range(n):
                items.append(PlanItem(cell, seeds[k]))
                k += 1
        return GenerationPlan(tuple(items))

    @classmethod
    def per_cell(cls, cells: Sequence[CellKey], n: int, seeds: Sequence[int] | None = None) -> GenerationPlan:
        """``n`` images for every cell, seeds assigned cell after cell (default seeds 0, 1, 2, ...)."""
        if n < 1:
            raise ConfigError(_BAD_COUNT.format(name="per_cell", value=n))
        if not cells:
            raise ConfigError(_NO_CELLS)
        return cls._assign([(c, n) for c in cells], seeds)

    @classmethod
    def balanced(cls, cells: Sequence[CellKey], total: int, seeds: Sequence[int] | None = None) -> GenerationPlan:
        """``total`` images split as evenly as possible over the cells (the first cells get the remainder)."""
        if total < 1:
            raise ConfigError(_BAD_COUNT.format(name="balanced", value=total))
        if not cells:
            raise ConfigError(_NO_CELLS)
        base, rest = divmod(total, len(cells))
        return cls._assign([(c, base + (1 if i < rest else 0)) for i, c in enumerate(cells)], seeds)

    @classmethod
    def from_counts(
        cls, counts: Sequence[tuple[CellKey, int]] | Mapping[CellKey, int], seeds: Sequence[int] | None = None
    ) -> GenerationPlan:
        """``n`` images per cell as given (cells with 0 skipped), seeds assigned in that order (default 0, 1, ...).

        Example:
            >>> dark, light = CellKey((("tone", "dark"),), "0"), CellKey((("tone", "light"),), "0")
            >>> [(str(i.cell), i.seed) for i in GenerationPlan.from_counts([(dark, 1), (light, 0)], [7]).items]
            [('tone=dark,label=0', 7)]
        """
        pairs = list(counts.items()) if isinstance(counts, Mapping) else list(counts)
        for cell, n in pairs:
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ConfigError(_NEG_COUNT.format(cell=cell, value=n))
        kept = [(c, n) for c, n in pairs if n > 0]
        if not kept:
            raise ConfigError(_NO_IMAGES)
        return cls._assign(kept, seeds)

    def counts(self) -> dict[CellKey, int]:
        """Images per cell."""
        out: dict[CellKey, int] = {}
        for it in self.items:
            out[it.cell] = out.get(it.cell, 0) + 1
        return out

    def to_json(self, label_col: str = "label") -> list[list[Any]]:
        """``[[cell_text, seed], ...]``."""
        return [[it.cell.to_text(label_col), it.seed] for it in self.items]

    def digest(self, label_col: str = "label") -> str:
        """sha256 of the plan (cells + seeds), short form."""
        return hashlib.sha256(json.dumps(self.to_json(label_col)).encode()).hexdigest()[:16]


@dataclass
class SampleOutput:
    """Generated images with their provenance (diffusers-style output dataclass; there is no tuple variant).

    Attributes:
        images: list of PIL images (``output_type="pil"``), ``(N, H, W, 3)`` float32 in [0, 1] (``"np"``), or
            ``(N, 3, H, W)`` float32 in [0, 1] (``"pt"``).
        cells: the cell of every image.
        seeds: the seed of every image.
        manifest: sampler, scheduler, steps, guidance, bundle id, engine backend, versions.
    """

    images: Any
    cells: list[CellKey]
    seeds: list[int]
    manifest: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GenerationResult:
    """What :meth:`FairSamplePipeline.generate_to_folder` wrote."""

    output_dir: Path
    n_images: int  # images in the finished folder
    n_generated: int  # images generated by this call (the rest existed from an interrupted run or other shards)
    seconds: float
    files: list[str]  # file_name of every image, plan order
    complete: bool = True  # metadata written (False: an independent shard finished before the others)
    shard: tuple[int, int] = (0, 1)  # (rank, world) of this process


def to_uint8(images: Tensor) -> np.ndarray:
    """``(N, 3, H, W)`` in [-1, 1] → ``(N, H, W, 3)`` uint8 (diffusers' rounding: ``round((x/2+0.5)·255)``)."""
    x = (images.detach().float().cpu() / 2 + 0.5).clamp(0, 1)
    return (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


class FairSamplePipeline:
    """Bundle + engine + scheduler → images.

    Args:
        bundle: a :class:`~fairsample.models.bundle.ModelBundle` (default: the embedded model).
        engine: a ready engine; default ``load_engine(bundle, backend, device, **engine_options)``.
        backend: engine backend when ``engine`` is not given: ``"torch"`` (default), ``"onnxruntime"``,
            ``"tensorrt"`` or ``"auto"`` — the fastest validated engine here
            (:func:`fairsample.engines.choice.choose_backend`); the choice and its reason are in
            :attr:`backend_choice` and in every output's manifest (``engine.choice``).
        device: torch device for the engine and the sampling loop (default ``"cpu"``; with ``backend="auto"`` and
            no device, a CUDA GPU when one is present).
        engine_options: extra :func:`~fairsample.engines.load_engine` options (e.g. ``{"strict": True}`` for
            tensorrt, ``{"intra_op_threads": 2}`` for onnxruntime).

    Example:
        >>> pipe = FairSamplePipeline()
        >>> cell = pipe.bundle.parse_cell("tone=dark,label=3")
        >>> out = pipe([cell], seeds=[7], steps=2)
        >>> out.images[0].size
        (32, 32)
    """

    def __init__(
        self,
        bundle: ModelBundle | None = None,
        engine: Engine | None = None,
        *,
        backend: str = "torch",
        device: str | None = None,
        engine_options: Mapping[str, Any] | None = None,
    ) -> None:
        from fairsample.engines.choice import choose_backend

        #: the engine this pipeline runs and why (``backend="auto"`` resolved, or the backend asked for)
        self.backend_choice = choose_backend(backend, device) if engine is None else None
        if self.backend_choice is not None:
            backend, device = self.backend_choice.backend, self.backend_choice.device
        device = _rank_device(device or "cpu")
        self.bundle = (bundle or ModelBundle.load_default(device=device)).to(device).eval()
        self.device = torch.device(device)
        self.engine = engine or self._load_engine(backend, device, dict(engine_options or {}))
        self._options_cache: tuple[SampleConfig, dict[str, Any]] | None = None
        self._tau_cache: tuple[SampleConfig, dict[str, Any]] | None = None  # attribute_switch: τ resolved + origin

    def _load_engine(self, backend: str, device: str, options: dict[str, Any]) -> Engine:
        """``load_engine``; when ``auto`` chose the OpenVINO bf16 engine and it fails its image gate (or cannot
        load), the float32 engine instead, with the reason in :attr:`backend_choice` (printed and recorded)."""
        choice = self.backend_choice
        if choice is None or choice.requested != "auto" or backend != "openvino":
            return load_engine(self.bundle, backend=backend, device=device, **options)
        from fairsample.core.errors import EngineLoadError, ValidationFailed
        from fairsample.engines.choice import gate_fallback

        try:
            return load_engine(self.bundle, backend=backend, device=device, **options)
        except (ValidationFailed, EngineLoadError, ConfigError) as err:
            self.backend_choice = gate_fallback(choice, err)
            return load_engine(self.bundle, backend=self.backend_choice.backend, device=device, **options)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        cells: Sequence[str] | None = None,
        template: str | None = None,
        **kwargs: Any,
    ) -> FairSamplePipeline:
        """Load a model and build the pipeline: a fairsample bundle, a diffusers Stable Diffusion folder (SD 1.x/2.x)
        or ``.safetensors`` file, or ``None`` for the embedded default model.

        Args:
            path: the model path.
            cells: for an SD model, the cells it should know, e.g. ``["tone=dark,label=1", "tone=light,label=1"]``.
            template: for an SD model, the prompt template naming every cell field (default
                ``"tone {tone}, label {label}"`` from the cell keys).
            **kwargs: :class:`FairSamplePipeline` arguments (``backend``, ``device``, ``engine_options``).

        Example:
            >>> pipe = FairSamplePipeline.from_pretrained("sd-folder", cells=["tone=dark,label=1"])  # doctest: +SKIP
        """
        from fairsample.models.sd_import import open_model

        device = kwargs.get("device") or "cpu"
        bundle = open_model(path, cells=cells, template=template, device=device)
        return cls(bundle, **kwargs)

    def default_config(self) -> SampleConfig:
        """:class:`SampleConfig` defaults overridden by the bundle's recommended ``sampling`` settings."""
        from fairsample.core.config import from_dict

        base = SampleConfig().to_dict()
        base.update(self.bundle.sampling_defaults())
        return from_dict(SampleConfig, base, where=f"{self.bundle.bundle_id} sampling defaults")

    # -- in-memory sampling ----------------------------------------------------------------------------------------
    def _sample_batch(self, cells: Sequence[CellKey], seeds: Sequence[int], cfg: SampleConfig) -> Tensor:
        """One engine batch → images ``(B, 3, H, W)`` in [-1, 1]."""
        scheduler = make_scheduler(cfg.scheduler, self.bundle.scheduler.config)
        sigma = init_noise_sigma(scheduler, cfg.steps)
        # one generator per image, used first for x_T and then for the scheduler's per-step noise
        generators = make_generators(seeds)
        latents = initial_latents(generators, self.bundle.latent_shape, init_noise_sigma=sigma).to(self.device)
        cond = self.bundle.conditioner.cached(list(cells)).to(self.device)
        uncond = self.bundle.conditioner.cached([None]).to(self.device)
        plan = ConditioningPlan(cond=cond, uncond=uncond, cells=tuple(cells))
        sampler = get_sampler(cfg.sampler)
        extra = self._sampler_kwargs(cfg, cells, seeds, uncond)
        with torch.no_grad():
            x = sampler(
                self.engine,
                scheduler,
                latents,
                plan,
                num_inference_steps=cfg.steps,
                guidance_scale=cfg.guidance_scale,
                generator=generators,
                **extra,
                **({"guidance_rescale": cfg.guidance_rescale} if cfg.guidance_rescale else {}),
            )
            return self.bundle.decode(x)

    def _sampler_kwargs(
        self, cfg: SampleConfig, cells: Sequence[CellKey], seeds: Sequence[int], uncond: Tensor
    ) -> dict[str, Any]:
        """The sampler-specific arguments built from ``cfg.sampler_options`` (checked by :meth:`_check`)."""
        opts = self._sampler_options(cfg)
        if cfg.sampler in ("attribute_switch", "mixing"):
            s1 = switched_cells(
                cells, opts["attribute"], self.bundle.attribute_values[opts["attribute"]], opts.get("to"), seeds
            )
            cond1 = self.bundle.conditioner.cached(s1).to(self.device)
            out: dict[str, Any] = {"switch_plan": ConditioningPlan(cond=cond1, uncond=uncond, cells=tuple(s1))}
            if cfg.sampler == "attribute_switch":
                out["tau"] = opts["tau"]
            return out
        if cfg.sampler == "fairdiffusion_perturbed":
            return {"perturbation": opts["perturbation"]}
        return {}

    def _batches(
        self, cells: Sequence[CellKey], seeds: Sequence[int], cfg: SampleConfig
    ) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, len(seeds), cfg.batch_size):
            sl = slice(start, start + cfg.batch_size)
            yield start, to_uint8(self._sample_batch(cells[sl], seeds[sl], cfg))

    def _check(self, cfg: SampleConfig) -> None:
        if cfg.steps < 1:
            raise ConfigError(_BAD_STEPS.format(value=cfg.steps))
        if cfg.batch_size < 1:
            raise ConfigError(_BAD_BATCH.format(value=cfg.batch_size))
        if cfg.output_type not in ("pil", "np", "pt"):
            raise ConfigError(_BAD_OUTPUT_TYPE.format(value=cfg.output_type))
        fn = get_sampler(cfg.sampler)
        check_guidance_rescale(cfg.guidance_rescale)
        if cfg.guidance_rescale and "guidance_rescale" not in inspect.signature(fn).parameters:
            raise ConfigError(_NO_RESCALE.format(value=cfg.guidance_rescale, sampler=cfg.sampler))
        self._sampler_options(cfg)

    def _sampler_options(self, cfg: SampleConfig) -> dict[str, Any]:
        """``cfg.sampler_options`` resolved once per config (files read and warnings issued once per run)."""
        cached = self._options_cache
        if cached is None or cached[0] is not cfg:
            cached = self._options_cache = (cfg, resolve_sampler_options(self.bundle, cfg))
        return cached[1]

    def _resolve_tau(self, cfg: SampleConfig, cells: Sequence[CellKey]) -> SampleConfig:
        """attribute_switch without ``tau``: ``cfg`` with the cached or freshly searched τ* of the value pairs these
        cells switch along (:func:`~fairsample.samplers.tau_search.resolve_tau`), said in one line on stderr."""
        if cfg.sampler != "attribute_switch" or self._sampler_options(cfg)["tau"] is not None:
            return cfg
        from fairsample.samplers.switch import switch_pairs, switch_step
        from fairsample.samplers.tau_search import describe_tau, resolve_tau

        opts = self._sampler_options(cfg)
        attr, values = opts["attribute"], self.bundle.attribute_values[opts["attribute"]]
        sources = sorted({c.value(attr) for c in cells}, key=values.index)
        say = _stderr_line("attribute_switch: tau not given; ")
        _, info = resolve_tau(
            self.bundle,
            self.engine,
            attribute=attr,
            pairs=switch_pairs(sources, attr, values, opts["to"]),
            guidance_scale=float(cfg.guidance_scale),
            progress=say,
        )
        k = switch_step(info["tau_star"], make_scheduler(cfg.scheduler, self.bundle.scheduler.config), cfg.steps)
        say(f"{describe_tau(info)}; sampling switches at step {k} of {cfg.steps}")
        resolved = cfg.replace(sampler_options={**dict(cfg.sampler_options or {}), "tau": info["tau_star"]})
        self._tau_cache = (resolved, info)
        return resolved

    def manifest(self, cfg: SampleConfig) -> dict[str, Any]:
        """Provenance recorded with every output (attribute_switch: τ, where it came from, the switching step)."""
        man = {
            "sampler": cfg.sampler,
            "method_status": SAMPLER_STATUS.get(cfg.sampler, "reference"),
            "sample_config": cfg.to_dict(),
            "bundle": self.bundle.bundle_id,
            "bundle_method": self.bundle.config.get("method", {"name": "vanilla"}),
            "prediction_type": self.bundle.prediction_type,
            "engine": {
                "backend": self.engine.backend,
                "manifest": dict(self.engine.manifest),
                **({"choice": self.backend_choice.to_dict()} if self.backend_choice is not None else {}),
            },
            "versions": library_versions(),
        }
        if cfg.sampler == "attribute_switch":
            from fairsample.samplers.switch import switch_step

            tau = self._sampler_options(cfg)["tau"]
            resolved = self._tau_cache[1] if self._tau_cache is not None and self._tau_cache[0] is cfg else None
            man["tau"] = {
                "tau": tau,
                "origin": "given" if resolved is None else resolved["source"],
                "switch_step": switch_step(
                    tau, make_scheduler(cfg.scheduler, self.bundle.scheduler.config), cfg.steps
                ),
                "steps": cfg.steps,
                "search": resolved,
            }
        return man

    def __call__(
        self,
        cells: Sequence[CellKey],
        seeds: Sequence[int],
        *,
        steps: int | None = None,
        guidance_scale: float | None = None,
        scheduler: str | None = None,
        batch_size: int | None = None,
        sampler: str | None = None,
        output_type: Literal["pil", "np", "pt"] | None = None,
        progress: bool = False,
        guidance_rescale: float | None = None,
    ) -> SampleOutput:
        """Generate one image per (cell, seed) pair, in memory.

        Args:
            cells: ``B`` cells (from :meth:`ModelBundle.parse_cell` or :meth:`ModelBundle.cells`).
            seeds: ``B`` seeds; image k depends only on ``cells[k]`` and ``seeds[k]``.
            steps, guidance_scale, scheduler, batch_size, sampler, output_type, guidance_rescale: override
                :class:`SampleConfig` (whose defaults the bundle's recommended ``sampling`` settings override).
            progress: a progress bar on stderr.

        Returns:
            :class:`SampleOutput`.
        """
        if len(cells) != len(seeds):
            raise ConfigError(f"`cells` and `seeds` must have the same length, got {len(cells)} and {len(seeds)}.")
        cfg = self.default_config().replace(
            steps=steps,
            guidance_scale=guidance_scale,
            scheduler=scheduler,
            batch_size=batch_size,
            sampler=sampler,
            output_type=output_type,
            guidance_rescale=guidance_rescale,
        )
        self._check(cfg)
        cfg = self._resolve_tau(cfg, cells)
        arrays = []
        bar = tqdm(total=len(seeds), desc="generate", unit="img", file=sys.stderr, disable=not progress)
        for _, arr in self._batches(list(cells), list(seeds), cfg):
            arrays.append(arr)
            bar.update(len(arr))
        bar.close()
        u8 = np.concatenate(arrays) if arrays else np.zeros((0, *self.bundle.image_shape[1:], 3), np.uint8)
        if cfg.output_type == "pil":
            images: Any = [Image.fromarray(a, "RGB") for a in u8]
        elif cfg.output_type == "np":
            images = u8.astype(np.float32) / 255.0
        else:
            images = torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255.0
        return SampleOutput(
            images=images, cells=list(cells), seeds=[int(s) for s in seeds], manifest=self.manifest(cfg)
        )

    # -- folders ---------------------------------------------------------------------------------------------------
    def generate_to_folder(
        self,
        output_dir: str | os.PathLike[str],
        plan: GenerationPlan,
        config: SampleConfig | None = None,
        *,
        overwrite: bool = False,
        progress: bool = True,
        on_batch: Callable[[int, int], None] | None = None,
        shard: tuple[int, int] | None = None,
        distributed: bool | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        scheduler: str | None = None,
        batch_size: int | None = None,
        sampler: str | None = None,
        guidance_rescale: float | None = None,
    ) -> GenerationResult:
        """Generate a plan into a dataset folder, resumably, on one process or sharded over several.

        Images are written one by one (temporary file + rename, so a PNG that exists is complete); ``metadata.csv``
        and ``config.json`` with ``"complete": true`` are written last. Re-running the same plan into the same
        folder generates only the missing images. Sharding: see the module docstring.

        Args:
            output_dir: the folder (created if needed).
            plan: the :class:`GenerationPlan`.
            config: :class:`SampleConfig` (defaults if omitted).
            overwrite: replace a folder holding a different plan or other files.
            progress: a progress bar on stderr (only when stderr is a terminal; main process only).
            on_batch: called with (images of this process done, images of this process) after every batch.
            shard: ``(rank, world)``: generate only items ``i`` with ``i % world == rank`` (independent processes).
            distributed: ``None`` (auto: accelerate's process group when ``WORLD_SIZE`` > 1), ``True`` (always via
                accelerate's ``PartialState``; one process without a launcher) or ``False`` (never).
            steps, guidance_scale, scheduler, batch_size, sampler, guidance_rescale: override ``config`` (the same
                keywords as :meth:`__call__`; ``None`` keeps the config's value). Images are always PNG files.

        Returns:
            :class:`GenerationResult` (``n_generated`` counts this process's images).

        Example:
            >>> plan = GenerationPlan.per_cell(pipe.bundle.cells(), 2)  # doctest: +SKIP
            >>> pipe.generate_to_folder("out", plan, steps=5)  # doctest: +SKIP
        """
        t0 = time.time()
        cfg = config or self.default_config()
        overrides = {
            "steps": steps,
            "guidance_scale": guidance_scale,
            "scheduler": scheduler,
            "batch_size": batch_size,
            "sampler": sampler,
            "guidance_rescale": guidance_rescale,
        }
        if any(v is not None for v in overrides.values()):  # else keep the object: its resolved options are cached
            cfg = cfg.replace(**overrides)
        self._check(cfg)
        cfg = self._resolve_tau(cfg, [it.cell for it in plan.items])
        rank, world, state = self._resolve_shard(shard, distributed)
        out = Path(output_dir)
        label = self.bundle.label_name
        digest = plan.digest(label)
        files = [f"images/{it.seed:06d}.png" for it in plan.items]
        mine = list(range(rank, len(files), world))
        owned = {Path(files[k]).name for k in mine} if world > 1 else None

        def prepare(owned_names: set[str] | None) -> None:
            self._prepare_folder(out, digest, overwrite, owned_names)
            plan_doc = {
                "plan_digest": digest,
                "sample_config": cfg.to_dict(),
                "bundle": self.bundle.bundle_id,
                "items": plan.to_json(label),
            }
            write_atomic(out / "plan.json", json.dumps(plan_doc) + "\n")
            (out / "images").mkdir(exist_ok=True)

        if state is None:
            prepare(owned)
        else:  # the main process prepares the folder while the others wait; its error is raised on every rank
            error, failure = None, None
            if state.is_main_process:
                try:
                    prepare(None)  # no process is generating yet: every leftover temporary file is stale
                except (ConfigError, OSError) as exc:
                    error, failure = str(exc), exc
            from accelerate.utils import broadcast_object_list

            error = broadcast_object_list([error], from_process=0)[0]
            if failure is not None:
                raise failure
            if error is not None:
                raise ConfigError(error)

        todo = [k for k in mine if not (out / files[k]).is_file()]
        bar = tqdm(
            total=len(mine),
            initial=len(mine) - len(todo),
            desc="generate" if world == 1 else f"generate [{rank}/{world}]",
            unit="img",
            file=sys.stderr,
            disable=not (progress and rank == 0 and sys.stderr.isatty()),
        )
        cells = [plan.items[k].cell for k in todo]
        seeds = [plan.items[k].seed for k in todo]
        done = len(mine) - len(todo)
        for start, arr in self._batches(cells, seeds, cfg):  # streams: one batch of images in memory at a time
            for j, a in enumerate(arr):
                _save_png_atomic(a, out / files[todo[start + j]])
            done += len(arr)
            bar.update(len(arr))
            if on_batch is not None:
                on_batch(done, len(mine))
        bar.close()

        complete = True
        if state is not None:
            state.wait_for_everyone()
            missing = [f for f in files if not (out / f).is_file()]
            if missing:  # every rank sees the same shared folder, so every rank raises (no rank left waiting)
                raise ConfigError(_SHARDS_MISSING.format(n=len(missing), first=missing[0]))
            if state.is_main_process:
                self._finalize(out, plan, cfg, files, digest)
            state.wait_for_everyone()
        elif world > 1:
            complete = all((out / f).is_file() for f in files)
            if complete:
                self._finalize(out, plan, cfg, files, digest)
        else:
            self._finalize(out, plan, cfg, files, digest)
        return GenerationResult(out, len(files), len(todo), time.time() - t0, files, complete, (rank, world))

    def _resolve_shard(self, shard: tuple[int, int] | None, distributed: bool | None) -> tuple[int, int, Any]:
        """(rank, world, accelerate PartialState or None)."""
        if shard is not None:
            if distributed:
                raise ConfigError(_SHARD_AND_DISTRIBUTED)
            ok = (
                isinstance(shard, tuple | list)
                and len(shard) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in shard)
                and 0 <= shard[0] < shard[1]
            )
            if not ok:
                raise ConfigError(_BAD_SHARD.format(value=shard))
            return int(shard[0]), int(shard[1]), None
        if distributed is None:
            distributed = _world_size() > 1
        if not distributed:
            return 0, 1, None
        try:
            from accelerate import PartialState
        except ImportError as exc:
            raise ImportError(_NEED_ACCELERATE) from exc
        state = PartialState(cpu=self.device.type == "cpu")
        return int(state.process_index), int(state.num_processes), state

    def _finalize(self, out: Path, plan: GenerationPlan, cfg: SampleConfig, files: list[str], digest: str) -> None:
        """Write metadata.csv, fairsample.toml and config.json: the folder is complete only now."""
        label = self.bundle.label_name
        groups = self.bundle.groups
        header = ["file_name", *groups, label, "seed", "sampler", "method_status"]
        man = self.manifest(cfg)
        switched: list[str] = []
        if cfg.sampler in ("attribute_switch", "mixing"):  # cells stay the requested s0; s1 gets its own column
            opts = self._sampler_options(cfg)
            attr = opts["attribute"]
            header.append(f"{attr}_switched_to")
            s1 = switched_cells(
                [it.cell for it in plan.items],
                attr,
                self.bundle.attribute_values[attr],
                opts.get("to"),
                [it.seed for it in plan.items],
            )
            switched = [c.value(attr) for c in s1]
        lines = [",".join(header)]
        for k, (f, it) in enumerate(zip(files, plan.items, strict=False)):
            vals = it.cell.as_dict(label)
            row = [f, *[vals[g] for g in groups], vals[label], str(it.seed), cfg.sampler, man["method_status"]]
            row += switched[k : k + 1]
            lines.append(",".join(_csv_field(v) for v in row))
        toml = f'label = "{label}"\ngroups = [{", ".join(json.dumps(g) for g in groups)}]\nmin_group_size = 1\n'
        write_atomic(out / "fairsample.toml", toml)
        write_atomic(out / "metadata.csv", "\n".join(lines) + "\n")
        doc = dict(
            man,
            complete=True,
            plan_digest=digest,
            n_images=len(files),
            counts={c.to_text(label): n for c, n in sorted(plan.counts().items())},
        )
        write_atomic(out / "config.json", json.dumps(doc, indent=2, default=str) + "\n")

    def _prepare_folder(self, out: Path, digest: str, overwrite: bool, owned: set[str] | None = None) -> None:
        """Create, reuse (same plan) or refuse (different content) the output folder.

        ``owned``: image names whose leftover temporary files this process may delete (None: all of them); other
        shards may be writing the rest right now.
        """
        # another shard's plan.json being written (a hidden temporary sibling) does not make the folder foreign
        if not out.exists() or not any(not p.name.startswith(".plan.json.") for p in out.iterdir()):
            out.mkdir(parents=True, exist_ok=True)
            return
        plan_file = out / "plan.json"
        if plan_file.is_file():
            try:
                old = json.loads(plan_file.read_text(encoding="utf-8")).get("plan_digest")
            except json.JSONDecodeError:
                old = None
            if old == digest:
                for stale in ("metadata.csv", "config.json"):
                    (out / stale).unlink(missing_ok=True)  # re-marked complete at the end
                for tmp in (out / "images").glob(".*"):  # temporary files of a killed run
                    if owned is None or _tmp_target(tmp.name) in owned:
                        tmp.unlink(missing_ok=True)
                return
            if not overwrite:
                raise ConfigError(_OTHER_PLAN.format(path=out, old=old, new=digest))
        elif not overwrite:
            raise ConfigError(_NOT_EMPTY.format(path=out))
        shutil.rmtree(out)
        out.mkdir(parents=True)


def _stderr_line(prefix: str) -> Callable[[str], None]:
    """A one-line stderr printer (the train loop's convention for progress the caller did not ask to capture)."""
    return lambda line: print(prefix + line, file=sys.stderr, flush=True)


def _world_size() -> int:
    """``WORLD_SIZE`` set by torchrun / ``accelerate launch`` (1 when absent or unreadable)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def _rank_device(device: str) -> str:
    """``"cuda"`` → ``"cuda:<LOCAL_RANK>"`` when launched with several processes (one GPU per process)."""
    if device == "cuda" and _world_size() > 1 and os.environ.get("LOCAL_RANK", "").isdigit():
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return device


def _tmp_target(name: str) -> str:
    """The image a temporary file belongs to: ``.000123.png.k3j2.png`` → ``000123.png``."""
    cut = name.find(".png.", 1)
    return name[1 : cut + 4] if cut > 0 else name


def _csv_field(v: str) -> str:
    """Quote a CSV field when needed."""
    if any(ch in v for ch in ',"\n'):
        return '"' + v.replace('"', '""') + '"'
    return v


def _save_png_atomic(pixels: np.ndarray, path: Path) -> None:
    """Lossless, deterministic PNG (no metadata chunks) via a temporary sibling."""
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(pixels, "RGB").save(tmp, format="PNG", compress_level=6)

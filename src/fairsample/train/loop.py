"""The one training loop (diffusers ``train_text_to_image`` shape, on accelerate).

Every method — vanilla here, the fair methods later — runs this loop; a method changes only its hooks
(:mod:`fairsample.train.methods`). The loop is deterministic given ``seed``: the image order of each epoch, the noise,
the timesteps and the CFG dropout of micro-step ``k`` on rank ``r`` come from generators seeded with
``(seed, k, r)``, so ``--resume`` continues exactly where the killed run was (up to the checkpoint).

Per optimizer step: (1) draw the micro-batch (method's sampling weights), (2) x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε,
(3) CFG dropout of the conditioning, (4) predict ε or v, (5) per-sample MSE ℓ_i (mean over c, h, w),
(6) L = mean_i(w_i ℓ_i) + extra (method hooks), (7) clip, AdamW, EMA; log one JSONL line; checkpoint every N steps.
For methods with extra terms, every ``grad_norm_every`` optimizer steps the log line also holds ``grad_norm_terms``:
‖∇θ term‖ of the weighted diffusion loss (``"diffusion"``) and of each named extra term
(:meth:`TrainMethod.extra_losses`) on the step's first micro-batch, before clipping (per process, before the gradient
all-reduce); the update itself is unchanged.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from fairsample.core.config import TrainConfig
from fairsample.core.errors import ConfigError
from fairsample.core.rng import mix_seed
from fairsample.data.decode_check import check_decodable
from fairsample.data.folder import FolderDataset
from fairsample.data.schema import CellKey
from fairsample.data.splits import split_indices
from fairsample.models.bundle import ModelBundle, library_versions, new_pixel_bundle
from fairsample.models.conditioners import TokenTableConditioner
from fairsample.models.sd_import import open_model
from fairsample.models.source import ModelSource, finetune_defaults, inspect_model
from fairsample.train.checkpoint import checkpoint_dirs, load_checkpoint, save_checkpoint
from fairsample.train.methods import SetupContext, StepContext, TrainMethod
from fairsample.train.presets import get_method

_NOT_EMPTY = (
    "`output_dir` {path} already holds a training run ({what}); pass --resume to continue it, or choose a new "
    "--output-dir."
)
_RESUME_MISMATCH = (
    "--resume: setting {key!r} is {new!r} but the checkpoint was trained with {old!r}; rerun with the original "
    "value or choose a new --output-dir."
)
_BAD_MP = "`mixed_precision` must be one of ['bf16', 'fp16', 'no'], got {value!r}."
_FP16_CPU = "`mixed_precision` 'fp16' needs a CUDA device; on CPU use 'bf16' or 'no'."
_BAD_SPLIT = "`split` must be one of ['all', 'test', 'train', 'val'], got {value!r}."
_BAD_LR_SCHEDULE = "`lr_schedule` must be 'constant' or 'cosine', got {value!r}."
_NONPOSITIVE = "`{name}` must be >= 1, got {value!r}."
_BAD_GRAD_NORM_EVERY = "`grad_norm_every` must be an integer >= 0 (0: off), got {value!r}; e.g. 25."
_EMPTY_SPLIT = "the {split!r} split of {root} is empty; use a larger dataset or --split all."
_UNKNOWN_TO_MODEL = "cell {cell} of the dataset is unknown to --init-from {path}: {why}"
_PARENT_ONLY_KEYS = (
    "name",
    "path",
    "description",
    "train_command",
    "train_seconds",
    "sampling_selection",
    "conditioning_guard",
)
"""Bundle-config keys that describe the --init-from parent only; a fine-tuned bundle drops them (its id becomes its
own path) and records the parent under ``init_from``."""
_BAD_WEIGHTS = "a method returned sampling weights of shape {shape}; it must give N={n} finite weights >= 0, not all 0"

#: settings that may change between a run and its --resume
_RESUMABLE_KEYS = {
    "max_steps",
    "checkpoint_every",
    "gradient_checkpointing",
    "checkpoints_total_limit",
    "device",
    "grad_norm_every",
    "guard",
    "guard_images_per_cell",
    "guard_guidance",
    "guard_rescale",
    "guard_steps",
}


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` produced."""

    bundle_path: Path  # the model bundle (the output folder)
    steps: int  # optimizer steps completed in total
    resumed_from: int | None  # checkpoint step the run continued from
    final_loss: float  # mean loss of the last logged step
    log_path: Path  # per-step JSONL log
    seconds: float  # wall time of this call


class _Denoiser(nn.Module):
    """U-Net + (trainable) token-table conditioner as one module, so DDP wraps and syncs both."""

    def __init__(self, unet: nn.Module, conditioner: nn.Module) -> None:
        super().__init__()
        self.unet = unet
        self.conditioner = conditioner

    def forward(self, noisy: Tensor, timesteps: Tensor, cond: Tensor) -> Tensor:
        """``cond``: ``(B, S)`` long token indices (token table) or ``(B, S, D)`` embeddings (frozen text encoder)."""
        if cond.dtype == torch.long:
            cond = self.conditioner(cond)
        return self.unet(noisy, timesteps, cond).sample


class _IndexStream:
    """Deterministic stream of training-image positions: one shuffled (or weighted) epoch after another.

    With weights, an "epoch" is N draws with replacement (``WeightedRandomSampler`` semantics). New weights
    (:meth:`set_weights`) re-draw the rest of the current epoch from a generator keyed by the weights' content, so a
    resumed run that restores the same weights continues the same stream.
    """

    def __init__(self, n: int, seed: int, weights: np.ndarray | None) -> None:
        self.n, self.seed = n, seed
        self.weights: Tensor | None = None
        self._key = 0
        self._epoch = -1
        self._perm: Tensor | None = None
        self.set_weights(weights)

    def set_weights(self, weights: np.ndarray | None) -> None:
        """Use new per-image weights (``None``: uniform shuffling) from the next position on."""
        if weights is None:
            self.weights, key = None, 0
        else:
            w = np.ascontiguousarray(np.asarray(weights, dtype=np.float64))
            if w.shape != (self.n,) or not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
                raise ConfigError(_BAD_WEIGHTS.format(n=self.n, shape=w.shape))
            self.weights = torch.from_numpy(w)
            key = int.from_bytes(hashlib.blake2b(w.tobytes(), digest_size=8).digest(), "little")
        if key != self._key:
            self._key, self._epoch = key, -1

    def _epoch_order(self, epoch: int) -> Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, 7919, self._key, self._key >> 32))
            if self.weights is None:
                self._perm = torch.randperm(self.n, generator=g)
            else:
                self._perm = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
            self._epoch = epoch
        assert self._perm is not None
        return self._perm

    def take(self, start: int, count: int) -> tuple[list[int], int]:
        """Positions ``start .. start+count-1`` → (dataset rows, epoch of the first one)."""
        rows = []
        for p in range(start, start + count):
            rows.append(int(self._epoch_order(p // self.n)[p % self.n]))
        return rows, start // self.n


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate at an optimizer step: linear warmup, then constant or cosine to 0 at ``max_steps``."""
    if cfg.lr_warmup_steps > 0 and step < cfg.lr_warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.lr_warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.learning_rate
    span = max(1, cfg.max_steps - cfg.lr_warmup_steps)
    progress = min(1.0, (step - cfg.lr_warmup_steps) / span)
    return cfg.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))


def _term_grad_norms(terms: dict[str, Tensor], params: Sequence[Tensor]) -> dict[str, float]:
    """‖∇θ term‖₂ over ``params`` for each scalar term (``autograd.grad`` with the graph kept; ``.grad`` untouched)."""
    out: dict[str, float] = {}
    for name, term in terms.items():
        if not term.requires_grad:
            out[name] = 0.0
            continue
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        norms = [g.detach().float().norm() for g in grads if g is not None]
        out[name] = round(float(torch.linalg.vector_norm(torch.stack(norms))), 6) if norms else 0.0
    return out


def _check_config(cfg: TrainConfig) -> None:
    if cfg.mixed_precision not in ("no", "fp16", "bf16"):
        raise ConfigError(_BAD_MP.format(value=cfg.mixed_precision))
    if cfg.split not in ("train", "val", "test", "all"):
        raise ConfigError(_BAD_SPLIT.format(value=cfg.split))
    if cfg.lr_schedule not in ("constant", "cosine"):
        raise ConfigError(_BAD_LR_SCHEDULE.format(value=cfg.lr_schedule))
    for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "image_size"):
        if getattr(cfg, name) < 1:
            raise ConfigError(_NONPOSITIVE.format(name=name, value=getattr(cfg, name)))
    if isinstance(cfg.grad_norm_every, bool) or not isinstance(cfg.grad_norm_every, int) or cfg.grad_norm_every < 0:
        raise ConfigError(_BAD_GRAD_NORM_EVERY.format(value=cfg.grad_norm_every))


def resolve_device(device: str) -> str:
    """``"auto"`` → ``"cuda"`` when available, else ``"cpu"``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _unique_report(seen: set[int], epoch: int, n: int, train_cells: Sequence[CellKey], label: str) -> dict[str, Any]:
    """Log fields for a finished epoch: unique training images drawn, overall and per cell (after a ``--resume``
    mid-epoch, the first report counts only the draws since the resume)."""
    per_cell: dict[str, int] = {}
    for i in seen:
        key = train_cells[i].to_text(label)
        per_cell[key] = per_cell.get(key, 0) + 1
    return {
        "epoch_done": epoch,
        "unique_images": len(seen),
        "unique_fraction": round(len(seen) / n, 4),
        "unique_by_cell": dict(sorted(per_cell.items())),
    }


def _to_model_range(images: Sequence[Any]) -> Tensor:
    """RGB PIL images of one size → ``(B, 3, H, W)`` float32 in [-1, 1] (the one pixel normalisation of training)."""
    arrs = [np.asarray(im, dtype=np.float32) for im in images]
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2) / 127.5 - 1.0


def _load_paths(root: Path, paths: Sequence[Any], size: int) -> Tensor:
    """Image files (relative to ``root`` or absolute) → ``(B, 3, size, size)`` float32 in [-1, 1]."""
    from PIL import Image

    images = []
    for p in paths:
        path = Path(p) if Path(p).is_absolute() else Path(root) / p
        with Image.open(path) as im:
            images.append(im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC))
    return _to_model_range(images).contiguous()


def _load_batch(ds: FolderDataset, rows: Sequence[int], size: int, flip: Tensor | None) -> Tensor:
    """Images → ``(B, 3, size, size)`` float32 in [-1, 1]."""
    x = _to_model_range([ds.load_image(r, size=size) for r in rows])
    if flip is not None:
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x.contiguous()


_BASE_FACT = (
    "`{key}` {value!r} does not fit --init-from {path}, whose model has {key}={base!r}; omit it (the base model's "
    "value is used) or train a new model."
)


def _adopt_base_facts(cfg: TrainConfig, source: ModelSource) -> TrainConfig:
    """Resolution, prediction type and architecture of a fine-tune are the base model's: fields left at their
    :class:`TrainConfig` defaults take the base's values (so the bundle's ``train`` record shows what was used); a
    different explicit value is an error. Learning rate and warm-up are choices, applied by the CLI
    (:func:`~fairsample.models.source.finetune_defaults`)."""
    base = finetune_defaults(source)
    defaults = TrainConfig()
    changes: dict[str, Any] = {}
    for key in ("image_size", "prediction_type", "architecture"):
        if key not in base or getattr(cfg, key) == base[key]:
            continue
        if getattr(cfg, key) != getattr(defaults, key) and not (key == "architecture" and source.kind == "bundle"):
            raise ConfigError(_BASE_FACT.format(key=key, value=getattr(cfg, key), path=source.path, base=base[key]))
        changes[key] = base[key]
    return cfg.replace(**changes)


def _say_resize(dataset: FolderDataset, rows: Any, size: int, say: Callable[[str], None]) -> list[str]:
    """State once when the training images are not ``size × size`` (they are resized, bicubic); reads the headers of
    up to 64 evenly spaced training rows."""
    from PIL import Image

    picks = np.unique(np.linspace(0, len(rows) - 1, num=min(64, len(rows))).astype(int))
    sizes = set()
    for i in picks:
        with Image.open(dataset.image_path(int(rows[i]))) as im:
            sizes.add(im.size)
    other = [f"{w}x{h}" for w, h in sorted(s for s in sizes if s != (size, size))]
    if other:
        shown = ", ".join(other[:3])
        say(f"note: training images are {shown}; they are resized to {size}x{size} (bicubic) for this model")
    return other


def _training_rows(dataset: FolderDataset, cfg: TrainConfig, *, progress: bool) -> np.ndarray:
    """Step 1: the rows of ``cfg.split`` (all rows for ``"all"``), each image decoded once before any model work.

    Raises:
        ConfigError: the split is empty.
        DataError: unreadable, truncated or wrong-mode images (:func:`~fairsample.data.decode_check.check_decodable`).
    """
    if cfg.split == "all":
        rows = np.arange(len(dataset))
    else:
        rows = np.asarray(split_indices(dataset, seed=cfg.split_seed)[cfg.split])
    if len(rows) == 0:
        raise ConfigError(_EMPTY_SPLIT.format(split=cfg.split, root=dataset.root))
    check_decodable(dataset, rows, progress=progress)
    return rows


def _starting_bundle(
    dataset: FolderDataset,
    cfg: TrainConfig,
    train_cells: Sequence[CellKey],
    vocabulary: tuple[Mapping[str, Sequence[str]], Sequence[str]] | None,
    base_source: ModelSource | None,
    say: Callable[[str], None],
) -> tuple[ModelBundle, int]:
    """Step 2: the model to train and its image side — the ``--init-from`` model (a bundle, or a Stable Diffusion
    folder given the dataset's cells and ``cfg.template``), checked to know every training cell, or a new seeded
    built-in pixel model.

    Raises:
        ConfigError: a training cell the ``--init-from`` model cannot condition on.
    """
    if cfg.init_from:
        values, labels = vocabulary or (dataset.attribute_values(), dataset.label_values())
        if base_source is not None and base_source.kind == "bundle" and cfg.template:
            say(
                f"note: --template is ignored: --init-from {cfg.init_from} is a fairsample bundle with its own "
                "conditioner"
            )
        bundle = open_model(
            cfg.init_from,
            flag="--init-from",
            attributes=values,
            labels=labels,
            label_name=dataset.spec.label,
            template=cfg.template,
        )
        for cell in sorted(set(train_cells)):
            try:
                bundle.conditioner.indices([cell]) if isinstance(
                    bundle.conditioner, TokenTableConditioner
                ) else bundle.conditioner.prompt(cell)
            except ConfigError as exc:
                raise ConfigError(_UNKNOWN_TO_MODEL.format(cell=cell, path=cfg.init_from, why=exc)) from exc
        image_size = bundle.image_shape[-1]
    else:
        with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's global RNG
            torch.manual_seed(cfg.seed)
            values, labels = vocabulary or (dataset.attribute_values(), dataset.label_values())
            bundle = new_pixel_bundle(
                {k: list(v) for k, v in values.items()},
                list(labels),
                architecture=cfg.architecture,
                image_size=cfg.image_size,
                cross_attention_dim=cfg.cross_attention_dim,
                prediction_type=cfg.prediction_type,
                label_name=dataset.spec.label,
            )
        image_size = cfg.image_size
    return bundle, image_size


def train(
    dataset: FolderDataset,
    output_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    method: TrainMethod | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    vocabulary: tuple[Mapping[str, Sequence[str]], Sequence[str]] | None = None,
) -> TrainResult:
    """Train (or fine-tune) a diffusion U-Net on a dataset folder and write a model bundle.

    Args:
        dataset: a validated :class:`~fairsample.data.folder.FolderDataset` (cells = attribute values × label).
        output_dir: the bundle folder; ``checkpoints/`` and ``logs/train_log.jsonl`` live inside it.
        config: :class:`~fairsample.core.config.TrainConfig` (defaults if omitted).
        method: a :class:`~fairsample.train.methods.TrainMethod` (default:
            ``get_method(config.method, config.method_options)``).
        resume: continue from the newest checkpoint in ``output_dir`` (a fresh start if there is none).
        progress: show a progress bar on stderr (only when stderr is a terminal).
        log: receives one-line human messages (default: print to stderr).
        vocabulary: ``(attribute values, labels)`` of a *new* model's conditioner (default: the dataset's). A study
            trains its shared base on data without the minority group but with the minority's token, so that every
            method can later fine-tune it on the full data.

    Returns:
        :class:`TrainResult`.

    Raises:
        ConfigError: invalid settings, a non-empty ``output_dir`` without ``resume``, or changed settings on resume.

    Example:
        >>> from fairsample.data import load_folder  # doctest: +SKIP
        >>> train(load_folder("demo"), "runs/m", TrainConfig(max_steps=200))  # doctest: +SKIP
    """
    from fairsample.core.errors import require

    require("accelerate", feature="training")  # a missing extra names `pip install 'fairsample[train]'`

    t_start = time.time()
    cfg = config or TrainConfig()
    base_source = None
    if cfg.init_from:
        base_source = inspect_model(cfg.init_from, "--init-from")
        cfg = _adopt_base_facts(cfg, base_source)
    _check_config(cfg)
    say = log or (lambda msg: print(msg, file=sys.stderr))
    out = Path(output_dir)
    method = method or get_method(cfg.method, cfg.method_options)
    method.check_config(cfg)
    device = resolve_device(cfg.device)
    if cfg.mixed_precision == "fp16" and not device.startswith("cuda"):
        raise ConfigError(_FP16_CPU)

    existing = checkpoint_dirs(out)
    if not resume and (existing or (out / "fairsample_config.json").exists()):
        what = f"checkpoint-{existing[-1][0]}" if existing else "a model bundle"
        raise ConfigError(_NOT_EMPTY.format(path=out, what=what))

    # 1. data: the training rows, each image decoded once
    rows = _training_rows(dataset, cfg, progress=progress)
    # 2. model, optimizer and EMA; the method's one-time setup
    run, resized_from = _build_run(dataset, cfg, method, rows, out, device, vocabulary, base_source, say)
    method.setup(_setup_context(run, torch.device(device if device != "auto" else "cpu"), say))
    # 3. resume from the newest checkpoint, then hand the model to accelerate
    start_step, resumed_from = _resume(run, existing, resume=resume, say=say)
    _prepare(run)
    log_path = _open_log(run, start_step)
    # 4. the optimizer steps
    last_loss = _train_steps(run, start_step, log_path, progress=progress)
    # 5. the bundle: EMA weights, the training record, the method's artifacts and the conditioning guard
    _write_bundle(run, resized_from, say)
    run.accelerator.wait_for_everyone()
    run.accelerator.end_training()
    return TrainResult(
        bundle_path=out,
        steps=cfg.max_steps,
        resumed_from=resumed_from,
        final_loss=last_loss,
        log_path=log_path,
        seconds=time.time() - t_start,
    )


@dataclass(eq=False)
class _Run:
    """One training run's state, shared by its steps; ``denoiser`` and ``optimizer`` are rebound by accelerate's
    ``prepare`` (:func:`_prepare`), which also sets the index stream and the null conditioning."""

    cfg: TrainConfig  # the resolved settings
    method: TrainMethod  # the method's hooks
    dataset: FolderDataset  # the dataset folder
    rows: np.ndarray  # dataset rows of the training split
    all_cells: list[CellKey]  # the cell of every dataset row
    train_cells: list[CellKey]  # the cell of every training row
    out: Path  # the bundle folder
    accelerator: Any  # accelerate.Accelerator
    bundle: ModelBundle  # the model being trained
    image_size: int  # training resolution
    noise_sched: Any  # the bundle's training scheduler (forward diffusion, targets)
    token_table: bool  # the conditioner is a trainable token table (else a frozen text encoder)
    denoiser: nn.Module  # U-Net + conditioner (prepared by accelerate after setup)
    optimizer: Any  # AdamW (prepared by accelerate after setup)
    ema: Any  # diffusers EMAModel, or None
    params: list[Tensor]  # the trained parameters
    stream: _IndexStream = field(init=False)  # training-image positions (set by _prepare)
    null_cond: Tensor | None = field(init=False)  # the null embedding of a frozen text encoder (set by _prepare)

    @property
    def dev(self) -> torch.device:
        """The training device."""
        return self.accelerator.device

    @property
    def rank(self) -> int:
        """This process."""
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        """The number of processes."""
        return self.accelerator.num_processes

    @property
    def global_batch(self) -> int:
        """Images per micro-step over all processes."""
        return self.cfg.batch_size * self.world

    def load_images(self, paths: Sequence[Any]) -> Tensor:
        """Image files → model inputs: pixels in [-1, 1], or a fixed (seeded) VAE posterior draw per file, so pair
        losses are reproducible."""
        x = _load_paths(self.dataset.root, paths, self.image_size)
        if self.bundle.vae is not None:
            with torch.no_grad():
                g = torch.Generator().manual_seed(mix_seed(self.cfg.seed, 104729))
                x = self.bundle.encode(x.to(self.bundle.vae.device), generator=g)
        return x

    def make_reference(self) -> Callable[[Tensor, Tensor, Sequence[CellKey | None]], Tensor]:
        """A frozen copy of the model now (DPO's reference), with the signature of :meth:`denoise`."""
        frozen = copy.deepcopy(self.denoiser).eval().requires_grad_(False)
        token_table = self.token_table

        def reference(noisy: Tensor, timesteps: Tensor, cells: Sequence[CellKey | None]) -> Tensor:
            frozen.to(noisy.device)
            with torch.no_grad():
                if token_table:
                    cond = frozen.conditioner.indices(cells).to(noisy.device)
                else:
                    cond = frozen.conditioner.cached(cells).to(noisy.device)
                return frozen(noisy, timesteps, cond)

        return reference

    def denoise(self, noisy: Tensor, timesteps: Tensor, cells: Sequence[CellKey | None]) -> Tensor:
        """The training model's prediction under other cells (a method's extra forward)."""
        unwrapped = self.accelerator.unwrap_model(self.denoiser)
        if self.token_table:
            cond = unwrapped.conditioner.indices(cells).to(self.dev)
        else:
            cond = unwrapped.conditioner.cached(cells).to(self.dev)
        return self.denoiser(noisy, timesteps, cond)

    def gather(self, t: Tensor) -> Tensor:
        """A per-sample tensor concatenated over processes in rank order (identity on one process)."""
        return self.accelerator.gather(t.contiguous()) if self.world > 1 else t

    def broadcast(self, t: Tensor) -> Tensor:
        """Rank 0's value of a tensor on every process (identity on one process)."""
        if self.world == 1:
            return t
        from accelerate.utils import broadcast as _broadcast

        return _broadcast(t.contiguous(), from_process=0)


def _build_run(
    dataset: FolderDataset,
    cfg: TrainConfig,
    method: TrainMethod,
    rows: np.ndarray,
    out: Path,
    device: str,
    vocabulary: tuple[Mapping[str, Sequence[str]], Sequence[str]] | None,
    base_source: ModelSource | None,
    say: Callable[[str], None],
) -> tuple[_Run, list[str]]:
    """Step 2: the accelerator, the starting model (:func:`_starting_bundle`), AdamW over its trainable parameters and
    the EMA; returns the run and the sizes the training images are resized from."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from diffusers.training_utils import EMAModel

    all_cells = dataset.cell_ids()
    train_cells = [all_cells[int(r)] for r in rows]
    # a new run may use another precision than an earlier train() call in this process; accelerate keeps a
    # process-wide singleton, so drop its precision state (the distributed PartialState is kept)
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        cpu=device == "cpu",
    )
    bundle, image_size = _starting_bundle(dataset, cfg, train_cells, vocabulary, base_source, say)
    resized_from = _say_resize(dataset, rows, image_size, say)
    if cfg.gradient_checkpointing:
        bundle.unet.enable_gradient_checkpointing()
    token_table = isinstance(bundle.conditioner, TokenTableConditioner)
    denoiser = _Denoiser(bundle.unet, bundle.conditioner)
    denoiser.requires_grad_(True)  # ModelBundle.load() (--init-from) returns modules in eval mode without gradients
    denoiser.train()
    if not token_table:
        bundle.conditioner.requires_grad_(False).eval()
    if bundle.vae is not None:
        bundle.vae.requires_grad_(False).eval()
    params = [p for p in denoiser.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=cfg.adam_betas, weight_decay=cfg.weight_decay)
    ema = EMAModel(params, decay=cfg.ema_decay) if cfg.use_ema else None
    run = _Run(
        cfg=cfg,
        method=method,
        dataset=dataset,
        rows=rows,
        all_cells=all_cells,
        train_cells=train_cells,
        out=out,
        accelerator=accelerator,
        bundle=bundle,
        image_size=image_size,
        noise_sched=bundle.scheduler,
        token_table=token_table,
        denoiser=denoiser,
        optimizer=optimizer,
        ema=ema,
        params=params,
    )
    return run, resized_from


def _setup_context(run: _Run, cond_device: torch.device, say: Callable[[str], None]) -> SetupContext:
    """What the method sees once, before the first step (:meth:`TrainMethod.setup`)."""
    return SetupContext(
        train_cells=run.train_cells,
        cell_set=sorted(set(run.all_cells)),
        attribute_values=run.dataset.attribute_values(),
        label_name=run.dataset.spec.label,
        bundle=run.bundle,
        device=cond_device,
        config=run.cfg,
        dataset=run.dataset,
        load_images=run.load_images,
        make_reference=run.make_reference,
        rank=run.accelerator.process_index,
        world=run.accelerator.num_processes,
        output_dir=run.out,
        log=say if run.accelerator.is_main_process else None,
        wait_for_everyone=run.accelerator.wait_for_everyone,
    )


def _resume(
    run: _Run, existing: Sequence[tuple[int, Path]], *, resume: bool, say: Callable[[str], None]
) -> tuple[int, int | None]:
    """Step 3: with ``resume``, load the newest checkpoint (model, optimizer, EMA, method state) after checking that
    only resumable settings changed; returns (start step, step resumed from or None)."""
    cfg = run.cfg
    if resume and existing:
        ck_step, ck_path = existing[-1]
        ck = load_checkpoint(ck_path)
        old_cfg = ck["state"].get("config", {})
        new_cfg = cfg.to_dict()
        for key in sorted(set(old_cfg) | set(new_cfg)):
            if key not in _RESUMABLE_KEYS and old_cfg.get(key) != new_cfg.get(key):
                raise ConfigError(_RESUME_MISMATCH.format(key=key, new=new_cfg.get(key), old=old_cfg.get(key)))
        run.denoiser.load_state_dict(ck["model"])
        run.optimizer.load_state_dict(ck["optimizer"])
        if run.ema is not None and ck["ema"] is not None:
            run.ema.load_state_dict(ck["ema"])
        run.method.load_state_dict(ck["state"].get("method", {}))
        say(f"resuming from {ck_path} (step {ck_step} of {cfg.max_steps})")
        return ck_step, ck_step
    if resume:
        say(f"no checkpoint in {run.out}/checkpoints: starting a new run")
    return 0, None


def _prepare(run: _Run) -> None:
    """Hand model and optimizer to accelerate, move the EMA, start the index stream (the method's sampling weights)
    and embed the null conditioning of a frozen text encoder."""
    run.denoiser, run.optimizer = run.accelerator.prepare(run.denoiser, run.optimizer)
    if run.ema is not None:
        run.ema.to(run.accelerator.device)
    run.stream = _IndexStream(len(run.rows), run.cfg.seed, run.method.sample_weights(run.train_cells))
    run.null_cond = None if run.token_table else run.bundle.conditioner.cached([None]).to(run.dev)


def _open_log(run: _Run, start_step: int) -> Path:
    """``logs/train_log.jsonl``; a resumed run drops the lines after its checkpoint (main process)."""
    log_dir = run.out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "train_log.jsonl"
    if run.accelerator.is_main_process:
        _truncate_log(log_path, start_step)
    return log_path


@dataclass
class _EpochTally:
    """Training rows drawn in the current epoch (effective unique images, METHODS.md §3.2)."""

    epoch: int  # the epoch being counted
    seen: set[int] = field(default_factory=set)  # training rows drawn in it

    def observe(self, epoch: int, batch_rows: Sequence[int], run: _Run) -> dict[str, Any]:
        """Count a micro-batch's rows; returns the finished epoch's report when ``epoch`` is a new one, else ``{}``."""
        report: dict[str, Any] = {}
        if epoch != self.epoch:
            report = _unique_report(self.seen, self.epoch, len(run.rows), run.train_cells, run.dataset.spec.label)
            self.seen, self.epoch = set(), epoch
        self.seen.update(batch_rows)
        return report


@dataclass
class _StepRecord:
    """What one optimizer step logs."""

    lr: float  # the step's learning rate
    losses: list[float] = field(default_factory=list)  # total loss of each micro-step
    extras: dict[str, Any] = field(default_factory=dict)  # epoch reports, gradient norms, method fields
    epoch: int = 0  # epoch of the last micro-batch
    grad_norm: float | None = None  # gradient norm before clipping (None when not clipped)


@dataclass
class _MicroBatch:
    """Step (1): this rank's share of one micro-batch and its generator."""

    ds_rows: list[int]  # dataset rows on this rank
    cells: list[CellKey]  # their cells
    global_cells: list[CellKey]  # the cells of the whole micro-batch over all processes
    generator: torch.Generator  # the micro-step's CPU generator, seeded with (seed, micro-step, rank)
    flip: Tensor | None  # per-image horizontal flips (``hflip``)


def _train_steps(run: _Run, start_step: int, log_path: Path, *, progress: bool) -> float:
    """Step 4: optimizer steps ``start_step .. max_steps - 1``, each logged and checkpointed; returns the last loss."""
    cfg = run.cfg
    bar = tqdm(
        total=cfg.max_steps,
        initial=start_step,
        desc="train",
        unit="step",
        file=sys.stderr,
        disable=not (progress and run.accelerator.is_main_process and sys.stderr.isatty()),
    )
    last_loss = float("nan")
    tally = _EpochTally((start_step * cfg.gradient_accumulation_steps * run.global_batch) // len(run.rows))
    for step in range(start_step, cfg.max_steps):
        t0 = time.time()
        record = _optimizer_step(run, tally, step)
        last_loss = float(np.mean(record.losses))
        _log_step(run, log_path, step, last_loss, record, t0)
        bar.update(1)
        bar.set_postfix(loss=f"{last_loss:.4f}")
        _maybe_checkpoint(run, step + 1)
    bar.close()
    return last_loss


def _optimizer_step(run: _Run, tally: _EpochTally, step: int) -> _StepRecord:
    """One optimizer step: refreshed sampling weights, the learning rate, every micro-step (1)-(7), then EMA."""
    cfg = run.cfg
    refreshed = run.method.sample_weights_at(step)
    if refreshed is not None:
        run.stream.set_weights(refreshed)
    record = _StepRecord(lr=lr_at(step, cfg))
    for group in run.optimizer.param_groups:
        group["lr"] = record.lr
    want_norms = bool(cfg.grad_norm_every) and step % cfg.grad_norm_every == 0
    for k in range(cfg.gradient_accumulation_steps):
        _micro_step(run, tally, step, k, want_norms, record)
    if run.ema is not None:
        run.ema.step(run.params)
    return record


def _micro_step(run: _Run, tally: _EpochTally, step: int, k: int, want_norms: bool, record: _StepRecord) -> None:
    """Micro-step ``k`` of ``step``: steps (1)-(7) of the module docstring, with the method's hooks."""
    batch, record.epoch = _micro_batch(run, tally, step * run.cfg.gradient_accumulation_steps + k, record.extras)
    # 1. clean inputs (pixels in [-1, 1], or VAE latents); 2. forward diffusion
    x0, noise, timesteps, noisy = _forward_diffusion(run, batch)
    # 3. conditioning with CFG dropout
    cond, dropped = _conditioning(run, batch.cells, batch.generator)
    with run.accelerator.accumulate(run.denoiser):
        # 4. prediction and target
        pred, target = _prediction_and_target(run, x0, noise, timesteps, noisy, cond)
        # 5. per-sample loss
        losses = (pred - target).pow(2).mean(dim=(1, 2, 3))
        ctx = StepContext(
            step=step,
            cells=batch.cells,
            latents=x0,
            noise=noise,
            timesteps=timesteps,
            noisy=noisy,
            cond=cond,
            dropped=dropped,
            pred=pred,
            target=target,
            losses=losses.detach(),
            denoise=run.denoise,
            generator=batch.generator,
            global_cells=batch.global_cells,
            gather=run.gather,
            broadcast=run.broadcast,
            rank=run.rank,
            world=run.world,
        )
        # 6. method hooks: per-sample weights and extra terms
        loss = _loss(run, ctx, losses, first=k == 0, want_norms=want_norms, extras=record.extras)
        run.accelerator.backward(loss)
        # 7. clip, optimizer step
        record.grad_norm = _clip_and_step(run)
    record.losses.append(float(loss.detach()))
    record.extras.update(run.method.after_step(ctx))


def _micro_batch(run: _Run, tally: _EpochTally, micro: int, extras: dict[str, Any]) -> tuple[_MicroBatch, int]:
    """Step (1): the global micro-batch from the index stream (counted for the epoch report), this rank's share, its
    generator and flips; returns it with the epoch of its first image."""
    cfg = run.cfg
    batch_rows, epoch = run.stream.take(micro * run.global_batch, run.global_batch)
    extras.update(tally.observe(epoch, batch_rows, run))
    global_cells = [run.train_cells[i] for i in batch_rows]
    mine = batch_rows[run.rank * cfg.batch_size : (run.rank + 1) * cfg.batch_size]
    ds_rows = [int(run.rows[i]) for i in mine]
    cells = [run.all_cells[r] for r in ds_rows]
    g = torch.Generator().manual_seed(mix_seed(cfg.seed, micro, run.rank))
    flip = torch.rand(len(ds_rows), generator=g) < 0.5 if cfg.hflip else None
    return _MicroBatch(ds_rows=ds_rows, cells=cells, global_cells=global_cells, generator=g, flip=flip), epoch


def _forward_diffusion(run: _Run, batch: _MicroBatch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Steps (1)-(2): x_0 (pixels in [-1, 1], or VAE latents), ε, t and x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε (DDPM)."""
    g, dev = batch.generator, run.dev
    with torch.no_grad():
        x0 = _load_batch(run.dataset, batch.ds_rows, run.image_size, batch.flip).to(dev)
        if run.bundle.vae is not None:
            x0 = run.bundle.encode(x0, generator=g)
    noise = torch.randn(x0.shape, generator=g).to(dev)
    num_t = int(run.noise_sched.config.num_train_timesteps)
    timesteps = torch.randint(0, num_t, (len(batch.ds_rows),), generator=g).to(dev)
    noisy = run.noise_sched.add_noise(x0, noise, timesteps)
    return x0, noise, timesteps, noisy


def _conditioning(run: _Run, cells: Sequence[CellKey], g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Step (3): the cells' conditioning with CFG dropout (Ho & Salimans, 2022) → (cond, dropped)."""
    cfg, dev = run.cfg, run.dev
    unwrapped = run.accelerator.unwrap_model(run.denoiser)
    if run.token_table:
        idx = unwrapped.conditioner.indices(cells)
        dropped_idx = unwrapped.conditioner.drop(idx, p_uncond=cfg.p_uncond, p_slot=cfg.p_slot, generator=g)
        dropped = (dropped_idx == unwrapped.conditioner.null_indices(len(cells))).all(dim=1).to(dev)
        cond = dropped_idx.to(dev)
    else:
        assert run.null_cond is not None
        dropped = (torch.rand(len(cells), generator=g) < cfg.p_uncond).to(dev)
        cond = unwrapped.conditioner.cached(cells).to(dev)
        cond = torch.where(dropped[:, None, None], run.null_cond.expand_as(cond), cond)
    return cond, dropped


def _prediction_and_target(
    run: _Run, x0: Tensor, noise: Tensor, timesteps: Tensor, noisy: Tensor, cond: Tensor
) -> tuple[Tensor, Tensor]:
    """Step (4): the model's float32 prediction (under autocast) and its target, ε or v."""
    with run.accelerator.autocast():
        pred = run.denoiser(noisy, timesteps.float(), cond).float()
    if run.noise_sched.config.prediction_type == "v_prediction":
        target = run.noise_sched.get_velocity(x0, noise, timesteps)
    else:
        target = noise
    return pred, target


def _loss(
    run: _Run, ctx: StepContext, losses: Tensor, *, first: bool, want_norms: bool, extras: dict[str, Any]
) -> Tensor:
    """Step (6): L = mean_i(w_i ℓ_i) + Σ extra terms; on the step's first micro-batch, the per-term gradient norms
    (logged every ``grad_norm_every`` steps, and handed to a balancing method that asks for them)."""
    method, step = run.method, ctx.step
    w = method.loss_weights(ctx)
    main = (losses * w.to(run.dev)).mean() if w is not None else losses.mean()
    terms = method.extra_losses(ctx)
    if first and terms and (want_norms or method.wants_grad_norms(step)):
        norms = _term_grad_norms({"diffusion": main, **terms}, run.params)
        for name, factor in (method.observe_grad_norms(step, norms) or {}).items():
            terms[name] = terms[name] * factor  # a balancing method rescales its term on this step
            norms[name] = round(norms[name] * abs(factor), 6)
        if want_norms:
            extras["grad_norm_terms"] = norms
    extra = None
    for term in terms.values():
        extra = term if extra is None else extra + term
    return main if extra is None else main + extra


def _clip_and_step(run: _Run) -> float | None:
    """Step (7): clip the gradient norm (when gradients sync) and take the AdamW step; returns the pre-clip norm."""
    grad_norm = None
    if run.accelerator.sync_gradients and run.cfg.max_grad_norm > 0:
        grad_norm = float(run.accelerator.clip_grad_norm_(run.params, run.cfg.max_grad_norm))
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return grad_norm


def _log_step(run: _Run, log_path: Path, step: int, loss: float, record: _StepRecord, t0: float) -> None:
    """One JSONL line per optimizer step (main process): step, loss, lr, epoch, grad norm, seconds, then extras."""
    if run.accelerator.is_main_process:
        rec: dict[str, Any] = {
            "step": step + 1,
            "loss": loss,
            "lr": record.lr,
            "epoch": record.epoch,
            "grad_norm": record.grad_norm,
            "seconds": round(time.time() - t0, 4),
        }
        rec.update(record.extras)
        with log_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")


def _maybe_checkpoint(run: _Run, done: int) -> None:
    """After ``done`` steps: a checkpoint every ``checkpoint_every`` and a loadable snapshot every ``snapshot_every``
    steps (main process, never at the last step: the bundle is written then)."""
    cfg, accelerator = run.cfg, run.accelerator
    if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.max_steps:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            save_checkpoint(
                run.out,
                done,
                model_state=accelerator.unwrap_model(run.denoiser).state_dict(),
                optimizer=run.optimizer.optimizer if hasattr(run.optimizer, "optimizer") else run.optimizer,
                ema_state=run.ema.state_dict() if run.ema is not None else None,
                state={"config": cfg.to_dict(), "method": run.method.state_dict()},
                keep=cfg.checkpoints_total_limit,
            )
    if cfg.snapshot_every and done % cfg.snapshot_every == 0 and done < cfg.max_steps:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            _write_snapshot(
                run.out / "snapshots" / f"step-{done:06d}",
                run.bundle,
                accelerator.unwrap_model(run.denoiser),
                run.ema,
                run.params,
                done,
            )


def _write_bundle(run: _Run, resized_from: list[str], say: Callable[[str], None]) -> None:
    """Step 5 (main process): the bundle with the EMA weights (the in-memory model keeps its raw weights), its
    training record (:func:`_record_training`), the method's artifacts, then the conditioning guard."""
    accelerator, ema, out = run.accelerator, run.ema, run.out
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(run.denoiser)
    if accelerator.is_main_process:
        raw_state = {k: v.detach().clone() for k, v in unwrapped.state_dict().items()}
        if ema is not None:
            ema.copy_to(run.params)
        run.bundle.unet, run.bundle.conditioner = unwrapped.unet, unwrapped.conditioner
        _record_training(
            run.bundle,
            run.cfg,
            run.method,
            run.dataset,
            run.all_cells,
            n_train=len(run.rows),
            ema=ema is not None,
            resize={"from": resized_from, "to": run.image_size} if resized_from else None,
        )
        run.bundle.save(out)
        for name, doc in run.method.artifacts().items():
            (out / name).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        if ema is not None:  # leave the in-memory modules as trained (raw), as callers may keep training
            unwrapped.load_state_dict(raw_state)
        from fairsample.train.guard import guard_after_training  # conditioning guard + recommended sampling settings

        guard_after_training(out, run.dataset, run.cfg, device=str(accelerator.device), log=say)


def _record_training(
    bundle: ModelBundle,
    cfg: TrainConfig,
    method: TrainMethod,
    dataset: FolderDataset,
    all_cells: Sequence[CellKey],
    *,
    n_train: int,
    ema: bool,
    resize: dict[str, Any] | None,
) -> None:
    """Last step: what was trained, into ``bundle.config`` (→ ``fairsample_config.json``): method, weights kind,
    the resolved ``TrainConfig``, any resize, dataset, cells, seed, steps and versions. A fine-tune drops its parent's
    identity keys and records the parent under ``init_from``."""
    if cfg.init_from:  # the parent's identity and training record must not pass for this model's
        parent = {"name": bundle.config.get("name"), "path": str(cfg.init_from), "method": bundle.config.get("method")}
        for key in _PARENT_ONLY_KEYS:
            bundle.config.pop(key, None)
        bundle.config["init_from"] = parent
    bundle.config.update(
        method=method.config(),
        method_status=method.method_status,
        weights="ema" if ema else "raw",
        train=cfg.to_dict(),
        image_resize=resize,
        dataset={"root": str(dataset.root), "spec": dataset.spec.to_dict(), "n_train": int(n_train)},
        cells=sorted({c.to_text(dataset.spec.label) for c in all_cells}),
        seed=cfg.seed,
        steps=cfg.max_steps,
        versions=library_versions(),
    )


def _write_snapshot(
    path: Path, bundle: ModelBundle, model: nn.Module, ema: Any, params: list[Tensor], step: int
) -> None:
    """A loadable bundle of the weights at ``step`` (EMA weights when EMA is on), written atomically; the model keeps
    training with its raw weights. Snapshots let a study plot a quality curve over training (``snapshot_every``)."""
    if path.is_dir() and (path / "fairsample_config.json").is_file():
        return  # a resumed run already wrote it
    if ema is not None:
        ema.store(params)
        ema.copy_to(params)
    try:
        bundle.unet, bundle.conditioner = model.unet, model.conditioner
        config = dict(bundle.config)
        bundle.config = dict(config, snapshot_step=step, weights="ema" if ema is not None else "raw")
        tmp = path.with_name(f".{path.name}.tmp")
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        bundle.save(tmp)
        bundle.config = config
        tmp.replace(path)
    finally:
        if ema is not None:
            ema.restore(params)


def _truncate_log(path: Path, start_step: int) -> None:
    """Drop log lines for steps after ``start_step`` (a resumed run rewrites them)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= start_step:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    path.write_text("".join(k + "\n" for k in keep), encoding="utf-8")

"""The ``fairsample`` command line: a thin typer shell over the SDK (STYLE.md §5).

Streams: results go to stdout (``--format json`` prints exactly one JSON document); progress, warnings and hints go to
stderr. Exit codes: 0 ok, 1 runtime failure (one line on stderr, no traceback), 2 usage error.
"""

from __future__ import annotations

import functools
import json
import re
import sys
import warnings
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from fairsample.cli_dataset import (  # noqa: F401  (re-exported: the shared dataset options)
    DatasetOptions,
    DropUnknownOpt,
    GroupColOpt,
    LabelColOpt,
    PatientColOpt,
    PresetOpt,
    check_folder,
)
from fairsample.errors import FairsampleError, FairsampleWarning, missing_extra_message

# rich_markup_mode=None on every app: plain click help keeps "[train]" and whole option names at 80 columns
app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=None,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="fairsample: fair synthetic medical images, fast. Start with `fairsample generate --output-dir out`.",
)
data_app = typer.Typer(
    no_args_is_help=True, rich_markup_mode=None, help="Dataset folders: validate, count, build the demo dataset."
)
app.add_typer(data_app, name="data")
cache_app = typer.Typer(
    no_args_is_help=True, rich_markup_mode=None, help="The engine artifact cache: list, verify, prune."
)
app.add_typer(cache_app, name="cache")
export_app = typer.Typer(
    no_args_is_help=True, rich_markup_mode=None, help="Export a bundle's U-Net to validated, cached engine artifacts."
)
app.add_typer(export_app, name="export")

F = TypeVar("F", bound=Callable[..., Any])
_RANGE_RE = re.compile(r"^(\d+)(?:-(\d+))?$")


class Format(StrEnum):
    human = "human"
    json = "json"
    quiet = "quiet"


class SchedulerName(StrEnum):
    ddim = "ddim"
    ddpm = "ddpm"
    pndm = "pndm"
    euler = "euler"
    dpmsolver = "dpmsolver++"


class MixedPrecision(StrEnum):
    no = "no"
    fp16 = "fp16"
    bf16 = "bf16"


class PredictionType(StrEnum):
    epsilon = "epsilon"
    v_prediction = "v_prediction"


class Dtype(StrEnum):
    float32 = "float32"
    float16 = "float16"


class DemoSource(StrEnum):
    auto = "auto"
    mnist5k = "mnist5k"
    digits = "digits"


TemplateOpt = Annotated[
    str | None,
    typer.Option(
        help="Prompt template of a Stable Diffusion model, naming every cell field, e.g. "
        "'dermoscopy, {tone} skin, {label}' (default: 'tone {tone}, label {label}' from the column names)."
    ),
]
FormatOpt = Annotated[Format, typer.Option("--format", help="human (tables), json (one JSON document) or quiet.")]
SamplerOpt = Annotated[
    str | None, typer.Option(help="Sampler: conditional, attribute_switch, mixing, fairdiffusion_perturbed.")
]
SamplerOptionOpt = Annotated[
    list[str] | None,
    typer.Option("--sampler-option", help="Sampler option key=value, e.g. tau=600, attribute=tone, to=dark."),
]
CacheDirOpt = Annotated[
    Path | None, typer.Option("--cache-dir", help="Artifact store (default $FAIRSAMPLE_CACHE_DIR or ~/.cache/...).")
]


def _emit_warning(
    message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    """Warnings as one line on stderr (no source excerpt)."""
    print(f"warning: {message}", file=sys.stderr)


def _fail(message: str, code: int = 1) -> typer.Exit:
    print(f"error: {message}", file=sys.stderr)
    return typer.Exit(code)


def handle_errors(fn: F) -> F:
    """Map fairsample's errors (and missing extras) to one stderr line and exit code 1, with no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        warnings.showwarning = _emit_warning
        # fairsample's own warnings are user-facing lines (fallbacks, rebuilds): shown even under PYTHONWARNINGS=ignore
        warnings.filterwarnings("default", category=FairsampleWarning)
        try:
            return fn(*args, **kwargs)
        except FairsampleError as exc:
            raise _fail(str(exc)) from None
        except ImportError as exc:  # a missing optional dependency: name the extra that installs it
            raise _fail(missing_extra_message(exc)) from None
        except KeyboardInterrupt:
            raise _fail("interrupted; re-run the same command to continue where it stopped", 130) from None

    return wrapper  # type: ignore[return-value]


def _print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, default=str))


def _emit(fmt: Format, doc: Any, human: Callable[[], str]) -> None:
    """The result on stdout: one JSON document (json), the human text (human), or nothing (quiet)."""
    if fmt is Format.json:
        _print_json(doc)
    elif fmt is Format.human:
        print(human())


def sample_config(bundle: Any, config: Path | None, *, sampler_option: list[str] | None, scheduler: Any,
                  **flags: Any) -> Any:  # fmt: skip
    """The generate-style :class:`~fairsample.config.SampleConfig`: bundle defaults < ``[generate]`` file < flags."""
    from fairsample.config import SampleConfig, resolve

    return resolve(
        SampleConfig,
        file=config,
        section="generate",
        base=bundle.sampling_defaults(),
        sampler_options=_merged_options(config, "generate", "sampler_options", sampler_option, "--sampler-option"),
        scheduler=scheduler.value if scheduler else None,
        **flags,
    )


def _merged_options(
    config: Path | None, section: str, key: str, flags: list[str] | None, flag_name: str
) -> dict[str, Any] | None:
    """A config file's ``[section.key]`` table updated by ``key=value`` flags; None when both are empty."""
    from fairsample.config import read_config_file

    options = dict(read_config_file(config, section).get(key) or {}) if config else {}
    options.update(parse_key_values(flags or [], name=flag_name))
    return options or None


def parse_key_values(items: list[str], *, name: str) -> dict[str, Any]:
    """``["window=30", "mode=improved"]`` → ``{"window": 30, "mode": "improved"}`` (values parsed as JSON, else text).

    Example:
        >>> parse_key_values(["window=30", "y_prime=uniform", "clamp=null"], name="--method-option")
        {'window': 30, 'y_prime': 'uniform', 'clamp': None}
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{item!r} is not key=value, e.g. window=30", param_hint=name)
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def parse_int_list(text: str) -> list[int]:
    """``"0-3,10"`` → ``[0, 1, 2, 3, 10]`` (EDM's ``parse_int_list``); raises ``typer.BadParameter`` on bad input."""
    out: list[int] = []
    for part in text.split(","):
        m = _RANGE_RE.match(part.strip())
        if m is None or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise typer.BadParameter(f"{text!r} is not a seed list like '0-63,100' (non-negative, ranges low-high)")
        lo = int(m.group(1))
        out.extend(range(lo, int(m.group(2)) + 1) if m.group(2) is not None else [lo])
    return out


def check_model_path(model: Path | None, flag: str = "--model") -> None:
    """Fail fast (JSON reads only, before torch/diffusers load) on a model path that cannot be a model."""
    if model is not None:
        from fairsample.model_source import inspect_model

        inspect_model(model, flag)


def open_model_option(
    model: Path | None,
    *,
    flag: str = "--model",
    device: str = "cpu",
    dataset: Any = None,
    cells: list[str] | None = None,
    template: str | None = None,
    need_cells: bool = True,
) -> Any:
    """``--model`` → :class:`~fairsample.models.bundle.ModelBundle`: a bundle, a Stable Diffusion folder or file
    (its cells from ``dataset`` or ``cells``), or the embedded model when ``None``."""
    from fairsample.models.sd_import import open_model

    vocab: dict[str, Any] = {}
    if dataset is not None:
        vocab = {"attributes": dataset.attribute_values(), "labels": dataset.label_values(),
                 "label_name": dataset.spec.label}  # fmt: skip
    return open_model(model, flag=flag, cells=cells, template=template, device=device, need_cells=need_cells,
                      **vocab)  # fmt: skip


@app.callback()
def _main() -> None:
    """fairsample command line."""


# -- info ----------------------------------------------------------------------------------------------------------
@app.command()
@handle_errors
def info(fmt: FormatOpt = Format.human) -> None:
    """Version, embedded model and installed extras.

    Example: fairsample info --format json
    """
    import importlib.resources
    import importlib.util
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from fairsample._version import __version__

    def _version(dist: str) -> str | None:  # read from the installed metadata: importing torch takes seconds
        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    # the same keys and folder as models.bundle.library_versions() / default_model_path(), without importing torch
    embedded = Path(str(importlib.resources.files("fairsample") / "assets" / "tone-digits-32"))
    doc = {
        "versions": {
            "fairsample": __version__,
            "torch": _version("torch"),
            "diffusers": _version("diffusers"),
            "python": platform.python_version(),
        },  # fmt: skip
        "embedded_model": str(embedded),
        "embedded_model_present": (embedded / "fairsample_config.json").is_file(),
        "extras": {
            name: importlib.util.find_spec(mod) is not None
            for name, mod in [
                ("ort", "onnxruntime"),
                ("train", "accelerate"),
                ("train:botorch", "botorch"),
                ("sd", "transformers"),
                ("tensorrt", "tensorrt"),
            ]
        },
    }
    _emit(fmt, doc, lambda: "\n".join(f"{k}: {v}" for k, v in doc.items()))


# -- data ----------------------------------------------------------------------------------------------------------
@data_app.command("check")
@handle_errors
def data_check(
    root: Annotated[Path, typer.Argument(help="Dataset folder with metadata.csv/.jsonl (+ fairsample.toml).")],
    label_col: LabelColOpt = None,
    group_col: GroupColOpt = None,
    patient_col: PatientColOpt = None,
    preset: PresetOpt = None,
    drop_unknown: DropUnknownOpt = False,
    quick: Annotated[
        bool, typer.Option("--quick", help="Read image headers only (no full decode): fast, misses truncated files.")
    ] = False,
    fmt: FormatOpt = Format.human,
) -> None:
    """Validate a dataset folder, decode every image, and print the per-group × label count table.

    Example: fairsample data check my_study --group-col sex --group-col race --format json
    """
    from fairsample.data.decode_check import check_decodable
    from fairsample.data.folder import check_report, format_count_table

    ds = DatasetOptions.of(label_col, group_col, patient_col, preset, drop_unknown).load(root)
    decoded = check_decodable(ds, quick=quick, progress=fmt is Format.human)
    header = (f"{root}: {len(ds)} images, label={ds.spec.label!r}, groups={list(ds.spec.groups)}, "
              f"all {decoded.n_checked} readable ({decoded.mode} decode check)")  # fmt: skip
    _emit(fmt, {**check_report(ds), "decode": decoded.to_dict()}, lambda: f"{header}\n{format_count_table(ds)}")


@data_app.command("demo")
@handle_errors
def data_demo(
    out: Annotated[Path, typer.Argument(help="Folder to create.")],
    seed: Annotated[int, typer.Option(help="Seed of the whole dataset.", min=0)] = 0,
    source: Annotated[
        DemoSource, typer.Option(help="Digit source: auto (MNIST-5k if installed), mnist5k, digits.")
    ] = DemoSource.auto,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty folder.")] = False,
    fmt: FormatOpt = Format.human,
) -> None:
    """Write the tone-digits demo dataset (synthetic grouping; dark tone 5 %, harder) with its counterfactual test set
    (OUT/counterfactual: held-out digits in every tone) and the oracle's holdout pool (OUT/holdout).

    Example: fairsample data demo demo/ && fairsample data check demo/
    """
    from fairsample.data.demo import make_demo_dataset

    info_ = make_demo_dataset(out, seed=seed, source=source.value, overwrite=overwrite)
    n_holdout = sum(sum(v.values()) for v in (info_.holdout_counts or {}).values())
    doc = {"root": str(info_.root), "source": info_.source, "n_images": info_.n_images, "counts": info_.counts,
           "counterfactual": str(info_.counterfactual), "n_counterfactual": info_.n_counterfactual,
           "holdout": str(info_.holdout), "holdout_counts": info_.holdout_counts}  # fmt: skip
    _emit(fmt, doc, lambda: f"wrote {info_.n_images} images ({info_.source}) to {info_.root}, "
          f"{info_.n_counterfactual} to {info_.counterfactual} and {n_holdout} to {info_.holdout}")  # fmt: skip


# -- train ---------------------------------------------------------------------------------------------------------
@app.command()
@handle_errors
def train(
    data: Annotated[Path, typer.Argument(help="Dataset folder.")],
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Model bundle folder to write.")],
    config: Annotated[Path | None, typer.Option(help="TOML/JSON config ([train] table or top level).")] = None,
    method: Annotated[
        str | None,
        typer.Option(
            help="Method preset: vanilla, cbrs, sqrs, cbdm, fairskin-c, fairskin-s, fairgen, fairdiffusion, "
            "fairdiffusion-improved, fbp-random, dpo."
        ),
    ] = None,
    method_option: Annotated[
        list[str] | None,
        typer.Option("--method-option", help="A preset option key=value (JSON value or text); repeat."),
    ] = None,
    max_steps: Annotated[int | None, typer.Option(help="Optimizer steps.", min=1)] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per step per process.", min=1)] = None,
    gradient_accumulation_steps: Annotated[int | None, typer.Option(min=1, help="Micro-batches per step.")] = None,
    learning_rate: Annotated[float | None, typer.Option(min=0.0, help="Peak AdamW learning rate.")] = None,
    mixed_precision: Annotated[MixedPrecision | None, typer.Option(help="no, fp16 (CUDA) or bf16.")] = None,
    prediction_type: Annotated[PredictionType | None, typer.Option(help="epsilon or v_prediction.")] = None,
    ema: Annotated[bool | None, typer.Option("--ema/--no-ema", help="Keep and export EMA weights.")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(min=0, help="Checkpoint every N steps (0: never).")] = None,
    architecture: Annotated[str | None, typer.Option(help="Built-in U-Net: tiny-32, small-32, test.")] = None,
    image_size: Annotated[int | None, typer.Option(min=8, help="Training resolution.")] = None,
    init_from: Annotated[
        Path | None,
        typer.Option(
            help="Fine-tune this bundle, diffusers Stable Diffusion folder or .safetensors file instead of a "
            "new model; resolution, prediction type (and for SD its lr recipe) default to the base's."
        ),
    ] = None,
    template: TemplateOpt = None,
    gradient_checkpointing: Annotated[
        bool, typer.Option("--gradient-checkpointing", help="Recompute U-Net activations (less GPU memory, slower).")
    ] = False,
    split: Annotated[str | None, typer.Option(help="Train on this split: train, val, test or all.")] = None,
    seed: Annotated[int | None, typer.Option(min=0, help="The one seed of the run.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:1.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint in --output-dir.")] = False,
    guard: Annotated[
        bool | None,
        typer.Option(
            "--guard/--no-guard",
            help="After training, check that samples still show their label and attributes (vs --init-from or the "
            "real data) and pick the recommended guidance on validation seeds (default: on; FAIRSAMPLE_GUARD=0 "
            "turns the default off).",
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved config and exit.")] = False,
    label_col: LabelColOpt = None,
    group_col: GroupColOpt = None,
    patient_col: PatientColOpt = None,
    preset: PresetOpt = None,
    drop_unknown: DropUnknownOpt = False,
    fmt: FormatOpt = Format.human,
) -> None:
    """Train a diffusion U-Net on a dataset folder and write a model bundle.

    Example: fairsample train demo/ --output-dir runs/m --max-steps 200 --seed 0
    """
    dataset = DatasetOptions.of(label_col, group_col, patient_col, preset, drop_unknown)
    check_folder(data)  # a bad path fails before the heavy imports
    from fairsample.model_source import finetune_defaults, inspect_model

    source = inspect_model(init_from, "--init-from") if init_from else None  # JSON only: fast, before torch
    from fairsample.config import TrainConfig, resolve
    from fairsample.data.folder import format_count_table
    from fairsample.train.loop import train as run_train
    from fairsample.train.methods import get_method

    options = _merged_options(config, "train", "method_options", method_option, "--method-option")
    cfg = resolve(
        TrainConfig,
        file=config,
        section="train",
        base=finetune_defaults(source) if source else None,
        template=template,
        gradient_checkpointing=gradient_checkpointing or None,
        method=method,
        method_options=options,
        max_steps=max_steps,
        batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        learning_rate=learning_rate,
        mixed_precision=mixed_precision.value if mixed_precision else None,
        prediction_type=prediction_type.value if prediction_type else None,
        use_ema=ema,
        checkpoint_every=checkpoint_every,
        architecture=architecture,
        image_size=image_size,
        init_from=str(init_from) if init_from else None,
        split=split,
        seed=seed,
        device=device,
        guard=guard,
    )
    train_method = get_method(cfg.method, cfg.method_options)  # bad names/options fail here, before any data loads
    train_method.check_config(cfg)
    ds = None
    if source is not None and source.kind != "bundle":  # SD base: the prompt template is part of the config
        from fairsample.models.conditioners import default_template

        ds = dataset.load(data)
        cfg = cfg.replace(template=cfg.template or default_template(list(ds.spec.groups), ds.spec.label))
    if dry_run:
        doc = {**cfg.to_dict(), "method_config": train_method.config()}
        if source is not None:
            doc["base_model"] = {**source.describe(), "defaults_from_base": finetune_defaults(source)}
        if ds is not None and cfg.template:
            doc["prompts"] = {c.to_text(ds.spec.label): cfg.template.format(**c.as_dict(ds.spec.label))
                              for c in sorted(set(ds.cell_ids()))}  # fmt: skip
        _print_json(doc)
        return
    ds = ds if ds is not None else dataset.load(data)
    if fmt is Format.human:
        print(format_count_table(ds), file=sys.stderr)
    result = run_train(ds, output_dir, cfg, method=train_method, resume=resume, progress=fmt is Format.human)
    bundle_cfg = json.loads((result.bundle_path / "fairsample_config.json").read_text(encoding="utf-8"))
    guard_doc = bundle_cfg.get("conditioning_guard") or {}
    doc = {
        "bundle": str(result.bundle_path),
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "final_loss": result.final_loss,
        "log": str(result.log_path),
        "seconds": round(result.seconds, 2),
        "conditioning_guard": guard_doc.get("flag"),
        "sampling": bundle_cfg.get("sampling"),
    }
    _emit(
        fmt,
        doc,
        lambda: (
            f"wrote model bundle {result.bundle_path} ({result.steps} steps, loss {result.final_loss:.4f}; "
            f"conditioning guard: {guard_doc.get('flag')}, recommended sampling: {bundle_cfg.get('sampling')})"
        ),
    )


# -- generate ------------------------------------------------------------------------------------------------------
@app.command()
@handle_errors
def generate(
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Folder to write images + metadata.csv.")],
    model: Annotated[
        Path | None,
        typer.Option(
            help="Model bundle, diffusers Stable Diffusion folder or .safetensors file (default: the embedded "
            "tone-digits model); an SD model needs --cells."
        ),
    ] = None,
    template: TemplateOpt = None,
    cells: Annotated[
        list[str] | None, typer.Option("--cells", help="Cell like tone=dark,label=3; repeat. Default: every cell.")
    ] = None,
    per_cell: Annotated[int | None, typer.Option(min=1, help="Images per cell (default 8).")] = None,
    balanced: Annotated[int | None, typer.Option(min=1, help="Total images, split evenly over the cells.")] = None,
    seeds: Annotated[str | None, typer.Option(help="Seed list like 0-99,200 (default 0, 1, 2, ...).")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML/JSON config ([generate] table or top level).")] = None,
    sampler: SamplerOpt = None,
    sampler_option: SamplerOptionOpt = None,
    scheduler: Annotated[SchedulerName | None, typer.Option(help="Inference scheduler.")] = None,
    steps: Annotated[
        int | None, typer.Option(min=1, help="Inference steps (default: the model's recommended value, else 50).")
    ] = None,
    guidance_scale: Annotated[
        float | None, typer.Option(min=0.0, help="CFG scale w (1 = none; default: the model's recommended value).")
    ] = None,
    guidance_rescale: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Guidance rescale phi for over-guided v-prediction models (0 = off)."),
    ] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Images per engine batch (default 32).")] = None,
    backend: Annotated[
        str | None,
        typer.Option(help="Engine backend: torch, onnxruntime or tensorrt (falls back to onnxruntime without a GPU)."),
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 (tensorrt default: cuda if present).")] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="tensorrt: fail instead of rebuilding or falling back to onnxruntime.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a folder holding something else.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved config and plan, then exit.")] = False,
    fmt: FormatOpt = Format.human,
) -> None:
    """Generate a set of images (a dataset folder) with a model bundle.

    Re-running the same command after an interruption generates only the missing images.

    Example: fairsample generate --cells tone=dark,label=3 --per-cell 16 --seeds 0-15 --output-dir out --format json
    """
    # arguments that need no model are checked before the heavy imports (diffusers alone takes seconds to import)
    if per_cell is not None and balanced is not None:
        raise typer.BadParameter("give either --per-cell or --balanced, not both", param_hint="--per-cell/--balanced")
    seed_list = parse_int_list(seeds) if seeds else None
    if backend is not None:
        from fairsample.config import check_backend

        check_backend(backend)
        if strict and backend != "tensorrt":
            raise typer.BadParameter("--strict only applies to --backend tensorrt", param_hint="--strict")
    check_model_path(model)

    from fairsample.pipeline import FairSamplePipeline, GenerationPlan

    bundle = open_model_option(model, device=device or "cpu", cells=cells, template=template)
    cfg = sample_config(bundle, config, sampler=sampler, sampler_option=sampler_option, scheduler=scheduler,
                        steps=steps, guidance_scale=guidance_scale, guidance_rescale=guidance_rescale,
                        batch_size=batch_size, backend=backend, device=device)  # fmt: skip
    cell_list = [bundle.parse_cell(c) for c in cells] if cells else bundle.cells()
    if balanced is not None:
        plan = GenerationPlan.balanced(cell_list, balanced, seed_list)
    elif per_cell is None and seed_list is not None:
        plan = GenerationPlan.balanced(cell_list, len(seed_list), seed_list)
    else:
        plan = GenerationPlan.per_cell(cell_list, per_cell or 8, seed_list)
    label = bundle.label_name
    summary_plan = {c.to_text(label): n for c, n in plan.counts().items()}
    if dry_run:
        from fairsample.models.sd_import import cell_prompts

        prompts = cell_prompts(bundle, list(plan.counts()))
        _print_json(
            {
                "config": cfg.to_dict(),
                "model": bundle.bundle_id,
                "n_images": len(plan),
                "plan": summary_plan,
                **({"template": bundle.conditioner.template, "prompts": prompts} if prompts else {}),
            }
        )
        return
    if cfg.backend == "tensorrt" and device is None and cfg.device == "cpu":
        import dataclasses

        import torch

        if torch.cuda.is_available():  # TensorRT runs on a GPU; without one the engine falls back (one line)
            cfg = dataclasses.replace(cfg, device="cuda")
    engine_options: dict[str, Any] = {"strict": True} if strict else {}
    if strict and cfg.backend != "tensorrt":
        raise typer.BadParameter("--strict only applies to --backend tensorrt", param_hint="--strict")
    pipe = FairSamplePipeline(bundle, backend=cfg.backend, device=cfg.device, engine_options=engine_options)
    if fmt is Format.human:
        print(f"generating {len(plan)} images over {len(summary_plan)} cells into {output_dir}", file=sys.stderr)
    result = pipe.generate_to_folder(output_dir, plan, cfg, overwrite=overwrite, progress=fmt is Format.human)
    doc = {
        "output_dir": str(result.output_dir),
        "n_images": result.n_images,
        "n_generated": result.n_generated,
        "seconds": round(result.seconds, 2),
        "model": bundle.bundle_id,
        "config": cfg.to_dict(),
        "plan": summary_plan,
        "files": result.files,
    }
    _emit(
        fmt,
        doc,
        lambda: (
            f"wrote {result.n_images} images to {result.output_dir} ({result.n_generated} generated now, "
            f"{result.seconds:.1f} s); metadata: {result.output_dir}/metadata.csv"
        ),
    )


# -- doctor, cache, export -----------------------------------------------------------------------------------------
@app.command()
@handle_errors
def doctor(fmt: FormatOpt = Format.human) -> None:
    """GPU, compute capability, driver, CUDA, TensorRT, ONNX Runtime providers and which extras are importable.

    Example: fairsample doctor --format json
    """
    from fairsample.engines.gpu_info import gpu_report

    report = gpu_report()
    for warning in report["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    _emit(fmt, report, lambda: "\n".join(f"{k}: {v}" for k, v in report.items() if k != "warnings"))


def _cache_rows(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    if not rows:
        return "(empty)"
    return "\n".join("  ".join(str(r.get(c)) for c in columns) for r in rows)


@cache_app.command("ls")
@handle_errors
def cache_ls(cache_dir: CacheDirOpt = None, fmt: FormatOpt = Format.human) -> None:
    """List cached artifacts (key, kind, bytes, valid).

    Example: fairsample cache ls --format json
    """
    from fairsample.export.cache import ls

    rows = ls(cache_dir)
    _emit(fmt, rows, lambda: _cache_rows(rows, ("key", "kind", "bytes", "valid", "reason")))


@cache_app.command("verify")
@handle_errors
def cache_verify(cache_dir: CacheDirOpt = None, fmt: FormatOpt = Format.human) -> None:
    """Check every cached artifact's files against the sha256 in its manifest; exit 1 if any is invalid.

    Example: fairsample cache verify
    """
    from fairsample.export.cache import verify

    rows = verify(cache_dir)
    _emit(fmt, rows, lambda: _cache_rows(rows, ("key", "valid", "reason")))
    bad = [r for r in rows if not r["valid"]]
    if bad:
        raise _fail(f"{len(bad)} of {len(rows)} cache entries are invalid (first: {bad[0]['key']}: "
                    f"{bad[0]['reason']}); run `fairsample cache prune` to remove them")  # fmt: skip


@cache_app.command("prune")
@handle_errors
def cache_prune(
    cache_dir: CacheDirOpt = None,
    max_bytes: Annotated[int | None, typer.Option(min=0, help="Then drop least-recently-used entries to fit.")] = None,
    deep: Annotated[
        bool, typer.Option("--deep/--fast", help="Find damaged files by sha256 (default) or size.")
    ] = True,
    fmt: FormatOpt = Format.human,
) -> None:
    """Remove invalid entries, then least-recently-used ones until the store fits --max-bytes.

    Example: fairsample cache prune --max-bytes 5000000000
    """
    from fairsample.export.cache import prune

    rows = prune(cache_dir, max_bytes=max_bytes, deep=deep)
    _emit(fmt, rows, lambda: f"removed {len(rows)} entries ({sum(r['bytes'] for r in rows)} bytes)")


@export_app.command("onnx")
@handle_errors
def export_onnx_cmd(
    model: Annotated[
        Path | None, typer.Option(help="Model bundle or Stable Diffusion folder (default: the embedded model).")
    ] = None,
    dtype: Annotated[Dtype, typer.Option(help="float32, or float16 with fp32 islands.")] = Dtype.float32,
    exporter: Annotated[
        list[str] | None, typer.Option(help="Exporter chain to try, in order: dynamo, dynamo-noopt, legacy.")
    ] = None,
    output_dir: Annotated[
        Path | None,
        typer.Option("--output-dir", "-o", help="Also write the validated ONNX (+ external data + manifest) here."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace files already in --output-dir.")] = False,
    cache_dir: CacheDirOpt = None,
    fmt: FormatOpt = Format.human,
) -> None:
    """Export, optimize (and fp16-convert) the U-Net to ONNX, validate it against torch, and cache it; prints the
    ONNX file's path (in the cache, or in --output-dir as a standalone copy).

    Example: fairsample export onnx --model runs/m --dtype float16 --output-dir onnx/ --format json
    """
    check_model_path(model)
    if output_dir is not None and output_dir.exists() and not output_dir.is_dir():
        raise typer.BadParameter(f"{output_dir} is a file; pass a folder", param_hint="--output-dir")
    import torch

    from fairsample.engines import load_engine
    from fairsample.export.standalone import copy_engine_files

    bundle = open_model_option(model, need_cells=False)
    options: dict[str, Any] = {"exporters": tuple(exporter)} if exporter else {}
    torch_dtype = torch.float16 if dtype is Dtype.float16 else torch.float32
    engine = load_engine(bundle, backend="onnxruntime", dtype=torch_dtype, cache_dir=cache_dir, **options)
    man = dict(engine.manifest)
    onnx_path = Path(engine.path)  # type: ignore[attr-defined]
    engine.close()
    files = copy_engine_files(onnx_path, output_dir, overwrite=overwrite) if output_dir is not None else None
    if files is not None:
        onnx_path = files[0]
    doc = {"model": bundle.bundle_id, "dtype": dtype.value, "onnx": str(onnx_path),
           "files": [str(f) for f in files] if files else None, "manifest": man}  # fmt: skip
    _emit(fmt, doc, lambda: f"ONNX for {bundle.bundle_id} ({dtype.value}, validated): {onnx_path} "
          f"(cache key {man.get('key')})")  # fmt: skip


@export_app.command("tensorrt")
@handle_errors
def export_tensorrt_cmd(
    model: Annotated[Path | None, typer.Option(help="Model bundle (default: the embedded model).")] = None,
    dtype: Annotated[Dtype, typer.Option(help="float16 (strongly typed, fp32 islands) or float32.")] = Dtype.float16,
    max_batch: Annotated[int, typer.Option(min=1, help="B: profiles N = B and N = 2B (CFG) at the model size.")] = 32,
    refit: Annotated[bool, typer.Option(help="Build a refittable plan (slower; weights can be swapped).")] = False,
    device: Annotated[str, typer.Option(help="CUDA device to build for.")] = "cuda:0",
    cache_dir: CacheDirOpt = None,
    fmt: FormatOpt = Format.human,
) -> None:
    """Build, validate and cache a TensorRT plan for this GPU (needs 'fairsample[tensorrt]' and a CUDA device).

    Unlike `generate --backend tensorrt`, an export never falls back to onnxruntime: without a usable GPU or
    TensorRT it fails with one line.

    Example: fairsample export tensorrt --model runs/m --max-batch 16 --format json
    """
    check_model_path(model)
    import torch

    from fairsample.engines import load_engine

    bundle = open_model_option(model, need_cells=False)
    torch_dtype = torch.float16 if dtype is Dtype.float16 else torch.float32
    progress = None if fmt is Format.json else (lambda line: print(line, file=sys.stderr))
    engine = load_engine(bundle, backend="tensorrt", device=device, dtype=torch_dtype, cache_dir=cache_dir,
                         max_batch=max_batch, refit=refit, strict=True, progress=progress)  # fmt: skip
    man = dict(engine.manifest)
    engine.close()
    from fairsample.export.cache import ArtifactCache

    plan = ArtifactCache(cache_dir).entry_dir(str(man["key"])) / "engine.plan" if man.get("key") else None
    doc = {"model": bundle.bundle_id, "dtype": dtype.value, "plan": str(plan) if plan else None, "manifest": man}
    _emit(fmt, doc, lambda: f"TensorRT engine for {bundle.bundle_id} ({dtype.value}, validated): {plan}")


from fairsample import cli_augment as _cli_augment  # noqa: E402,F401  (registers `augment`)
from fairsample import cli_bench as _cli_bench  # noqa: E402,F401  (registers `bench`)
from fairsample import cli_evaluate as _cli_evaluate  # noqa: E402,F401  (registers `evaluate`)
from fairsample import cli_model as _cli_model  # noqa: E402,F401  (registers `model import`)
from fairsample import cli_prefs as _cli_prefs  # noqa: E402,F401  (registers `prefs`)
from fairsample import cli_samplers as _cli_samplers  # noqa: E402,F401  (registers `tau`)
from fairsample import cli_study as _cli_study  # noqa: E402,F401  (registers `study`)


def _plain_help(typer_app: typer.Typer) -> None:
    """Plain click help on an app and every sub-app registered on it: rich markup would eat "[train]" and rich's
    table cuts long option names at 80 columns (``--gradient-accu…``)."""
    typer_app.rich_markup_mode = None
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _plain_help(group.typer_instance)


_plain_help(app)  # after every cli_* module has registered its commands and sub-apps


def main() -> None:  # pragma: no cover - console entry point
    """Console entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    # `python -m fairsample.cli`: run the imported module's app, the one the cli_* modules register commands on
    from fairsample.cli import main as _registered_main

    _registered_main()

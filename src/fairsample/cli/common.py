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

from fairsample.cli.dataset import (  # noqa: F401  (re-exported: the shared dataset options)
    DatasetOptions,
    DropUnknownOpt,
    GroupColOpt,
    LabelColOpt,
    PatientColOpt,
    PresetOpt,
    check_folder,
)
from fairsample.core.errors import FairsampleError, FairsampleWarning, missing_extra_message

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
    dpmsolver3m = "dpmsolver++3m"
    unipc = "unipc"
    deis = "deis"
    ddim_trailing = "ddim-trailing"
    euler_trailing = "euler-trailing"
    dpmsolver_trailing = "dpmsolver++-trailing"
    dpmsolver3m_trailing = "dpmsolver++3m-trailing"
    unipc_trailing = "unipc-trailing"
    deis_trailing = "deis-trailing"
    euler_karras = "euler-karras"
    dpmsolver_karras = "dpmsolver++-karras"
    dpmsolver3m_karras = "dpmsolver++3m-karras"
    unipc_karras = "unipc-karras"
    deis_karras = "deis-karras"


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
BackendOpt = Annotated[
    str | None,
    typer.Option(
        help="Engine backend: auto, torch, onnxruntime, tensorrt or openvino (bf16, gated). auto = the fastest "
        "validated engine here (TensorRT or torch on a GPU; on a CPU OpenVINO bf16 where the CPU has native bf16, "
        "[openvino] is installed and the bundle passes the image gate, else onnxruntime); the choice and its reason "
        "go to stderr and config.json. "
        "Default: the config file's, else $FAIRSAMPLE_BACKEND, else auto."
    ),
]
"""The one ``--backend`` option of the sampling commands; each checks it with :func:`checked_backend` before any
heavy import."""


def checked_backend(backend: str | None, default: str | None = "torch", *, allow_auto: bool = False) -> str | None:
    """``--backend`` value checked against the backends this release can load (one-line error, exit 1); ``None``
    becomes ``default``; ``allow_auto``: the command resolves ``auto`` (generate, augment)."""
    from fairsample.core.config import check_backend

    value = backend if backend is not None else default
    return check_backend(value, allow_auto=allow_auto) if value is not None else None


def say_backend(pipe: Any, seconds: float) -> None:
    """One stderr line: the engine a sampling command uses, why, and how long it took to get ready (the first
    onnxruntime / TensorRT use exports and validates the model once; later runs load it from the cache)."""
    choice = pipe.backend_choice
    if choice is not None:
        print(f"{choice.line()}; engine ready in {seconds:.1f} s", file=sys.stderr, flush=True)


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


def sample_config(
    bundle: Any, config: Path | None, *, sampler_option: list[str] | None, scheduler: Any, **flags: Any
) -> Any:
    """The generate-style :class:`~fairsample.core.config.SampleConfig`: bundle defaults < ``[generate]`` file <
    flags."""
    from fairsample.core.config import SampleConfig, default_backend, resolve

    return resolve(
        SampleConfig,
        file=config,
        section="generate",
        base={"backend": default_backend(), **bundle.sampling_defaults()},
        sampler_options=_merged_options(config, "generate", "sampler_options", sampler_option, "--sampler-option"),
        scheduler=scheduler.value if scheduler else None,
        **flags,
    )


def _merged_options(
    config: Path | None, section: str, key: str, flags: list[str] | None, flag_name: str
) -> dict[str, Any] | None:
    """A config file's ``[section.key]`` table updated by ``key=value`` flags; None when both are empty."""
    from fairsample.core.config import read_config_file

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
        from fairsample.models.source import inspect_model

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
        vocab = {
            "attributes": dataset.attribute_values(),
            "labels": dataset.label_values(),
            "label_name": dataset.spec.label,
        }
    return open_model(model, flag=flag, cells=cells, template=template, device=device, need_cells=need_cells, **vocab)


@app.callback()
def _main() -> None:
    """fairsample command line."""

"""``run_study``: check the inputs, plan the grid, run its cells (model chains in parallel), write the results."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fairsample.core.atomic import write_atomic
from fairsample.core.errors import ConfigError, DataError
from fairsample.workflows.study.grid import append_jsonl, load_average, read_json, read_jsonl, run_parallel, write_json
from fairsample.workflows.study.plan import plan_study
from fairsample.workflows.study.stages import Stages, StudyContext, cache_env, cell_keys, run_chain, train_rows

#: ``results.json`` schema tag.
SCHEMA = "fairsample.workflows.study/2"

_BAD_THREADS = "`threads` must be an integer >= 1 or None, got {value!r}."
_BAD_WORKERS = "`workers` must be an integer >= 1 or None, got {value!r}."
_BAD_BACKEND = "`backend` must be 'auto', 'onnxruntime' or 'torch', got {value!r}."
_NO_ATTRIBUTE = (
    "the data folder {root} names no sensitive attribute (its fairsample.toml has no `groups`); pass --attribute "
    "COLUMN with a column of {columns} that holds each image's group."
)
_UNKNOWN_ATTRIBUTE = (
    "attribute {value!r} is not a group column of {root} (group columns: {groups}; columns: {columns}); pass "
    "--attribute with a column holding each image's group."
)
_FEW_VALUES = "attribute {attribute!r} has {n} value(s) {values} in {root}; a fairness comparison needs at least 2."
_NO_PATH = "`{name}` {path} does not exist; {fix}"
_BAD_MINORITY = "`minority` {value!r} is not a value of attribute {attribute!r}; its values are {values}."
_BAD_BASE = "`base` {path} is not a fairsample model bundle (no fairsample_config.json); {fix}"
_OTHER_STUDY = (
    "`output_dir` {path} holds a study with {key}={old!r}, not {new!r}; re-run with the original value or choose a "
    "new --output-dir."
)
_NOT_STUDY = (
    "`output_dir` {path} exists and is not a fairsample study folder (no study.json); choose a new or empty "
    "--output-dir."
)


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


def _check_data(data: Any, attribute: str | None, label_col: str | None = None, **options: Any) -> tuple[Any, str]:
    """The real dataset (FolderDataset) and the resolved attribute; DataError before anything runs. ``options``:
    ``group_cols``, ``patient_col``, ``preset``, ``drop_unknown`` of :func:`~fairsample.data.folder.load_folder`."""
    from fairsample.data.folder import FolderDataset, find_metadata, load_folder, read_metadata
    from fairsample.data.validate import _NO_GROUPS

    if isinstance(data, FolderDataset):
        ds = data
    else:
        root = Path(data)
        if not root.exists():
            raise DataError(_NO_PATH.format(name="data", path=root, fix="give a dataset folder (metadata.csv)."))
        columns = [c for c in read_metadata(find_metadata(root, options.get("preset"))).columns if c != "file_name"]
        if attribute is not None and attribute not in columns and options.get("preset") is None:
            raise DataError(_UNKNOWN_ATTRIBUTE.format(value=attribute, root=root, groups=[], columns=columns))
        groups = options.pop("group_cols", None) or ([attribute] if attribute else None)
        try:
            ds = load_folder(root, group_cols=groups, label_col=label_col, **options)
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


def _minority(ds: Any, attribute: str, minority: str | None) -> str:
    """The value with the fewest real training images (ties: the first in sorted order), or the user's."""
    values = ds.attribute_values()[attribute]
    if minority is not None:
        if minority not in values:
            raise DataError(_BAD_MINORITY.format(value=minority, attribute=attribute, values=values))
        return minority
    col = ds.frame[attribute].astype(str).to_numpy()[train_rows(ds)]
    counts = {v: int((col == v).sum()) for v in values}
    return min(values, key=lambda v: (counts[v], values.index(v)))


def _sibling(data_root: Path, given: str | os.PathLike[str] | None, name: str, fix: str) -> str | None:
    """An explicit folder (must exist) or ``DATA/<name>`` when the data folder has one."""
    if given is not None:
        path = Path(given).expanduser()
        if not path.exists():
            raise DataError(_NO_PATH.format(name=name, path=path, fix=fix))
        return str(path.absolute())
    default = data_root / name
    return str(default.absolute()) if (default / "metadata.csv").is_file() else None


def _versions() -> dict[str, str]:
    from fairsample.evaluation.evaluate import versions

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
    seeds: int | None = None,
    attribute: str | None = None,
    label_col: str | None = None,
    group_cols: Sequence[str] | None = None,
    patient_col: str | None = None,
    preset: str | None = None,
    drop_unknown: bool | None = None,
    minority: str | None = None,
    base: str | os.PathLike[str] | None = None,
    counterfactual: str | os.PathLike[str] | None = None,
    holdout: str | os.PathLike[str] | None = None,
    backend: str = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    workers: int | None = None,
    command: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> StudyResult:
    """Run (or resume) the comparison grid and write ``results.json`` and ``RESULTS.md``.

    Args:
        data: the real dataset folder (or :class:`~fairsample.data.folder.FolderDataset`); its train split trains
            the models, its test split tests every downstream classifier (the secondary view).
        output_dir: ``S``: cells go to ``S/cells/``; ``S/results.json``, ``S/RESULTS.md`` and ``S/plots/``.
        profile: ``"small"`` (2-core CPU, about 2 h), ``"full"`` (GPU) or ``"tiny"`` (tests).
        methods, samplers: subsets of the study's methods / samplers (names or comma lists).
        seeds: downstream classifier seeds 0..N-1 (default: the profile's).
        attribute: the sensitive attribute (default: the data's first group column).
        label_col: the label column when the data folder has no ``fairsample.toml``.
        group_cols, patient_col, preset, drop_unknown: how ``data`` is read (as in
            :func:`~fairsample.data.folder.load_folder`); ``group_cols`` defaults to ``[attribute]`` when the folder
            has no ``fairsample.toml``.
        minority: the minority value (default: the value with the fewest real training images).
        base: a base bundle to fine-tune every method from (default: trained from scratch without the minority).
        counterfactual: an attribute-balanced test set folder (default: ``DATA/counterfactual`` when present).
        holdout: real held-out images for the oracle row (default: ``DATA/holdout`` when present; without one the
            study has no oracle row and gap closure is undefined).
        backend: sampling engine, ``"auto"`` (onnxruntime on a CPU, torch on a GPU;
            :func:`fairsample.engines.choice.choose_backend`), ``"onnxruntime"`` (exported once per model, cached) or
            ``"torch"``; the resolved one is recorded in ``study.json``.
        cache_dir: engine artifact store (default ``$FAIRSAMPLE_CACHE_DIR`` or ``~/.cache/fairsample/engines``).
        threads: torch and ONNX Runtime intra-op threads per process (None: the profile's).
        workers: processes running model chains in parallel (None: the profile's).
        command: the command line recorded in the results (the CLI sets it).
        progress: receives one line per cell event (None: quiet).

    Returns:
        :class:`StudyResult`.

    Raises:
        ConfigError: bad options, or an ``output_dir`` holding another study or other files.
        DataError: no usable attribute, a missing folder, or too few holdout images for the oracle.

    Example:
        >>> run_study("demo", "study", profile="small")  # doctest: +SKIP
    """
    t_start = time.perf_counter()
    say = progress or (lambda _line: None)
    if backend not in ("auto", "onnxruntime", "torch"):
        raise ConfigError(_BAD_BACKEND.format(value=backend))
    for _name, value, template in (("threads", threads, _BAD_THREADS), ("workers", workers, _BAD_WORKERS)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(template.format(value=value))
    base_str = None
    if base is not None:
        base_path = Path(base).expanduser()
        if not base_path.exists():
            raise DataError(_NO_PATH.format(name="base", path=base_path, fix="give a fairsample model bundle folder."))
        if not (base_path / "fairsample_config.json").is_file():
            raise DataError(_BAD_BASE.format(path=base_path, fix="give a folder written by `fairsample train`."))
        base_str = str(base_path.absolute())
    plan = plan_study(
        profile=profile, methods=methods, samplers=samplers, seeds=seeds, attribute=attribute or "?", base=base_str
    )
    ds, attr = _check_data(
        data,
        attribute,
        label_col,
        group_cols=group_cols,
        patient_col=patient_col,
        preset=preset,
        drop_unknown=drop_unknown,
    )
    root_data = Path(ds.root)
    cf = _sibling(root_data, counterfactual, "counterfactual", "give an attribute-balanced test set folder.")
    pool = _sibling(root_data, holdout, "holdout", "give a folder of real held-out images (metadata.csv).")
    plan = plan_study(
        profile=profile,
        methods=methods,
        samplers=samplers,
        seeds=seeds,
        attribute=attr,
        base=base_str,
        with_oracle=pool is not None,
    )
    prof = plan.profile
    minority_value = _minority(ds, attr, minority)

    if backend == "auto":  # resolved after every check, so a bad argument stays the only line on stderr
        from fairsample.engines.choice import choose_backend

        choice = choose_backend("auto")
        # the study compares methods on float32 engines: bf16 (openvino) would add its own rounding to every arm
        import importlib.util

        cpu_fp32 = "onnxruntime" if importlib.util.find_spec("onnxruntime") is not None else "torch"
        fp32 = {"onnxruntime": "onnxruntime", "torch": "torch", "openvino": cpu_fp32}
        backend = fp32.get(choice.backend, "torch")
        if choice.backend != backend:
            why = "no TensorRT stage" if choice.backend == "tensorrt" else "float32 engines only, so no arm gets bf16"
            say(f"{choice.line()}; the study samples with {backend} ({why})")
        else:
            say(choice.line())
    root = Path(output_dir).expanduser().absolute()
    identity = {
        "profile": prof.name,
        "data": str(root_data.absolute()),
        "attribute": attr,
        "backend": backend,
        "minority": minority_value,
        "base": base_str,
        "counterfactual": cf,
        "holdout": pool,
    }
    study_file = root / "study.json"
    if study_file.is_file():
        old = read_json(study_file) or {}
        for key, new in identity.items():
            if old.get(key) != new:
                raise ConfigError(_OTHER_STUDY.format(path=root, key=key, old=old.get(key), new=new))
    elif root.exists() and any(root.iterdir()):
        raise ConfigError(_NOT_STUDY.format(path=root))
    n_workers = workers if workers is not None else prof.workers
    ctx = StudyContext(
        plan=plan,
        data=ds,
        root=root,
        backend=backend,
        cache_dir=None if cache_dir is None else str(Path(cache_dir).expanduser().absolute()),
        threads=threads,
        minority=minority_value,
        counterfactual=cf,
        holdout=pool,
        base=base_str,
        verbose=progress is not None,
    )
    ctx.keys = cell_keys(ctx)  # also validates the augmentation plan before anything is written
    root.mkdir(parents=True, exist_ok=True)
    write_json(study_file, identity | {"schema": SCHEMA, "profile_settings": prof.to_dict()})

    import torch

    old_threads = torch.get_num_threads()
    run_threads = threads if threads is not None else prof.torch_threads
    if run_threads is not None:
        torch.set_num_threads(run_threads)
    load_start = load_average()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    append_jsonl(
        root / "invocations.jsonl",
        {"event": "start", "time": started, "command": command, "load_average": load_start, "workers": n_workers},
    )
    say(
        f"study {root}: profile {prof.name}, {len(plan.models)} models, {len(plan.sets)} sets, {len(plan.cells)} "
        f"cells, attribute {attr!r} (minority {minority_value!r}), {n_workers} worker(s), torch threads "
        f"{torch.get_num_threads()}"
    )
    main = Stages(ctx, say)
    markers: dict[str, dict[str, Any]] = {}
    ran: list[str] = []
    skipped: list[str] = []

    def collect(grid_like: Any) -> None:
        markers.update(grid_like["markers"])
        ran.extend(grid_like["ran"])
        skipped.extend(grid_like["skipped"])

    try:
        with cache_env(ctx.cache_dir):
            # 1. shared cells: the base, fairgen's pairs, the oracle set (main process)
            for cell in plan.cells:
                if cell.model is None and cell.kind != "evaluate":
                    main.run(cell)
            # 2. one chain per model, on the workers
            # longest chains first, so the two workers finish together (relative step costs measured on CPU)
            cost = {"fairgen": 4.0, "cbdm": 2.0, "fairskin-s": 2.0, "fairskin-s-keep": 1.5, "cbdm-keep": 1.5}
            order = sorted(
                plan.models,
                key=lambda m: -(cost.get(m.split("@")[0], 1.0) + 1.0 * (m.split("@")[0] in prof.sampler_models)),
            )
            jobs = [(dataclasses.replace(ctx), model) for model in order]
            run_parallel(run_chain, jobs, workers=n_workers, on_done=lambda _job, res: collect(res))
            # 3. one evaluation of every set, the oracle and both views (alone: it may use more threads)
            if threads is None and prof.eval_threads is not None:
                torch.set_num_threads(prof.eval_threads)
            for cell in plan.cells:
                if cell.kind == "evaluate":
                    main.run(cell)
        versions = _versions()
    finally:
        main.close()
        torch_threads = torch.get_num_threads()
        torch.set_num_threads(old_threads)
    collect({"markers": main.grid.markers, "ran": main.grid.ran, "skipped": main.grid.skipped})
    order = [c.id for c in plan.cells]
    ran.sort(key=order.index)
    skipped.sort(key=order.index)

    from fairsample.workflows.study.report import build_results, render_markdown, write_plots

    wall = time.perf_counter() - t_start
    load_end = load_average()
    this_run: dict[str, Any] = {
        "started": started,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_seconds": round(wall, 2),
        "ran": ran,
        "skipped": skipped,
        "load_average": {"start": load_start, "end": load_end},
        "torch_threads": run_threads,  # each worker's (and the main process's) torch threads
        "eval_threads": torch_threads,  # the evaluation's, set after the workers
        "threads_option": threads,
        "workers": n_workers,
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
    }
    append_jsonl(
        root / "invocations.jsonl",
        {
            "event": "end",
            "time": this_run["finished"],
            "command": command,
            "wall_seconds": this_run["wall_seconds"],
            "ran": len(ran),
            "skipped": len(skipped),
            "load_average": load_end,
        },
    )
    results = build_results(
        ctx=ctx,
        markers=markers,
        identity=identity,
        command=command,
        versions=versions,
        run=this_run,
        invocations=read_jsonl(root / "invocations.jsonl"),
    )
    results["plots"] = write_plots(results, root)
    results_path = root / "results.json"
    write_json(results_path, results)
    markdown_path = root / "RESULTS.md"
    write_atomic(markdown_path, render_markdown(results))
    return StudyResult(root, results, results_path, markdown_path, ran, skipped, time.perf_counter() - t_start)

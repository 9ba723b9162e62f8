"""`fairsample bench`: sampling speed per engine backend, CFG packing and GFLOP/s (JSON for pipelines); with
``--quality``, images/s *and* fidelity of every (scheduler, steps, backend) setting against the 50-step anchor."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from fairsample.cli.common import CacheDirOpt, Format, FormatOpt, _emit, app, handle_errors, parse_int_list


@app.command("bench")
@handle_errors
def bench_cmd(
    model: Annotated[Path | None, typer.Option(help="Model bundle (default: the embedded model).")] = None,
    backend: Annotated[
        list[str] | None,
        typer.Option(
            help="Backend to include (repeat): torch-eager, torch, onnxruntime, tensorrt; with --quality: "
            "torch-eager, onnxruntime, openvino-bf16 (default: those installed; bf16 only on a CPU with native bf16)."
        ),
    ] = None,
    batches: Annotated[str, typer.Option(help="Images per sampling call, like 1,8,32.")] = "1,8,32",
    steps: Annotated[int, typer.Option(min=1, help="Scheduler steps per image.")] = 10,
    repeats: Annotated[int, typer.Option(min=1, help="Timed repetitions per configuration (best kept).")] = 3,
    threads: Annotated[int | None, typer.Option(min=1, help="Intra-op threads (default: physical cores).")] = None,
    matmul_size: Annotated[
        int, typer.Option(min=64, help="Side of the float32 reference matmul (size x size) @ (size x size).")
    ] = 2048,
    output: Annotated[Path | None, typer.Option(help="Also write the JSON result to this file.")] = None,
    quality: Annotated[
        bool, typer.Option("--quality", help="Quality per second: images/s and FID/KID/accuracy per setting.")
    ] = False,
    data: Annotated[
        Path | None,
        typer.Option(help="[--quality] Real data of the model (default for the embedded model: the demo)."),
    ] = None,
    schedulers: Annotated[
        str, typer.Option(help="[--quality] Schedulers, comma-separated.")
    ] = "ddim,euler,dpmsolver++,dpmsolver++3m,unipc,deis",
    step_counts: Annotated[str, typer.Option(help="[--quality] Step counts per scheduler, like 5,8,12,20,30,50.")] = (
        "5,8,12,20,30,50"
    ),
    n_images: Annotated[int, typer.Option(min=2, help="[--quality] Images per fidelity measurement.")] = 150,
    batch: Annotated[int, typer.Option(min=1, help="[--quality] Images per sampling call B.")] = 8,
    speed_images: Annotated[int, typer.Option(min=1, help="[--quality] Images per timed run.")] = 64,
    anchor_steps: Annotated[int, typer.Option(min=1, help="[--quality] Steps of the anchor (torch eager).")] = 50,
    anchor_scheduler: Annotated[
        str, typer.Option(help="[--quality] Scheduler of the anchor (fixed, not the bundle's recommended one).")
    ] = "ddim",
    plot: Annotated[
        Path | None, typer.Option(help="[--quality] Pareto plot PNG (default: next to --output, else none).")
    ] = None,
    apply: Annotated[
        bool,
        typer.Option(
            "--apply", help="[--quality] Write the recommended scheduler/steps and the table into the --model bundle."
        ),
    ] = False,
    cache_dir: CacheDirOpt = None,
    fmt: FormatOpt = Format.human,
) -> None:
    """Measure sampling images/s on every available backend in one process, plus U-Net GFLOP/s vs a matmul.

    With --quality: images/s and fidelity (FID, KID, label/attribute accuracy against the real test split) of every
    (scheduler, steps) setting on every float32 backend, against the anchor (torch eager, the bundle's scheduler,
    50 steps); the protocol is in docs/decisions.md.

    Example: fairsample bench --batches 1,8,32 --steps 10 --output bench.json --format json
    Example: fairsample bench --quality --output out/quality.json
    """
    from fairsample.cli.common import check_model_path, open_model_option

    check_model_path(model)
    if quality:
        _quality(
            model,
            data,
            schedulers,
            step_counts,
            n_images,
            batch,
            speed_images,
            anchor_steps,
            anchor_scheduler,
            repeats,
            backend,
            output,
            plot,
            cache_dir,
            fmt,
            apply,
        )
        return
    from fairsample.workflows.bench import format_table, run_bench

    bundle = open_model_option(model, need_cells=False)
    progress = None if fmt is Format.json else (lambda line: print(line, file=sys.stderr, flush=True))
    doc = run_bench(
        bundle,
        backends=backend,
        batches=parse_int_list(batches),
        steps=steps,
        repeats=repeats,
        threads=threads,
        cache_dir=cache_dir,
        progress=progress,
        matmul_size=matmul_size,
    )
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(doc, indent=2) + "\n")
    _emit(fmt, doc, lambda: format_table(doc))


def _quality(
    model: Path | None,
    data: Path | None,
    schedulers: str,
    step_counts: str,
    n_images: int,
    batch: int,
    speed_images: int,
    anchor_steps: int,
    anchor_scheduler: str,
    repeats: int,
    backend: list[str] | None,
    output: Path | None,
    plot: Path | None,
    cache_dir: Path | None,
    fmt: Format,
    apply: bool = False,
) -> None:
    """``bench --quality``: checks first, then :func:`fairsample.workflows.quality_bench.run_quality_bench`;
    ``apply`` writes the recommendation into the ``--model`` bundle."""
    import tempfile

    from fairsample.cli.common import open_model_option
    from fairsample.core.errors import ConfigError

    names = [x.strip() for x in schedulers.split(",") if x.strip()]
    steps = parse_int_list(step_counts)
    if data is None and model is not None:
        raise ConfigError(
            "`--data` is required with --quality and --model: pass the real data the model was trained on."
        )
    if apply and model is None:
        raise ConfigError("`--apply` writes into a bundle folder: pass it with --model BUNDLE.")
    if data is not None and not data.is_dir():
        raise ConfigError(f"`--data` {data} is not a folder; pass the model's real dataset folder.")
    from fairsample.data.folder import load_folder
    from fairsample.workflows.quality_bench import _check, pareto_plot, run_quality_bench

    _check(names, steps, n_images, batch, speed_images, anchor_scheduler)
    say = (lambda line: print(line, file=sys.stderr, flush=True)) if fmt is not Format.json else (lambda line: None)
    bundle = open_model_option(model, need_cells=True)
    with tempfile.TemporaryDirectory(prefix="fairsample-quality-") as tmp:
        if data is None:
            from fairsample.data.demo import make_demo_dataset

            say("--data not given: building the demo dataset (the embedded model's data) in a temporary folder")
            data = Path(tmp) / "demo"
            make_demo_dataset(data)
        doc = run_quality_bench(
            bundle,
            load_folder(data),
            schedulers=names,
            steps=steps,
            backends=backend,
            n_images=n_images,
            batch=batch,
            speed_images=speed_images,
            repeats=repeats,
            anchor_steps=anchor_steps,
            anchor_scheduler=anchor_scheduler,
            on_row=None if output is None else _row_log(output),
            cache_dir=cache_dir,
            progress=say,
        )
    if plot is None and output is not None:
        plot = output.with_suffix(".png")
    if plot is not None:
        doc["plot"] = str(pareto_plot(doc, plot))
    if apply and doc["recommended"] is not None:
        from fairsample.workflows.quality_bench import apply_recommendation

        doc["applied"] = apply_recommendation(model, doc, command=" ".join(["fairsample", *sys.argv[1:]]))
        say(f"wrote sampling {doc['applied']} and the table (sampling_speed) into {model}")
        flag = ((getattr(bundle, "config", None) or {}).get("conditioning_guard") or {}).get("flag")
        if flag in ("collapsed", "degraded"):
            say(
                f"warning: {model}'s conditioning guard says {flag!r}: 'within noise' compares with an anchor that "
                "has lost its conditioning too — fix the model (train longer) before trusting its speed settings"
            )
    elif apply:
        say(f"--apply: no setting was within the anchor's noise; {model} keeps its sampling settings")
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(doc, indent=2) + "\n")
        output.with_suffix(".rows.jsonl").unlink(missing_ok=True)  # the complete document replaces the row log
    _emit(fmt, doc, lambda: format_quality_table(doc))


def _row_log(output: Path) -> Callable[[dict], None]:
    """A callback appending each measured row to ``<output>.rows.jsonl`` (kept if the run dies; removed when the
    complete JSON is written)."""
    log = output.with_suffix(".rows.jsonl")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")

    def append(row: dict) -> None:
        with log.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    return append


def format_quality_table(doc: dict) -> str:
    """One line per setting: FID, KID, accuracies, images/s and speed-up per backend, verdict."""
    a = doc["anchor"]
    lines = [
        f"anchor {a['scheduler']} {a['steps']} steps, torch eager: FID {a['noise']['fid']['mean']:.4g} "
        f"± {a['noise']['fid']['sd']:.2g}, {a['images_per_s']:.2f} img/s"
    ]
    for r in doc["rows"]:
        speed = "  ".join(
            f"{b} {v['images_per_s']:.2f} img/s ({v['speedup_over_anchor']:.2f}x)" for b, v in r["speed"].items()
        )
        acc = " ".join(f"{k} {v:.3f}" for k, v in r["accuracy"].items())
        verdict = "ok" if r["within_noise"]["ok"] else "out (" + "; ".join(r["within_noise"]["failed"]) + ")"
        head = f"{r['scheduler']:>14s} {r['steps']:>3d}  FID {r['fid']:7.4g}  KID {r['kid']:8.3g}"
        lines.append(f"{head}  {acc}  {speed}  {verdict}")
        for b, own in (r.get("reduced_precision") or {}).items():
            ok = "ok" if own["within_noise"]["ok"] else "out (" + "; ".join(own["within_noise"]["failed"]) + ")"
            lines.append(f"{'':>18s}  {b}: FID {own['fid']:7.4g}  KID {own['kid']:8.3g}  {ok}")
    for k in doc.get("skipped") or []:
        lines.append(f"{k['scheduler']:>14s} {k['steps']:>3d}  skipped: {k['error']}")
    if doc.get("confirmation"):
        tried = doc["confirmation"]["float32"] + doc["confirmation"]["any_precision"]
        for t in tried:
            m = t["mean"]
            ok = (
                "confirmed"
                if t["within_noise"]["ok"]
                else "not confirmed (" + "; ".join(t["within_noise"]["failed"]) + ")"
            )
            lines.append(
                f"confirm {t['scheduler']} {t['steps']} on {t['backend']}: mean over {len(t['runs'])} seed sets "
                f"FID {m['fid']:.4g} KID {m['kid']:.3g}  {ok}"
            )
    rec = doc.get("recommended")
    lines.append(
        "recommended: none within the anchor's noise"
        if rec is None
        else f"recommended: {rec['scheduler']} {rec['steps']} steps "
        f"({doc['best_speedup_within_noise']:.2f}x the anchor)"
    )
    best = doc.get("fastest_within_noise_any_precision")
    if best is not None:
        lines.append(
            f"fastest within noise at any precision: {best['scheduler']} {best['steps']} steps on {best['backend']} "
            f"({best['images_per_s']:.2f} img/s, {best['speedup_over_anchor']:.2f}x the anchor)"
        )
    if doc.get("plot"):
        lines.append(f"plot: {doc['plot']}")
    return "\n".join(lines)

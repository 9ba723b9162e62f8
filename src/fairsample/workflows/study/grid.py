"""Resumable grid cells: a folder per cell, a start marker, outputs, and a completion marker written last.

``cell.start.json`` is written when a cell starts (its settings digest and an attempt counter); ``cell.json``
(settings, outputs, wall time, captured warnings) is written **last**, atomically. A re-run skips every cell whose
``cell.json`` carries the same settings digest and resumes the others (training continues from its newest
checkpoint, generation fills in missing images); a cell started with other settings is cleared first.

Independent model chains run in worker processes (:func:`run_parallel`); each worker is killed with its parent
(``PR_SET_PDEATHSIG``), so a killed study never leaves a worker writing into the folder a resumed run is using.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from fairsample.core.atomic import write_atomic
from fairsample.core.errors import FairsampleWarning


def digest(doc: Any) -> str:
    """A 16-hex-digit content digest of a JSON-able document."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_json(path: Path, doc: Any) -> None:
    """Atomic JSON write (temporary sibling + rename), world-readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(doc, indent=2, default=str, allow_nan=False) + "\n")


def read_json(path: Path) -> Any:
    """The JSON document at ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def append_jsonl(path: Path, doc: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(doc, default=str) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every platform
        return None


class Grid:
    """Runs cells with a completion marker written last; completed cells with the same settings are skipped.

    Args:
        root: the study folder ``S`` (cells live in ``S/cells/<kind>/<name>``).
        say: receives one line per cell event.
    """

    def __init__(self, root: Path, say: Callable[[str], None]) -> None:
        self.root = root
        self.say = say
        self.ran: list[str] = []
        self.skipped: list[str] = []
        self.markers: dict[str, dict[str, Any]] = {}

    def folder(self, cell_id: str) -> Path:
        kind, name = cell_id.split("/", 1)
        return self.root / "cells" / kind / name

    def done(self, cell_id: str, key: dict[str, Any]) -> dict[str, Any] | None:
        marker = read_json(self.folder(cell_id) / "cell.json")
        if isinstance(marker, dict) and marker.get("key") == digest(key) and marker.get("complete"):
            return marker
        return None

    def run(self, cell_id: str, key: dict[str, Any], fn: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        """Run ``fn(folder)`` unless the cell is complete with the same ``key``; returns the marker."""
        folder = self.folder(cell_id)
        key_digest = digest(key)
        marker = self.done(cell_id, key)
        if marker is not None:
            self.skipped.append(cell_id)
            self.markers[cell_id] = marker
            self.say(f"{cell_id}: complete ({marker['seconds']:.1f} s earlier), skipped")
            return marker
        start = read_json(folder / "cell.start.json")
        attempt = 1
        if isinstance(start, dict) and start.get("key") == key_digest:
            attempt = int(start.get("attempt", 0)) + 1
            self.say(f"{cell_id}: resuming (attempt {attempt})")
        elif folder.exists():
            shutil.rmtree(folder)  # another setting's (partial) output: start clean
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cell.json").unlink(missing_ok=True)
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_json(folder / "cell.start.json", {"key": key_digest, "attempt": attempt, "started": started})
        if attempt == 1:
            self.say(f"{cell_id}: running")
        t = time.perf_counter()
        load_before = load_average()
        with capture_warnings() as caught:
            outputs = fn(folder)
        seconds = time.perf_counter() - t
        kind, name = cell_id.split("/", 1)
        marker = {
            "cell": cell_id,
            "kind": kind,
            "name": name,
            "complete": True,
            "key": key_digest,
            "settings": key,
            "outputs": outputs,
            "seconds": round(seconds, 3),
            "attempt": attempt,
            "started": started,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "pid": os.getpid(),
            "load_average": {"start": load_before, "end": load_average()},
            "warnings": caught,
        }
        for message in caught:
            self.say(f"  warning: {message}")
        write_json(folder / "cell.json", marker)
        self.ran.append(cell_id)
        self.markers[cell_id] = marker
        self.say(f"{cell_id}: done in {seconds:.1f} s")
        return marker


@contextlib.contextmanager
def capture_warnings() -> Iterator[list[str]]:
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


def _die_with_parent() -> None:
    """Worker initializer: SIGKILL this process when its parent dies (Linux ``prctl``; elsewhere a no-op)."""
    import signal
    import sys

    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1


def run_parallel(
    fn: Callable[[Any], Any], jobs: Sequence[Any], *, workers: int, on_done: Callable[[Any, Any], None]
) -> None:
    """``fn(job)`` for every job on ``workers`` spawned processes (in this process when ``workers`` is 1).

    ``on_done(job, result)`` runs in this process as each job finishes; the first exception is re-raised after the
    pool is shut down (the other workers' finished cells stay complete on disk).
    """
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            on_done(job, fn(job))
        return
    import multiprocessing
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_die_with_parent) as pool:
        futures = {pool.submit(fn, job): job for job in jobs}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for fut in done:
                exc = fut.exception()
                if exc is not None:
                    for other in pending:
                        other.cancel()
                    raise exc
                on_done(futures[fut], fut.result())

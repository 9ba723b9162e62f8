"""Content-addressed artifact store (ENGINES.md §7): ``<cache_dir>/<key[:2]>/<key>/`` with a ``manifest.json``.

A key is the sha256 of the canonical JSON of its key parts (§7.1); weights are hashed separately
(:func:`weights_sha256`) and enter the parts as one digest. Entries are published atomically (built in a temporary
folder, then ``os.replace``), built under one ``fcntl`` file lock per key, and evicted least-recently-used beyond a
size cap. A corrupt, truncated or foreign entry is marked stale and rebuilt with a one-line reason (a
:class:`~fairsample.core.errors.FairsampleWarning`), never a raw deserialisation error.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from fairsample.core.errors import ConfigError, FairsampleWarning

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
CACHE_ENV = "FAIRSAMPLE_CACHE_DIR"
DEFAULT_MAX_BYTES = 5 * 1024**3
"""LRU cap of the whole store (Torch-TensorRT's default engine-cache size)."""

_STALE = "cached {kind} entry {key12} is stale ({reason}); rebuilding."
_BAD_KEY = "`key` must be a 64-character sha256 hex digest, got {key!r}."
_BUILD_NO_REPORT = "the {kind} builder returned no validation report; every published entry needs one."


def default_cache_dir() -> Path:
    """``$FAIRSAMPLE_CACHE_DIR`` if set, else ``~/.cache/fairsample/engines``.

    Example:
        >>> default_cache_dir().name in ("engines", os.environ.get(CACHE_ENV, "engines").rstrip("/").split("/")[-1])
        True
    """
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fairsample" / "engines"


def canonical_json(value: Any) -> str:
    """Sorted-key, compact JSON: the byte-stable form hashed into keys.

    Example:
        >>> canonical_json({"b": (1, 2), "a": None})
        '{"a":null,"b":[1,2]}'
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_json_default)


def cache_key(parts: Mapping[str, Any]) -> str:
    """sha256 hex digest of ``canonical_json(parts)``.

    Example:
        >>> cache_key({"a": 1}) == cache_key({"a": 1}) != cache_key({"a": 2})
        True
    """
    return hashlib.sha256(canonical_json(dict(parts)).encode()).hexdigest()


def weights_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the state dict in name order: name, dtype, shape and the raw tensor bytes.

    Example:
        >>> weights_sha256({"w": torch.zeros(2)}) == weights_sha256({"w": torch.zeros(2)})
        True
    """
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().to("cpu").contiguous()
        h.update(canonical_json([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def unet_architecture(unet: Any) -> dict[str, Any]:
    """The U-Net's config as JSON-safe data (private ``_``-prefixed entries dropped)."""
    return json.loads(canonical_json({k: v for k, v in dict(unet.config).items() if not k.startswith("_")}))


def onnx_key_parts(
    unet: Any,
    *,
    prediction_type: str,
    seq_len: int,
    exporters: tuple[str, ...],
    max_batch: int,
    max_size: int,
    weights: str | None = None,
) -> dict[str, Any]:
    """Key parts of the fp32 ONNX artifact (ENGINES.md §7.1): architecture, weights digest, exporter chain and
    versions, dynamic-dim spec.

    Example:
        >>> from fairsample.models.builtin import build_unet
        >>> parts = onnx_key_parts(build_unet("test"), prediction_type="epsilon", seq_len=4, exporters=("legacy",),
        ...                        max_batch=8, max_size=64)
        >>> parts["kind"], parts["dynamic"]
        ('onnx', {'batch': [1, 8], 'height': 'spatial', 'width': 'spatial', 'max_size': 64})
    """
    import onnx
    import onnxscript

    return {
        "kind": "onnx",
        "schema": SCHEMA_VERSION,
        "architecture": unet_architecture(unet),
        "weights_sha256": weights or weights_sha256(unet.state_dict()),
        "prediction_type": prediction_type,
        "seq_len": seq_len,
        "patches": ["eval", "requires_grad_false", "positional_io", "return_dict_false"],
        "exporters": list(exporters),
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxscript": onnxscript.__version__},
        "dynamic": {"batch": [1, max_batch], "height": "spatial", "width": "spatial", "max_size": max_size},
        "platform": platform.system(),
    }


class ArtifactCache:
    """The content-addressed store. Every method returns JSON-safe data or paths.

    Args:
        cache_dir: root folder; default :func:`default_cache_dir` (``$FAIRSAMPLE_CACHE_DIR`` overrides).
        max_bytes: LRU size cap applied after every publish.

    Example:
        >>> import tempfile
        >>> cache = ArtifactCache(tempfile.mkdtemp())
        >>> def build(tmp):
        ...     (tmp / "x.bin").write_bytes(b"abc")
        ...     return {"report": {"passed": True}}
        >>> path, manifest = cache.get_or_build({"kind": "demo", "n": 1}, build)
        >>> manifest["files"]["x.bin"]["bytes"], cache.get_or_build({"kind": "demo", "n": 1}, build)[0] == path
        (3, True)
    """

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.max_bytes = max_bytes

    def entry_dir(self, key: str) -> Path:
        """``<root>/<key[:2]>/<key>``."""
        if not (isinstance(key, str) and len(key) == 64 and all(c in "0123456789abcdef" for c in key)):
            raise ConfigError(_BAD_KEY.format(key=key))
        return self.root / key[:2] / key

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """An exclusive ``fcntl.flock`` on ``<root>/locks/<key>.lock`` (concurrent builds of one key serialise)."""
        locks = self.root / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / f"{key}.lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def check(self, key: str, *, deep: bool = False) -> str | None:
        """Why the entry for ``key`` is unusable, in one line, or None when it is valid.

        Checks: the manifest parses, has this schema and key, its key parts hash to the key (else "foreign"), every
        listed file exists with its recorded size (and sha256 when ``deep``), and the validation report passed.
        """
        d = self.entry_dir(key)
        if not d.is_dir():
            return "missing"
        try:
            manifest = json.loads((d / MANIFEST).read_text())
        except (OSError, ValueError) as err:
            return f"unreadable manifest ({type(err).__name__})"
        if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA_VERSION:
            schema = manifest.get("schema") if isinstance(manifest, dict) else None
            return f"manifest schema {schema!r} != {SCHEMA_VERSION}"
        if manifest.get("key") != key or cache_key(manifest.get("key_parts", {})) != key:
            return "foreign entry: its key parts do not hash to its folder name"
        for name, info in manifest.get("files", {}).items():
            f = d / name
            if not f.is_file():
                return f"file {name} is missing"
            if f.stat().st_size != info["bytes"]:
                return f"file {name} has {f.stat().st_size} bytes, manifest says {info['bytes']} (truncated?)"
            if deep and _sha256(f) != info["sha256"]:
                return f"file {name} sha256 differs from the manifest"
        report = manifest.get("report")
        if not report or not report.get("passed"):
            return "validation report missing or failed"
        return None

    def load_manifest(self, key: str) -> dict[str, Any]:
        """The manifest of a valid entry (call :meth:`check` first); also marks the entry as recently used."""
        d = self.entry_dir(key)
        os.utime(d / MANIFEST)
        return json.loads((d / MANIFEST).read_text())

    def mark_stale(self, key: str, reason: str) -> None:
        """Warn with one line and move the entry out of the way (deleted; a concurrent reader keeps its open files)."""
        warnings.warn(_STALE.format(kind="artifact", key12=key[:12], reason=reason), FairsampleWarning, stacklevel=3)
        d = self.entry_dir(key)
        if d.exists():
            trash = d.with_name(f".stale-{key}-{os.getpid()}-{time.monotonic_ns()}")
            os.replace(d, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def get_or_build(
        self, parts: Mapping[str, Any], build: Callable[[Path], Mapping[str, Any]]
    ) -> tuple[Path, dict[str, Any]]:
        """The entry for ``parts``, building and publishing it first when missing or stale.

        Args:
            parts: JSON-safe key parts (must include ``"kind"``).
            build: ``build(tmp_dir) -> extra`` writes the artifact files into ``tmp_dir`` and returns manifest
                fields, which must include the validation ``"report"`` (``{"passed": bool, ...}``).

        Returns:
            ``(entry_dir, manifest)``.

        Raises:
            ValidationFailed: propagated from ``build`` (nothing is published).
        """
        parts = json.loads(canonical_json(dict(parts)))
        key = cache_key(parts)
        with self.lock(key):
            reason = self.check(key)
            if reason is None:
                return self.entry_dir(key), self.load_manifest(key)
            if reason != "missing":
                self.mark_stale(key, reason)
            self.entry_dir(key).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:12]}-", dir=self.entry_dir(key).parent))
            try:
                extra = dict(build(tmp))
                if "report" not in extra:
                    raise ConfigError(_BUILD_NO_REPORT.format(kind=parts.get("kind")))
                files = {
                    p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
                    for p in sorted(tmp.iterdir())
                    if p.is_file() and p.name != MANIFEST
                }
                manifest = {
                    **json.loads(canonical_json(extra)),
                    "schema": SCHEMA_VERSION,
                    "key": key,
                    "kind": parts.get("kind"),
                    "key_parts": parts,
                    "files": files,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
                (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
                os.replace(tmp, self.entry_dir(key))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        self.prune(max_bytes=self.max_bytes, keep=(key,))
        return self.entry_dir(key), manifest

    def _entries(self) -> list[tuple[str, Path]]:
        """(key, dir) of every entry folder."""
        if not self.root.is_dir():
            return []
        return [
            (d.name, d)
            for shard in sorted(self.root.iterdir())
            if shard.is_dir() and len(shard.name) == 2
            for d in sorted(shard.iterdir())
            if d.is_dir() and len(d.name) == 64 and d.name.startswith(shard.name)
        ]

    def ls(self, *, deep: bool = False) -> list[dict[str, Any]]:
        """Every entry: ``{"key", "kind", "bytes", "last_used", "valid", "reason"}`` (sizes only; ``deep``: sha256)."""
        rows = []
        for key, d in self._entries():
            reason = self.check(key, deep=deep)
            try:
                kind = json.loads((d / MANIFEST).read_text()).get("kind")
                last_used = (d / MANIFEST).stat().st_mtime
            except (OSError, ValueError):
                kind, last_used = None, d.stat().st_mtime
            size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
            rows.append(
                {
                    "key": key,
                    "kind": kind,
                    "bytes": size,
                    "last_used": last_used,
                    "valid": reason is None,
                    "reason": reason,
                }
            )
        return rows

    def verify(self) -> list[dict[str, Any]]:
        """Deep check of every entry (sha256 of every file): ``{"key", "valid", "reason"}`` per entry."""
        return [{"key": k, "valid": (r := self.check(k, deep=True)) is None, "reason": r} for k, _ in self._entries()]

    def prune(
        self, *, max_bytes: int | None = None, keep: tuple[str, ...] = (), deep: bool = False
    ) -> list[dict[str, Any]]:
        """Delete invalid entries (``deep``: found by sha256, else by size), then least-recently-used ones until the
        store fits ``max_bytes``.

        Returns:
            The removed entries as ``{"key", "bytes", "reason"}``.
        """
        removed = []
        rows = sorted(self.ls(deep=deep), key=lambda r: r["last_used"])
        for row in rows:
            if not row["valid"] and row["key"] not in keep:
                shutil.rmtree(self.entry_dir(row["key"]), ignore_errors=True)
                removed.append({"key": row["key"], "bytes": row["bytes"], "reason": row["reason"]})
        alive = [r for r in rows if r["valid"] or r["key"] in keep]
        total = sum(r["bytes"] for r in alive)
        for row in alive:
            if max_bytes is None or total <= max_bytes:
                break
            if row["key"] in keep:
                continue
            shutil.rmtree(self.entry_dir(row["key"]), ignore_errors=True)
            total -= row["bytes"]
            removed.append({"key": row["key"], "bytes": row["bytes"], "reason": f"LRU cap {max_bytes} bytes"})
        return removed


def ls(cache_dir: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """:meth:`ArtifactCache.ls` of the store at ``cache_dir`` (default store when None)."""
    return ArtifactCache(cache_dir).ls()


def verify(cache_dir: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """:meth:`ArtifactCache.verify` of the store at ``cache_dir``."""
    return ArtifactCache(cache_dir).verify()


def prune(
    cache_dir: str | os.PathLike[str] | None = None, *, max_bytes: int | None = None, deep: bool = False
) -> list[dict[str, Any]]:
    """:meth:`ArtifactCache.prune` of the store at ``cache_dir``."""
    return ArtifactCache(cache_dir).prune(max_bytes=max_bytes, deep=deep)


def _sha256(path: Path) -> str:
    """sha256 of a file in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _json_default(value: Any) -> Any:
    """Tuples, paths and numpy scalars for :func:`canonical_json`."""
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")

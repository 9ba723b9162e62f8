"""Module-level fake build workers for the spawn-child machinery of trt_build (no tensorrt involved)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def ok_worker(recipe: Any, plan_path: str, messages: Any) -> None:
    """Streams two lines and 'builds' a plan that encodes the workspace cap."""
    messages.put(("log", "parsing"))
    messages.put(("log", f"workspace {recipe.workspace_bytes}"))
    Path(plan_path).write_bytes(b"PLAN:" + str(recipe.workspace_bytes).encode())
    messages.put(("done",))


def oom_once_worker(recipe: Any, plan_path: str, messages: Any) -> None:
    """Runs out of memory unless the workspace is at most 1 GiB."""
    if recipe.workspace_bytes > 1 << 30:
        messages.put(("log", "TensorRT ERROR: Error Code 2: OutOfMemory"))
        messages.put(("error", "oom", "Error Code 2: OutOfMemory"))
        return
    ok_worker(recipe, plan_path, messages)


def always_oom_worker(recipe: Any, plan_path: str, messages: Any) -> None:
    """Always runs out of memory."""
    messages.put(("error", "oom", "cudaErrorMemoryAllocation"))


def parse_error_worker(recipe: Any, plan_path: str, messages: Any) -> None:
    """Fails with a one-line parse reason."""
    messages.put(
        ("error", "parse", "TensorRT could not parse m.onnx: 1 parser error(s), first: x; re-export the ONNX.")
    )


def crash_worker(recipe: Any, plan_path: str, messages: Any) -> None:
    """Dies without a word, like a segfault inside the builder."""
    import os

    os._exit(3)

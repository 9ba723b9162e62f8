"""Fixtures for fairsample.data: tiny dataset folders in tmp_path, and the real CXR metadata in torchxrayvision."""

from __future__ import annotations

import csv
import importlib.util
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from PIL import Image

COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40)]


def write_png(path: Path, color: tuple[int, int, int] = (128, 64, 32), size: tuple[int, int] = (6, 4)) -> None:
    """A tiny solid RGB PNG (width x height = size)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def write_rows(path: Path, rows: Sequence[dict[str, str]]) -> None:
    """metadata.csv (header = union of keys in first-seen order) or metadata.jsonl, chosen by suffix."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


MakeFolder = Callable[..., Path]


@pytest.fixture
def make_folder(tmp_path: Path) -> MakeFolder:
    """Factory: ``make_folder(rows, name="ds", metadata="metadata.csv", toml=None, images=True) -> root``.

    Every row's ``file_name`` gets a tiny PNG unless ``images=False`` (or the row's file name is in ``skip``).
    """

    def make(
        rows: Sequence[dict[str, str]],
        *,
        name: str = "ds",
        metadata: str = "metadata.csv",
        toml: str | None = None,
        images: bool = True,
        skip: Sequence[str] = (),
    ) -> Path:
        root = tmp_path / name
        root.mkdir(parents=True, exist_ok=True)
        write_rows(root / metadata, rows)
        if toml is not None:
            (root / "fairsample.toml").write_text(toml, encoding="utf-8")
        if images:
            for k, r in enumerate(rows):
                file_name = r.get("file_name", "")
                plain = file_name.endswith(".png") and ".." not in file_name and not file_name.startswith(("/", "C:"))
                if plain and file_name not in skip:
                    write_png(root / file_name, COLORS[k % len(COLORS)])
        return root

    return make


def _tone_rows(counts: dict[tuple[str, str], int]) -> list[dict[str, str]]:
    """Rows ``{file_name, label, tone}`` with ``counts[(tone, label)]`` images per cell, files images/00000.png, ..."""
    rows = []
    for (tone, label), n in counts.items():
        for _ in range(n):
            rows.append({"file_name": f"images/{len(rows):05d}.png", "label": label, "tone": tone})
    return rows


@pytest.fixture
def tone_rows() -> Callable[[dict[tuple[str, str], int]], list[dict[str, str]]]:
    """The row builder ``tone_rows({(tone, label): n, ...})``."""
    return _tone_rows


@pytest.fixture
def png() -> Callable[..., None]:
    """The PNG writer ``png(path, color=..., size=(w, h))``."""
    return write_png


@pytest.fixture
def small_rows() -> list[dict[str, str]]:
    """6 rows, tone light/dark x labels 2/10 (labels chosen to test numeric-aware sorting)."""
    return _tone_rows({("light", "2"): 2, ("light", "10"): 2, ("dark", "2"): 1, ("dark", "10"): 1})


def _xrv_data_file(name: str) -> Path:
    """A metadata file inside the installed torchxrayvision wheel (located without importing the package)."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(
            "torchxrayvision is not installed (pip install --no-deps torchxrayvision) - real CXR metadata absent"
        )
    path = Path(spec.submodule_search_locations[0]) / "data" / name
    if not path.is_file():
        pytest.skip(f"torchxrayvision is installed but has no data/{name}")
    return path


@pytest.fixture(scope="session")
def chexpert_train_gz() -> Path:
    """torchxrayvision's real CheXpert-v1.0-small train.csv (223,414 rows), gzipped."""
    return _xrv_data_file("chexpert_train.csv.gz")


@pytest.fixture(scope="session")
def nih_data_entry_gz() -> Path:
    """torchxrayvision's real NIH ChestX-ray14 Data_Entry_2017_v2020.csv (112,120 rows), gzipped."""
    return _xrv_data_file("Data_Entry_2017_v2020.csv.gz")

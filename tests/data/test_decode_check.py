"""fairsample.data.decode_check: every image decoded once; all bad files reported in one DataError."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from fairsample.core.errors import DataError
from fairsample.data.decode_check import N_SHOWN, check_decodable, check_image, scan_images
from fairsample.data.folder import load_folder

TOML = 'groups = ["tone"]\nmin_group_size = 0\n'


def noise_png_bytes(size: int = 8, seed: int = 0) -> bytes:
    """An 8x8 RGB noise PNG (noise keeps the IDAT chunk large, so half the bytes still hold the header)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def damage(path: Path, kind: str) -> None:
    """Replace an image with a corrupt, truncated, empty or 16-bit file."""
    if kind == "corrupt":
        path.write_bytes(np.random.default_rng(1).integers(0, 256, 200, dtype=np.uint8).tobytes())
    elif kind == "truncated":
        data = noise_png_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "16bit":
        Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(path)
    else:  # pragma: no cover - test helper misuse
        raise ValueError(kind)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("corrupt", "unreadable"), ("truncated", "truncated"), ("empty", "empty: 0 bytes"), ("16bit", "mode 'I;16'")],
)
def test_each_bad_kind_is_reported_with_count_and_path(make_folder, small_rows, kind, reason):
    root = make_folder(small_rows, toml=TOML)
    damage(root / small_rows[3]["file_name"], kind)
    ds = load_folder(root)
    with pytest.raises(DataError, match=r"^1 of 6 images cannot be used \(full decode check\)") as err:
        check_decodable(ds)
    assert f"{small_rows[3]['file_name']} ({reason}" in str(err.value)
    assert "\n" not in str(err.value)


def test_all_bad_files_in_one_error_first_five_shown(make_folder, tone_rows):
    rows = tone_rows({("light", "0"): 4, ("light", "1"): 4, ("dark", "0"): 2, ("dark", "1"): 2})
    root = make_folder(rows, toml=TOML)
    for r in rows[2:9]:
        damage(root / r["file_name"], "empty")
    with pytest.raises(DataError) as err:
        check_decodable(load_folder(root))
    text = str(err.value)
    assert text.startswith("7 of 12 images cannot be used") and text.count("empty: 0 bytes") == N_SHOWN
    assert rows[2]["file_name"] in text and rows[8]["file_name"] not in text and "and 2 more" in text


def test_quick_misses_truncated_pixels_but_full_catches_them(tmp_path):
    path = tmp_path / "cut.png"
    damage(path, "truncated")
    assert check_image(path, quick=True) is None
    assert check_image(path).startswith("truncated")
    report = scan_images([path], root=tmp_path, quick=True)
    assert report.to_dict() == {"mode": "quick", "n_checked": 1, "n_bad": 0, "bad": []}
    assert scan_images([path], root=tmp_path).problems[0].path == "cut.png"


def test_quick_still_catches_unreadable_and_wrong_mode(tmp_path):
    for kind in ("corrupt", "empty", "16bit"):
        damage(tmp_path / f"{kind}.png", kind)
    report = scan_images(sorted(tmp_path.glob("*.png")), root=tmp_path, quick=True)
    assert report.n_bad == 3


def test_caller_setting_of_load_truncated_images_is_ignored_and_restored(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    damage(tmp_path / "cut.png", "truncated")
    assert scan_images([tmp_path / "cut.png"]).n_bad == 1
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


def test_clean_dataset_and_accepted_modes_pass(make_folder, small_rows):
    root = make_folder(small_rows, toml=TOML)
    Image.new("LA", (8, 8)).save(root / small_rows[0]["file_name"])
    Image.new("P", (8, 8)).save(root / small_rows[1]["file_name"])
    Image.new("L", (8, 8)).save(root / small_rows[2]["file_name"])
    report = check_decodable(load_folder(root))
    assert (report.mode, report.n_checked, report.n_bad) == ("full", 6, 0)


def test_only_the_given_rows_are_checked(make_folder, small_rows):
    root = make_folder(small_rows, toml=TOML)
    damage(root / small_rows[0]["file_name"], "corrupt")
    ds = load_folder(root)
    assert check_decodable(ds, rows=[1, 2, 3]).n_checked == 3
    with pytest.raises(DataError, match="1 of 2 images"):
        check_decodable(ds, rows=[0, 1])


@pytest.mark.parametrize("kind", ["corrupt", "truncated", "empty"])
def test_train_fails_before_building_the_model(make_folder, small_rows, tmp_path, monkeypatch, kind):
    from fairsample.core.config import TrainConfig
    from fairsample.train import loop

    def no_model(*args, **kwargs):  # pragma: no cover - reached only if the check did not run first
        raise AssertionError("the model was built before the decode check failed")

    monkeypatch.setattr(loop, "new_pixel_bundle", no_model)
    root = make_folder(small_rows, toml=TOML)
    damage(root / small_rows[4]["file_name"], kind)
    out = tmp_path / "model"
    cfg = TrainConfig(architecture="test", image_size=8, batch_size=2, max_steps=1, split="all", device="cpu")
    with pytest.raises(DataError, match=r"1 of 6 images cannot be used .*" + small_rows[4]["file_name"]):
        loop.train(load_folder(root), out, cfg, progress=False)
    assert not out.exists() or not any(out.rglob("*"))

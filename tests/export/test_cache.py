"""Content-addressed store (ENGINES.md §7): key stability/sensitivity, manifest, verify, stale rebuild, LRU."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from fairsample.core.errors import FairsampleWarning
from fairsample.export.cache import (
    CACHE_ENV,
    ArtifactCache,
    cache_key,
    default_cache_dir,
    ls,
    onnx_key_parts,
    prune,
    verify,
    weights_sha256,
)
from fairsample.export.onnx_optimize import OPT_DATA_FILE
from tests.export.shared import entry_of, load_ort, ort_store, tiny_bundle

KW = dict(prediction_type="epsilon", seq_len=4, exporters=("dynamo", "legacy"), max_batch=8, max_size=64)


def _parts(**over):
    unet = over.pop("unet", None) or tiny_bundle().unet
    return onnx_key_parts(unet, **{**KW, **over})


def test_key_is_stable_across_calls_and_dict_order() -> None:
    a = _parts()
    assert cache_key(a) == cache_key(_parts()) == cache_key(dict(reversed(list(a.items()))))
    assert len(cache_key(a)) == 64


@pytest.mark.parametrize(
    "field",
    ["prediction_type", "seq_len", "exporters", "max_batch", "max_size", "weights", "architecture", "torch", "schema"],
)
def test_flipping_each_key_field_changes_the_key(field: str) -> None:
    base = _parts()
    if field == "weights":
        flipped = _parts(unet=tiny_bundle(seed=1).unet)
    elif field == "architecture":
        flipped = {**base, "architecture": {**base["architecture"], "attention_head_dim": 8}}
    elif field == "torch":
        flipped = {**base, "versions": {**base["versions"], "torch": "0.0"}}
    elif field == "schema":
        flipped = {**base, "schema": base["schema"] + 1}
    else:
        flipped = _parts(
            **{
                field: {
                    "prediction_type": "v_prediction",
                    "seq_len": 5,
                    "exporters": ("legacy",),
                    "max_batch": 9,
                    "max_size": 65,
                }[field]
            }
        )
    assert cache_key(flipped) != cache_key(base)


def test_weights_hash_sees_one_changed_value() -> None:
    sd = {k: v.clone() for k, v in tiny_bundle().unet.state_dict().items()}
    before = weights_sha256(sd)
    sd["conv_in.bias"][0] += 1e-7
    assert weights_sha256(sd) != before
    assert weights_sha256({"a": torch.zeros(2, 3)}) != weights_sha256({"a": torch.zeros(3, 2)})


def test_cache_dir_env_override(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert default_cache_dir() == tmp_path and ArtifactCache().root == tmp_path


def _build(payload: bytes = b"abcdef", passed: bool = True):
    def build(tmp):
        (tmp / "blob.bin").write_bytes(payload)
        return {"report": {"passed": passed}}

    return build


def test_manifest_layout_and_verify(tmp_path) -> None:
    cache = ArtifactCache(tmp_path)
    entry, manifest = cache.get_or_build({"kind": "demo"}, _build())
    key = manifest["key"]
    assert entry == tmp_path / key[:2] / key
    assert manifest["files"]["blob.bin"]["bytes"] == 6 and manifest["key_parts"] == {"kind": "demo"}
    rows = ls(tmp_path)
    assert json.loads(json.dumps(rows)) == rows and rows[0]["valid"] and rows[0]["kind"] == "demo"
    assert verify(tmp_path) == [{"key": key, "valid": True, "reason": None}]
    (entry / "blob.bin").write_bytes(b"abcdeX")
    assert verify(tmp_path)[0]["reason"] == "file blob.bin sha256 differs from the manifest"


@pytest.mark.parametrize("damage", ["truncate", "manifest", "foreign", "report"])
def test_damaged_entry_is_rebuilt_with_one_line_reason(tmp_path, damage: str) -> None:
    cache = ArtifactCache(tmp_path)
    entry, manifest = cache.get_or_build({"kind": "demo"}, _build())
    m = entry / "manifest.json"
    if damage == "truncate":
        (entry / "blob.bin").write_bytes(b"abc")
        reason = "file blob.bin has 3 bytes, manifest says 6 (truncated?)"
    elif damage == "manifest":
        m.write_text("{not json")
        reason = "unreadable manifest (JSONDecodeError)"
    elif damage == "foreign":
        m.write_text(json.dumps({**manifest, "key_parts": {"kind": "other"}}))
        reason = "foreign entry: its key parts do not hash to its folder name"
    else:
        m.write_text(json.dumps({**manifest, "report": {"passed": False}}))
        reason = "validation report missing or failed"
    with pytest.warns(FairsampleWarning, match=re.escape(f"({reason}); rebuilding.")) as record:
        cache.get_or_build({"kind": "demo"}, _build())
    assert len(record) == 1 and "\n" not in str(record[0].message)
    assert (entry / "blob.bin").read_bytes() == b"abcdef" and cache.check(manifest["key"]) is None


def test_failed_build_publishes_nothing(tmp_path) -> None:
    cache = ArtifactCache(tmp_path)

    def boom(tmp):
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("build failed")

    with pytest.raises(RuntimeError):
        cache.get_or_build({"kind": "demo"}, boom)
    assert cache.ls() == [] and not any(p.name.startswith(".tmp") for p in tmp_path.rglob("*"))


def test_lru_cap_evicts_least_recently_used(tmp_path) -> None:
    cache = ArtifactCache(tmp_path, max_bytes=10**9)
    old, _ = cache.get_or_build({"kind": "a"}, _build(b"x" * 1000))
    new, m_new = cache.get_or_build({"kind": "b"}, _build(b"y" * 1000))
    import os

    os.utime(old / "manifest.json", (1, 1))
    removed = prune(tmp_path, max_bytes=1500)
    assert [r["key"] for r in removed] == [old.name] and new.exists() and not old.exists()


def test_truncated_onnx_data_is_rebuilt_on_load(tmp_path) -> None:
    store = tmp_path / "store"
    shutil.copytree(ort_store(), store)
    data = entry_of(store, "onnx.opt") / OPT_DATA_FILE
    size = data.stat().st_size
    with open(data, "r+b") as f:
        f.truncate(size // 2)
    with pytest.warns(FairsampleWarning, match=rf"is stale \(file {OPT_DATA_FILE} has {size // 2} bytes"):
        engine = load_ort(cache_dir=store)
    assert engine.manifest["report"]["passed"] and data.stat().st_size == size


def test_same_size_corruption_is_caught_by_the_loader(tmp_path) -> None:
    store = tmp_path / "store"
    shutil.copytree(ort_store(), store)
    model = entry_of(store, "onnx.opt") / "model.opt.onnx"
    model.write_bytes(b"\0" * model.stat().st_size)
    with pytest.warns(FairsampleWarning, match=r"is stale \(.*\); rebuilding\.$"):
        engine = load_ort(cache_dir=store)
    assert engine.manifest["report"]["passed"]

"""TrtBuildRecipe: validation, dict round trip, cache-key stability and sensitivity (ENGINES.md §7.1)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from fairsample.core.engine_spec import ShapeProfile
from fairsample.core.errors import ConfigError
from fairsample.core.gpu_info import TrtTarget
from fairsample.export.trt_build import (
    BAD_HARDWARE_COMPAT,
    BAD_OPT_LEVEL,
    BAD_PRECISION,
    BAD_WORKSPACE,
    ONNX_MISSING,
    STRIP_WITHOUT_REFIT,
    WEIGHTS_KEY_REQUIRED,
    TrtBuildRecipe,
    onnx_files_sha256,
)
from fairsample.export.trt_profiles import default_profiles

TARGET = TrtTarget(
    sm="sm_86", tensorrt_version="10.9.0.34", cuda_runtime="12.8", driver_major=570, platform="linux-x86_64"
)


def _recipe(**kw: object) -> TrtBuildRecipe:
    base: dict[str, object] = {
        "onnx_path": "a/model.fp16.onnx",
        "profiles": default_profiles(32, 2),
        "onnx_key": "onnx-key-1",
        "weights_sha256": "w-1",
    }
    base.update(kw)
    return TrtBuildRecipe(**base)  # type: ignore[arg-type]


def _prefix(template: str) -> str:
    return re.escape(template.split("{")[0])


def test_key_is_stable_and_json_safe() -> None:
    a, b = _recipe(), _recipe(profiles=list(default_profiles(32, 2)))
    assert a.cache_key(TARGET) == b.cache_key(TARGET)
    parts = a.cache_key_parts(TARGET)
    assert json.loads(json.dumps(parts)) == parts
    assert parts["weights"] == "w-1" and parts["gpu"] == "sm_86" and parts["builder"]["optimization_level"] == 3


RECIPE_FLIPS: list[tuple[str, object]] = [
    ("profiles", default_profiles(32, 3)),
    ("precision", "bf16"),
    ("strongly_typed", False),
    ("workspace_bytes", 2 << 30),
    ("builder_optimization_level", 4),
    ("refit", True),
    ("refit_identical", True),
    ("version_compatible", True),
    ("hardware_compat", "ampere_plus"),
    ("editable_timing_cache", True),
    ("tactic_sources", ("CUBLAS",)),
    ("onnx_key", "onnx-key-2"),
    ("weights_sha256", "w-2"),
]


@pytest.mark.parametrize(("name", "value"), RECIPE_FLIPS, ids=[n for n, _ in RECIPE_FLIPS])
def test_every_recipe_key_field_changes_the_key(name: str, value: object) -> None:
    assert _recipe(**{name: value}).cache_key(TARGET) != _recipe().cache_key(TARGET)


def test_strip_plan_replaces_the_weights_hash() -> None:
    stripped = _recipe(refit=True, strip_plan=True)
    assert stripped.cache_key_parts(TARGET)["weights"] == "stripped"
    assert stripped.cache_key(TARGET) != _recipe(refit=True).cache_key(TARGET)
    assert stripped.cache_key(TARGET) == _recipe(refit=True, strip_plan=True, weights_sha256="other").cache_key(TARGET)


TARGET_FLIPS: list[tuple[str, object]] = [
    ("sm", "sm_89"),
    ("tensorrt_version", "10.9.0.35"),
    ("cuda_runtime", "12.9"),
    ("driver_major", 575),
    ("platform", "win32-amd64"),
]


@pytest.mark.parametrize(("name", "value"), TARGET_FLIPS, ids=[n for n, _ in TARGET_FLIPS])
def test_every_machine_key_field_changes_the_key(name: str, value: object) -> None:
    other = dataclasses.replace(TARGET, **{name: value})
    assert _recipe().cache_key(other) != _recipe().cache_key(TARGET)


def test_hardware_compat_keys_by_level_instead_of_sm() -> None:
    r = _recipe(hardware_compat="ampere_plus")
    assert r.cache_key_parts(TARGET)["gpu"] == "ampere_plus"
    assert r.cache_key(TARGET) == r.cache_key(dataclasses.replace(TARGET, sm="sm_90"))


def test_paths_and_device_name_are_not_key_parts() -> None:
    base = _recipe().cache_key(TARGET)
    assert _recipe(onnx_path="elsewhere/model.onnx").cache_key(TARGET) == base
    assert _recipe(timing_cache_path="/tmp/tc.bin").cache_key(TARGET) == base
    assert _recipe().cache_key(dataclasses.replace(TARGET, device_name="NVIDIA A100")) == base


def test_timing_cache_key_ignores_model_and_workspace_but_not_sm() -> None:
    a = _recipe().timing_cache_key_parts(TARGET)
    assert (
        _recipe(onnx_key="x", workspace_bytes=1 << 30, profiles=default_profiles(8, 1)).timing_cache_key_parts(TARGET)
        == a
    )
    assert _recipe().timing_cache_key_parts(dataclasses.replace(TARGET, sm="sm_90")) != a


def test_onnx_content_hash_when_no_key_is_given(tmp_path: Path) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.arange(4096, dtype=np.float32).reshape(64, 64), name="w")
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [weight],
    )
    path = tmp_path / "model.onnx"
    onnx.save_model(
        helper.make_model(graph), str(path), save_as_external_data=True, location="model.onnx.data", size_threshold=0
    )
    r = TrtBuildRecipe(onnx_path=path, profiles=default_profiles(8, 1))
    first = r.cache_key_parts(TARGET)["onnx"]["sha256"]
    assert first == onnx_files_sha256(path)
    data = tmp_path / "model.onnx.data"
    blob = bytearray(data.read_bytes())
    blob[-1] ^= 0xFF  # change one weight byte: the key must follow the external data
    data.write_bytes(bytes(blob))
    assert r.cache_key_parts(TARGET)["onnx"]["sha256"] != first
    with pytest.raises(ConfigError, match=_prefix(ONNX_MISSING)):
        onnx_files_sha256(tmp_path / "missing.onnx")


def test_dict_round_trip() -> None:
    r = _recipe(refit=True, tactic_sources=("CUBLAS", "CUDNN"), timing_cache_path="tc.bin")
    d = r.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert TrtBuildRecipe.from_dict(d) == r
    with pytest.raises(ConfigError, match="unknown or missing fields"):
        TrtBuildRecipe.from_dict({**d, "bogus": 1})


@pytest.mark.parametrize(
    ("kw", "template"),
    [
        ({"precision": "int4"}, BAD_PRECISION),
        ({"workspace_bytes": 0}, BAD_WORKSPACE),
        ({"builder_optimization_level": 6}, BAD_OPT_LEVEL),
        ({"hardware_compat": "turing"}, BAD_HARDWARE_COMPAT),
        ({"strip_plan": True}, STRIP_WITHOUT_REFIT),
        ({"weights_sha256": None}, WEIGHTS_KEY_REQUIRED),
    ],
)
def test_bad_recipes_are_rejected_with_the_template(kw: dict[str, object], template: str) -> None:
    with pytest.raises(ConfigError, match=_prefix(template)):
        _recipe(**kw)


def test_profiles_are_validated() -> None:
    with pytest.raises(ConfigError, match="at least one ShapeProfile"):
        _recipe(profiles=())
    assert _recipe(profiles=[{"min": [1, 8, 8], "opt": [1, 8, 8], "max": [2, 8, 8]}]).profiles == (
        ShapeProfile(min=(1, 8, 8), opt=(1, 8, 8), max=(2, 8, 8)),
    )

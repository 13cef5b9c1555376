"""Arm catalog: stable ids, grid specs, baselines, arm features, trust regions."""

from __future__ import annotations

import numpy as np
import pytest

from rtopt_lab.arms import ARM_FEATURE_NAMES, DEFAULT_GRID, ArmCatalog, arm_id
from rtopt_lab.types import ParameterSet


def test_default_grid_has_48_arms_with_stable_ids():
    cat = ArmCatalog.from_grid()
    assert len(cat) == 48
    assert cat.arm_ids[0] == "t0.00-p0.90-m400"
    assert "t0.60-p1.00-m600" in cat
    assert cat.arm_ids[cat.baseline_arm("anything")] == "t0.60-p1.00-m600"


def test_ids_do_not_depend_on_grid_order():
    rev = {k: (list(reversed(v)) if isinstance(v, list) else v) for k, v in DEFAULT_GRID.items()}
    assert ArmCatalog.from_grid(rev).arm_ids == ArmCatalog.from_grid().arm_ids
    assert ArmCatalog.from_grid(rev).version == ArmCatalog.from_grid().version


def test_arm_id_spells_optional_fields():
    p = ParameterSet(temperature=0.7, top_p=0.95, max_tokens=256, frequency_penalty=0.5,
                     presence_penalty=-0.5, seed=3, model_name="m")
    assert arm_id(p) == "t0.70-p0.95-m256-f0.50-r-0.50-s3@m"


def test_round_trip_and_yaml(tmp_path):
    cat = ArmCatalog.from_grid({**DEFAULT_GRID, "baseline": {
        "default": "t0.60-p1.00-m600", "code_generation": {"temperature": 0.4, "max_tokens": 800}}})
    assert ArmCatalog.from_dict(cat.to_dict()) == cat
    assert cat.arm_ids[cat.baseline_arm("code_generation")] == "t0.40-p1.00-m800"
    path = tmp_path / "arms.yaml"
    path.write_text("temperature: [0.1, 0.3]\ntop_p: [1.0]\nmax_tokens: [100, 300]\n"
                    "baseline: {default: t0.10-p1.00-m100}\n")
    y = ArmCatalog.from_yaml(path)
    assert y.arm_ids == ("t0.10-p1.00-m100", "t0.10-p1.00-m300", "t0.30-p1.00-m100", "t0.30-p1.00-m300")
    np.testing.assert_array_equal(y.baseline_arms(["a", "b"]), [0, 0])


@pytest.mark.parametrize(
    ("spec", "exc", "match"),
    [
        ({"temperature": [0.1], "top_p": [1.0]}, ValueError, r"grid spec is missing 'max_tokens'"),
        ({**DEFAULT_GRID, "colour": [1]}, ValueError, r"unknown key\(s\) \['colour'\]"),
        ({**DEFAULT_GRID, "temperature": []}, ValueError, r"'temperature' must be a non-empty list"),
        ({**DEFAULT_GRID, "temperature": [3.0]}, ValueError, r"`temperature` must be in \[0, 2\]"),
        ({**DEFAULT_GRID, "baseline": {"default": "t9.00-p1.00-m1"}}, ValueError, r"names arm 't9.00-p1.00-m1', which is not in the catalog"),
        ({**DEFAULT_GRID, "baseline": {"code": "t0.60-p1.00-m600"}}, ValueError, r"include 'default'"),
        ({**DEFAULT_GRID, "temperature": [0.2, 0.2]}, ValueError, r"duplicate arms"),
    ],
)
def test_grid_iv(spec, exc, match):
    with pytest.raises(exc, match=match):
        ArmCatalog.from_grid(spec)


def test_lookup_errors_name_the_arm(tmp_path):
    cat = ArmCatalog.from_grid()
    with pytest.raises(ValueError, match=r"unknown arm id 'nope'"):
        cat.index("nope")
    np.testing.assert_array_equal(cat.indices(["nope", cat.arm_ids[5]]), [-1, 5])
    with pytest.raises(FileNotFoundError, match="arm grid file not found"):
        ArmCatalog.from_yaml(tmp_path / "missing.yaml")


def test_arm_features_shape_and_values():
    cat = ArmCatalog.from_grid()
    Z = cat.arm_features()
    assert Z.shape == (48, len(ARM_FEATURE_NAMES))
    np.testing.assert_allclose(Z[:, 0], cat.temperature)
    np.testing.assert_allclose(Z[:, 1], cat.temperature ** 2)
    np.testing.assert_allclose(Z[:, 3], np.log(cat.max_tokens / 512))


def test_trust_region_is_the_definition():
    cat = ArmCatalog.from_grid()
    M = cat.trust_region()
    for i in range(len(cat)):
        for j in range(len(cat)):
            ok = (abs(cat.temperature[i] - cat.temperature[j]) <= 0.2 + 1e-9
                  and abs(cat.max_tokens[i] - cat.max_tokens[j]) <= 200)
            assert M[i, j] == ok
    assert M.diagonal().all() and (M == M.T).all()
    base = cat.index("t0.60-p1.00-m600")
    got = {cat.arm_ids[k] for k in cat.neighbourhood("t0.60-p1.00-m600")}
    assert "t0.40-p0.90-m400" in got and "t0.80-p1.00-m800" in got
    assert "t0.20-p1.00-m600" not in got and "t0.60-p1.00-m1000" not in got
    mask = cat.trust_region_mask(np.array([base, 0]))
    assert mask.shape == (2, 48) and mask[0].sum() == len(got)
    tighter = cat.trust_region(0.0, 0)
    assert (tighter.sum(axis=1) == 2).all()  # itself and the other top_p
    with pytest.raises(ValueError, match=r"`max_dtemp` must be a finite number >= 0"):
        cat.trust_region(-1, 200)
    with pytest.raises(ValueError, match=r"`incumbent` must be a 1-D array of arm indices"):
        cat.trust_region_mask(np.array([48]))

"""Branch specialization's arithmetic on planted membership, and how unit sets are read."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from scipy.special import comb

from backend.catalog.specialization import (
    as_branches,
    label_matches,
    parse_units,
    property_set,
    specialization,
)
from backend.errors import InvalidInput

# torchvision's inception3b (the article's mixed3b): 128 + 192 + 96 + 64 = 480 units.
MIXED3B = [("1x1", 0, 128), ("3x3", 128, 320), ("5x5", 320, 416), ("pool", 416, 480)]


def test_thirty_curve_units_all_in_the_5x5_branch_are_far_beyond_chance() -> None:
    curves = range(330, 360)  # 30 units, all in the 96-unit 5x5 branch
    spec = specialization(MIXED3B, curves, 480)
    counts = {b.name: b.count for b in spec.branches}
    assert counts == {"1x1": 0, "3x3": 0, "5x5": 30, "pool": 0} and spec.chosen == 30
    best = spec.best
    assert best is not None and best.name == "5x5"
    assert best.p_value < 1e-20  # the article's figure
    # All 30 in the branch is the last term of the tail: C(96, 30) / C(480, 30).
    assert math.isclose(best.p_value, comb(96, 30, exact=True) / comb(480, 30, exact=True))
    assert best.expected == pytest.approx(6.0)
    assert spec.any_branch == pytest.approx(4 * best.p_value)
    empty = {b.name: b.p_value for b in spec.branches if b.count == 0}
    assert all(p == pytest.approx(1.0) for p in empty.values())


def test_a_set_spread_like_the_layer_is_unremarkable() -> None:
    spread = list(range(0, 480, 16))  # 30 units in proportion: 8, 12, 6, 4
    spec = specialization(MIXED3B, spread, 480)
    assert [b.count for b in spec.branches] == [8, 12, 6, 4]
    assert all(b.p_value > 0.3 for b in spec.branches)
    # Units outside the layer are ignored; units in no branch are counted apart.
    spec = specialization([("a", 0, 10)], [1, 2, 15, 999], 20)
    assert spec.chosen == 3 and spec.outside == 1 and spec.branches[0].count == 2


def test_branches_come_from_json_dicts_or_objects() -> None:
    as_dicts = as_branches([{"name": "5x5", "start": 320, "stop": 416}])
    as_objects = as_branches([SimpleNamespace(name="5x5", start=320, stop=416)])
    assert as_dicts == as_objects == [("5x5", 320, 416)]


def test_unit_lists_labels_and_properties() -> None:
    assert parse_units("3, 7; 10-12", 20) == [3, 7, 10, 11, 12]
    with pytest.raises(InvalidInput, match="outside"):
        parse_units("19-20", 20)
    with pytest.raises(InvalidInput, match="not a unit index"):
        parse_units("three", 20)
    assert label_matches("Curve detector", "curve") and not label_matches("curvey", "curve")
    assert not label_matches(None, "curve")
    values = [0.9, None, 0.1, 0.5, 0.8, 0.2, 0.3, 0.7, 0.4]  # 8 known: a quarter is 2
    assert property_set(values, "colour") == [0, 4]
    assert property_set(values, "black-and-white") == [2, 5]
    with pytest.raises(InvalidInput, match="unknown property"):
        property_set(values, "shininess")

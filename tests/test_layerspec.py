"""One layer-spec resolver: every command reads '0.3', '10-12', '-1' the same way."""

from __future__ import annotations

import pytest

from tunetrace.layerspec import headline_layer, nearest_to_headline, resolve_layer, resolve_layers


def test_forms():
    assert resolve_layers("all", 30) == list(range(30))
    assert resolve_layers("17,19", 30) == [17, 19]
    assert resolve_layers("10-12", 30) == [10, 11, 12]
    assert resolve_layers("0.7", 30) == [20]
    assert resolve_layers("-1", 30) == [29]  # negative indices count from the end, as in Python
    assert resolve_layers("-3--1", 30) == [27, 28, 29]
    assert resolve_layers("19,17,19", 30) == [17, 19]


def test_a_fraction_is_one_layer_for_every_command():
    # audit rounded and diff truncated: 0.3 of 30 layers was layer 9 for one and 8 for the other
    for frac in ("0.3", "0.5", "0.7", "0.9", "1.0", "0.0"):
        for n in (4, 18, 30):
            assert resolve_layers(frac, n) == [resolve_layer(frac, n)]
    assert resolve_layer("0.3", 30) == 9 and resolve_layer("0.5", 30) == 14 and resolve_layer("0.5", 4) == 2


@pytest.mark.parametrize("spec, message", [
    ("30", "has layers 0..29"), ("x", "is not a layer index"), ("3-1", "runs backwards"), ("1.5", "outside"), ("", None),
])
def test_bad_specs_are_one_clear_line(spec, message):
    if message is None:
        assert resolve_layers(spec, 30) == list(range(30))
        return
    with pytest.raises(ValueError, match=message):
        resolve_layers(spec, 30)


def test_single_layer_refuses_several():
    for bad in ("1,2", "1-2", "all"):
        with pytest.raises(ValueError, match="one layer"):
            resolve_layer(bad, 4)
    assert resolve_layer("-1", 4) == 3 and resolve_layer(2, 4) == 2


def test_headline_layer_is_near_70_percent():
    assert headline_layer(30) == 20 and headline_layer(18) == 12
    assert nearest_to_headline(list(range(30)), 30) == 20
    assert nearest_to_headline([5, 19], 30) == 19

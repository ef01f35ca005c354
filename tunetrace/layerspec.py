"""One resolver for layer specifications, used by every command: 'all', '19', '17,19', '10-14', '0.7', '-1'.

A relative depth f in [0, 1] (written with a dot) is layer round(f * (n_layers - 1)), Python's
round (ties to even: 0.5 of 30 layers is 14), for `audit`, `recruits`, `diff`, `finetune
--neuron-layers` and the report alike. A negative index counts from the end, as in Python
(-1 is the last layer). The headline layer of an evaluation is the layer nearest
`HEADLINE_DEPTH` of depth, fixed in advance rather than chosen by any result.
"""

from __future__ import annotations

import re
from typing import Sequence

HEADLINE_DEPTH = 0.7
"""The evaluation's headline layer sits at about 70% of depth (fixed in advance, as in the study)."""

_FORMS = "a layer index (19, or -1 for the last), a range (10-14), a relative depth (0.0-1.0), a comma list of these, or 'all'"


def depth_to_layer(frac: float, n_layers: int) -> int:
    """The layer at relative depth `frac` in [0, 1]."""
    if not 0.0 <= frac <= 1.0:
        raise ValueError(f"relative depth {frac} is outside [0, 1].")
    return round(frac * (n_layers - 1))


_RANGE = re.compile(r"^(-?\d+)-(-?\d+)$")


def _one(part: str, n_layers: int) -> list[int]:
    if m := _RANGE.match(part):  # a range lo-hi (a leading '-' alone is a negative index)
        lo, hi = _index(m.group(1), n_layers), _index(m.group(2), n_layers)
        if lo > hi:
            raise ValueError(f"the range runs backwards: write it low-high ({hi}-{lo}).")
        return list(range(lo, hi + 1))
    if "." in part:
        return [depth_to_layer(float(part), n_layers)]
    return [_index(part, n_layers)]


class _OutOfRange(ValueError):
    pass


def _index(text: str, n_layers: int) -> int:
    i = int(text)
    if not -n_layers <= i < n_layers:  # named as written: `--layers=-5` of 4 layers is not "layer -1"
        raise _OutOfRange(f"`layers` asks for layer {i} but the model has layers 0..{n_layers - 1} (or -{n_layers}..-1 from the end).")
    return n_layers + i if i < 0 else i


def resolve_layers(spec: str | None, n_layers: int) -> list[int]:
    """Sorted, de-duplicated layer indices of `spec`; a bad or out-of-range entry is one clear ValueError."""
    if spec is None or str(spec).strip() in ("", "all"):
        return list(range(n_layers))
    chosen: list[int] = []
    for part in str(spec).split(","):
        part = part.strip()
        try:
            chosen.extend(_one(part, n_layers))
        except _OutOfRange:
            raise
        except ValueError as err:
            if "backwards" in str(err) or "outside [0, 1]" in str(err):
                raise ValueError(f"`layers` entry {part!r}: {err}") from None
            raise ValueError(f"`layers` entry {part!r} is not {_FORMS}.") from None
    for i in chosen:
        if not 0 <= i < n_layers:
            raise ValueError(f"`layers` asks for layer {i} but the model has layers 0..{n_layers - 1}.")
    return sorted(set(chosen))


def resolve_layer(spec: str | int, n_layers: int) -> int:
    """Exactly one layer (e.g. `diff --layer 0.5`), resolved as `resolve_layers` resolves it."""
    layers = resolve_layers(str(spec), n_layers)
    if len(layers) != 1 or "," in str(spec) or _RANGE.match(str(spec).strip()) or str(spec).strip() == "all":
        raise ValueError(f"`layer` {spec!r} must name one layer (an index or a relative depth), not several.")
    return layers[0]


def headline_layer(n_layers: int) -> int:
    """The layer at HEADLINE_DEPTH of a model with `n_layers` layers."""
    return depth_to_layer(HEADLINE_DEPTH, n_layers)


def nearest_to_headline(layers: Sequence[int], n_layers: int) -> int:
    """Among `layers`, the one closest to the headline depth (the lower on a tie)."""
    target = headline_layer(n_layers)
    return min(layers, key=lambda layer: (abs(layer - target), layer))

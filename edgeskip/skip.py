"""Skip arrays: S = [s_1 .. s_Bs], 1 = execute the gated block, 0 = bypass it.

Option arrays generalise them (issue #15, fractional depth): one value per gated block, 0 = skip, 1 = run in full
(float) precision, 8 = run the block's int8 variant. A skip array is an option array without 8s.

The rest of the network (the stem, the ungated blocks such as a stage's entry block, and the head) is one more axis
(issue #34): float unless the option array ends in :data:`REST8`, which runs all of it in int8 too. Its text form is
the gates' digits and ``+8`` (``"888888+8"``); in JSON documents the gates' list and ``"int8_rest": true``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from edgeskip.errors import EdgeskipError

SKIP, FULL, INT8 = 0, 1, 8
OPTIONS = {SKIP: "skip", FULL: "full", INT8: "int8"}
REST8 = 88  # trailing marker of an option array: the stem, the ungated blocks and the head run in int8 too
REST_TEXT = "+8"


def has_rest(options: Sequence[object]) -> bool:
    """Whether an option array runs the rest of the network (stem, ungated blocks, head) in int8."""
    return len(options) > 0 and options[-1] == REST8


def gates_of(options: Sequence[int]) -> tuple[int, ...]:
    """The per-gate part of an option array (without its :data:`REST8` marker)."""
    return tuple(options[:-1] if has_rest(options) else options)


def with_rest(options: Sequence[int], rest: bool) -> tuple[int, ...]:
    """``options``' gates, with the rest of the network in int8 when ``rest``."""
    return gates_of(options) + ((REST8,) if rest else ())


def _parse(values: object, num_gates: int, allowed: tuple[int, ...], what: str) -> list[int]:
    allowed_text = ", ".join(map(str, allowed[:-1])) + f" and {allowed[-1]}"
    if hasattr(values, "tolist"):
        values = values.tolist()  # numpy / torch
    if isinstance(values, str):
        text = values.replace(",", "").replace(" ", "")
        try:
            items: list = [int(c) for c in text]
        except ValueError:
            raise EdgeskipError(f"{what} must contain only {allowed_text}, got {values!r}") from None
    elif isinstance(values, Iterable):
        items = list(values)
    else:
        raise EdgeskipError(f"{what} must be a sequence of {'/'.join(map(str, allowed))}, got {type(values).__name__}")
    if len(items) != num_gates:
        raise EdgeskipError(f"{what} has length {len(items)}, expected B_s = {num_gates}")
    out = []
    for v in items:
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or (isinstance(v, int) and v in allowed):
            out.append(int(v))
        else:
            raise EdgeskipError(f"{what} values must be {' or '.join(map(str, allowed))}, got {v!r}")
    return out


def normalize_skip(skip: object, num_gates: int) -> tuple[bool, ...]:
    """Validate a skip array and return it as a tuple of bools (True = execute).

    Accepts lists/tuples of 0/1 or bools, numpy arrays, torch tensors and strings like ``"110101"``
    or ``"1,1,0"``. Anything else, a wrong length, or a value other than 0/1 raises EdgeskipError.
    """
    return tuple(bool(v) for v in _parse(skip, num_gates, (SKIP, FULL), "skip array"))


def normalize_options(options: object, num_gates: int) -> tuple[int, ...]:
    """Validate an option array (0 skip, 1 full, 8 int8 per gated block; bools read as skip/full), in the
    forms :func:`normalize_skip` takes (``"118011"``); returns a tuple of ints. A trailing :data:`REST8` (text:
    ``"888888+8"``) puts the rest of the network in int8 too; it is kept in the tuple."""
    if hasattr(options, "tolist"):
        options = options.tolist()  # numpy / torch
    rest = False
    if isinstance(options, str) and options.replace(" ", "").endswith(REST_TEXT):
        options, rest = options.replace(" ", "")[: -len(REST_TEXT)].rstrip(","), True
    elif isinstance(options, (list, tuple)) and len(options) == num_gates + 1 and options[-1] == REST8:
        options, rest = options[:-1], True
    return tuple(_parse(options, num_gates, (SKIP, FULL, INT8), "option array")) + ((REST8,) if rest else ())


def options_to_str(options: Sequence[int | bool]) -> str:
    """Compact text form of an option (or skip) array, e.g. ``"118011"`` (``"888888+8"``: the rest in int8)."""
    return "".join(str(int(v)) for v in gates_of(options)) + (REST_TEXT if has_rest(options) else "")


def doc_options(d: Mapping[str, Any]) -> tuple[int, ...]:
    """The option array of a config or candidate in a JSON document: its ``options`` (else its ``skip``), with
    :data:`REST8` appended where ``int8_rest`` is true."""
    return with_rest(tuple(int(v) for v in d.get("options") or d["skip"]), bool(d.get("int8_rest")))


def skip_from_indices(skipped: Iterable[int], num_gates: int) -> tuple[bool, ...]:
    """Skip array that bypasses the gates with the given indices (0-based) and executes the rest."""
    skipped = set(int(i) for i in skipped)
    bad = [i for i in skipped if not 0 <= i < num_gates]
    if bad:
        raise EdgeskipError(f"gate indices {bad} out of range 0..{num_gates - 1}")
    return tuple(i not in skipped for i in range(num_gates))


def module_name(skip: Sequence[object]) -> str:
    """Module (and file) name of a static config: ``static_`` + its skip or option array, e.g. ``static_110111``
    (``static_118011``: block 3 in int8). Compile writes these names; the runtime and profiles look them up."""
    return "static_" + options_to_str(skip)  # type: ignore[arg-type]

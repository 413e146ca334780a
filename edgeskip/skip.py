"""Skip arrays: S = [s_1 .. s_Bs], 1 = execute the gated block, 0 = bypass it.

Option arrays generalise them (issue #15, fractional depth): one value per gated block, 0 = skip, 1 = run in full
(float) precision, 8 = run the block's int8 variant. A skip array is an option array without 8s.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from edgeskip.errors import EdgeskipError

SKIP, FULL, INT8 = 0, 1, 8
OPTIONS = {SKIP: "skip", FULL: "full", INT8: "int8"}


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
    forms :func:`normalize_skip` takes (``"118011"``); returns a tuple of ints."""
    return tuple(_parse(options, num_gates, (SKIP, FULL, INT8), "option array"))


def options_to_str(options: Sequence[int | bool]) -> str:
    """Compact text form of an option (or skip) array, e.g. ``"118011"``."""
    return "".join(str(int(v)) for v in options)


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

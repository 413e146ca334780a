"""Skip arrays: S = [s_1 .. s_Bs], 1 = execute the gated block, 0 = bypass it."""

from __future__ import annotations

from typing import Iterable, Sequence

from edgeskip.errors import EdgeskipError


def normalize_skip(skip: object, num_gates: int) -> tuple[bool, ...]:
    """Validate a skip array and return it as a tuple of bools (True = execute).

    Accepts lists/tuples of 0/1 or bools, numpy arrays, torch tensors and strings like ``"110101"``
    or ``"1,1,0"``. Anything else, a wrong length, or a value other than 0/1 raises EdgeskipError.
    """
    if hasattr(skip, "tolist"):
        skip = skip.tolist()  # numpy / torch
    if isinstance(skip, str):
        text = skip.replace(",", "").replace(" ", "")
        try:
            values = [int(c) for c in text]
        except ValueError:
            raise EdgeskipError(f"skip array must contain only 0 and 1, got {skip!r}") from None
    elif isinstance(skip, Iterable):
        values = list(skip)
    else:
        raise EdgeskipError(f"skip array must be a sequence of 0/1, got {type(skip).__name__}")
    if len(values) != num_gates:
        raise EdgeskipError(f"skip array has length {len(values)}, expected B_s = {num_gates}")
    out = []
    for v in values:
        if isinstance(v, bool) or v in (0, 1):
            if isinstance(v, float) and v not in (0.0, 1.0):
                raise EdgeskipError(f"skip array values must be 0 or 1, got {v!r}")
            out.append(bool(v))
        else:
            raise EdgeskipError(f"skip array values must be 0 or 1, got {v!r}")
    return tuple(out)


def skip_from_indices(skipped: Iterable[int], num_gates: int) -> tuple[bool, ...]:
    """Skip array that bypasses the gates with the given indices (0-based) and executes the rest."""
    skipped = set(int(i) for i in skipped)
    bad = [i for i in skipped if not 0 <= i < num_gates]
    if bad:
        raise EdgeskipError(f"gate indices {bad} out of range 0..{num_gates - 1}")
    return tuple(i not in skipped for i in range(num_gates))


def skip_to_str(skip: Sequence[bool]) -> str:
    """Compact text form, e.g. ``"110111"``."""
    return "".join("1" if s else "0" for s in skip)

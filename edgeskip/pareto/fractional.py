"""Pure logic of fractional depth (issue #15): candidate option arrays over {full, int8, skip} per gated block.

The candidates extend the sensitivity method: from the full network, a greedy walk applies at each step the one
move (a block full -> int8, int8 -> skip or full -> skip) that loses the least validation accuracy per second of
latency saved, and every state it passes through is a candidate. Accuracy comes from a callback (the shared-prefix
evaluator); latency from a linear model fitted to measured configs (a per-block cost of each option plus a cost per
run of consecutive int8 blocks: entering int8 quantises the tensor and reorders its layout, leaving it
dequantises). Only the candidates are then measured for real; the front is drawn from measurements, never from the
model. No I/O here: callers pass the measurements.

The rest of the network (stem, ungated blocks, head; issue #34) is one more axis: float or int8 (an option array
ending in :data:`~edgeskip.skip.REST8`). It is one more move of the walk, one more regressor of the latency model, and
its int8 parts join the runs of int8 blocks around them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from edgeskip.skip import FULL, INT8, REST8, SKIP, gates_of, has_rest, with_rest

Options = tuple[int, ...]


def int8_runs(options: Sequence[int], gated_pos: Sequence[int] | None = None) -> int:
    """Number of maximal runs of int8 parts; a skipped block does not break a run, an executed float part does.

    ``gated_pos`` (optional) is each gate's block index in the network: a gap between consecutive gates is an
    ungated block, float (it breaks the run) unless the option array puts the rest in int8 (REST8), which also
    runs the stem and the head in int8."""
    rest = INT8 if has_rest(options) else FULL
    seq = [rest]  # the stem
    prev = None
    for k, o in enumerate(gates_of(options)):
        pos = gated_pos[k] if gated_pos is not None else k
        if prev is not None and pos - prev > 1:
            seq.append(rest)  # an ungated block between the two gates
        prev = pos
        seq.append(o)
    seq.append(rest)  # the head
    runs, inside = 0, False
    for o in seq:
        if o == INT8:
            runs += 0 if inside else 1
            inside = True
        elif o == FULL:
            inside = False
    return runs


def features(options: Sequence[int], gated_pos: Sequence[int] | None = None) -> np.ndarray:
    """Regressors of the latency model: 1, int8 indicator per gate, skip indicator per gate, int8 runs, and the
    rest in int8."""
    o = np.asarray(gates_of(options))
    return np.concatenate(
        [
            [1.0],
            (o == INT8).astype(float),
            (o == SKIP).astype(float),
            [float(int8_runs(options, gated_pos)), float(has_rest(options))],
        ]
    )


@dataclass(frozen=True)
class LatencyModel:
    """Least-squares fit of measured latencies on :func:`features`; ``r2`` on the fitted points."""

    coef: tuple[float, ...]
    gated_pos: tuple[int, ...] | None
    r2: float

    def predict(self, options: Sequence[int]) -> float:
        return float(features(options, self.gated_pos) @ np.asarray(self.coef))


def fit_latency_model(
    measured: Sequence[tuple[Sequence[int], float]], gated_pos: Sequence[int] | None = None
) -> LatencyModel:
    """Fit the model to (option array, seconds) pairs (minimum-norm least squares where underdetermined)."""
    if not measured:
        raise ValueError("the latency model needs measured configs")
    gp = tuple(gated_pos) if gated_pos is not None else None
    X = np.stack([features(o, gp) for o, _ in measured])
    y = np.array([t for _, t in measured], dtype=float)
    coef = np.linalg.lstsq(X, y, rcond=None)[0]
    resid = y - X @ coef
    tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / tot if tot > 0 else 1.0
    return LatencyModel(tuple(float(c) for c in coef), gp, r2)


def probe_configs(num_gates: int, seed: int = 0, random: int | None = None, rest: bool = False) -> list[Options]:
    """Configs to measure for the fit: all full, all int8, each gate int8 alone and skipped alone, the all-int8
    network with each gate back in float, and ``random`` (default ``num_gates``) seeded random option arrays.
    ``rest``: also all full and all int8 with the rest in int8, the latter with each gate back in float, and as
    many random arrays again with the rest in int8."""
    g = num_gates
    full, all8 = (FULL,) * g, (INT8,) * g
    out = [full, all8]
    for k in range(g):
        out += [
            full[:k] + (INT8,) + full[k + 1 :],
            full[:k] + (SKIP,) + full[k + 1 :],
            all8[:k] + (FULL,) + all8[k + 1 :],
        ]
    rng = np.random.default_rng(seed)
    n = g if random is None else random
    out += [tuple(int(v) for v in rng.choice([SKIP, FULL, INT8], g)) for _ in range(n)]
    if rest:
        out += [full + (REST8,), all8 + (REST8,)]
        out += [all8[:k] + (FULL,) + all8[k + 1 :] + (REST8,) for k in range(g)]
        out += [tuple(int(v) for v in rng.choice([SKIP, FULL, INT8], g)) + (REST8,) for _ in range(n)]
    return list(dict.fromkeys(out))


def int8_twins(skip_arrays: Sequence[Options], rest: bool = False) -> list[Options]:
    """Each skip-only candidate with every block it keeps in int8 (the all-skipped array has none); with ``rest``,
    each also with the rest of the network in int8, and the int8 twin with it. The walk moves one block at a time
    from all-full along one path; these put the int8 option on every point the skip search found (an int8 block
    costs 0.45-0.6x of its float block on onnxruntime with VNNI, at ~0.1 point)."""
    out: list[Options] = []
    for s in skip_arrays:
        if FULL in s:
            twin = tuple(INT8 if v == FULL else v for v in s)
            out += [twin, with_rest(twin, True)] if rest else [twin]
    if rest:
        out += [with_rest(s, True) for s in skip_arrays]
    return list(dict.fromkeys(out))


MOVES = ((FULL, INT8), (INT8, SKIP), (FULL, SKIP))


def next_states(options: Options, rest: bool = False) -> list[Options]:
    """Every option array one move away: one block full -> int8, int8 -> skip or full -> skip; with ``rest``, also
    the rest of the network float -> int8."""
    out = []
    gates = gates_of(options)
    tail = options[len(gates) :]
    for k, o in enumerate(gates):
        for a, b in MOVES:
            if o == a:
                out.append(gates[:k] + (b,) + gates[k + 1 :] + tail)
    if rest and not has_rest(options):
        out.append(with_rest(options, True))
    return out


@dataclass(frozen=True)
class Step:
    """One state of the greedy walk: its option array and validation accuracy."""

    options: Options
    val_accuracy: float


SCREEN_KEEP = 3  # moves evaluated on the whole split after screening (the beam keeps 3 x its width alike)


def _ranked(acc: float, accs: Sequence[float], saved: Sequence[float]) -> list[int]:
    """Move indices, best first: least accuracy lost per second saved (a gain ranks first); ties: the larger
    saving, then the first move."""
    return sorted(range(len(accs)), key=lambda i: ((acc - accs[i]) / saved[i], -saved[i], i))


def greedy_walk(
    num_gates: int,
    evaluate: Callable[[list[Options]], list[float]],
    predict: Callable[[Options], float],
    screen: Callable[[list[Options]], list[float]] | None = None,
    keep: int = SCREEN_KEEP,
    rest: bool = False,
) -> list[Step]:
    """The greedy path from all-full to all-skip (or until no move saves predicted latency).

    ``evaluate`` returns the validation accuracy of each option array given (one call per step, so a
    shared-prefix evaluator serves the whole step); the move with the least accuracy lost per predicted second
    saved is taken (an accuracy gain ranks first; ties go to the larger saving, then to the first move).
    ``screen`` (optional) estimates accuracy more cheaply (on fewer images): where a step has more than ``keep``
    moves, the state and its moves are screened, and only the ``keep`` best moves by the same criterion are
    evaluated and compared. ``rest``: putting the rest of the network in int8 is one more move (:func:`next_states`)."""
    state: Options = (FULL,) * num_gates
    path = [Step(state, evaluate([state])[0])]
    while True:
        lat = predict(state)
        saving = {m: lat - predict(m) for m in next_states(state, rest)}
        moves = [m for m, v in saving.items() if v > 0]
        if not moves:
            return path
        if screen is not None and len(moves) > keep:
            rough = screen([state, *moves])
            best_first = _ranked(rough[0], rough[1:], [saving[m] for m in moves])
            moves = [moves[i] for i in sorted(best_first[:keep])]  # network order, as unscreened
        accs = evaluate(moves)
        best = _ranked(path[-1].val_accuracy, accs, [saving[m] for m in moves])[0]
        state = moves[best]
        path.append(Step(state, accs[best]))


def compare_fronts(base: Sequence[tuple[float, float]], other: Sequence[tuple[float, float]]) -> dict:
    """How much ``other`` (accuracy, latency) points improve on each ``base`` point: the best accuracy reached at
    no more latency (gain, in accuracy units) and the least latency at no less accuracy (ratio to base)."""
    points = []
    for acc, lat in base:
        at_lat = [a for a, t in other if t <= lat]
        at_acc = [t for a, t in other if a >= acc]
        points.append(
            {
                "accuracy": acc,
                "latency_s": lat,
                "accuracy_gain_at_latency": max(at_lat) - acc if at_lat else None,
                "latency_ratio_at_accuracy": min(at_acc) / lat if at_acc else None,
            }
        )
    gains = [p["accuracy_gain_at_latency"] for p in points if p["accuracy_gain_at_latency"] is not None]
    ratios = [p["latency_ratio_at_accuracy"] for p in points if p["latency_ratio_at_accuracy"] is not None]
    return {
        "points": points,
        "max_accuracy_gain": max(gains, default=None),
        "min_latency_ratio": min(ratios, default=None),
    }

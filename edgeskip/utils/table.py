"""The Pareto table as text (torch-free: `edgeskip inspect` prints it on the board)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from edgeskip.skip import doc_options, options_to_str


def format_pareto_table(rows: Sequence[Mapping[str, Any]], num_gates: int, latency: bool = True) -> str:
    """Human-readable table of Pareto configs (rows with index, n_skipped, skip, accuracies, macs, latency_s)."""
    width = max(10, num_gates + 2)
    head = f"{'cfg':>3} {'skipped':>7} {'skip array':<{width}} {'val acc':>8} {'test acc':>8} {'MMACs':>8}"
    ort = latency and any("latency_s_onnxruntime" in r for r in rows)
    lines = [head + (f" {'latency ms':>10}" if latency else "") + (f" {'ORT ms':>8}" if ort else "")]
    for r in rows:
        s = options_to_str(doc_options(r))  # option arrays: 8 = the block runs in int8, +8 = the rest too
        line = (
            f"{r['index']:>3} {r['n_skipped']:>7} {s:<{width}} {r['val_accuracy']:>8.4f} "
            f"{r['test_accuracy']:>8.4f} {r['macs'] / 1e6:>8.2f}"
        )
        lines.append(
            line
            + (f" {r['latency_s'] * 1e3:>10.3f}" if latency else "")
            + (f" {r['latency_s_onnxruntime'] * 1e3:>8.3f}" if ort and "latency_s_onnxruntime" in r else "")
        )
    return "\n".join(lines)

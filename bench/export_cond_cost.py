"""Minimal reproducer: torch's dynamo ONNX exporter and nested ``torch.cond`` (issue #36; upstream-report style).

DFS bundles switch each gated block between ``n`` options with nested ``torch.cond`` (``edgeskip.export.dfs_graph.
_switch``: one ONNX ``If`` per remaining option). Exporting that graph costs ~10 s per gate on this machine, which
made the DFS fixtures the longest chain of the test suite and makes ``compile`` of a DFS model slow. This script
isolates the cost with plain PyTorch (no edgeskip code in the measured path):

  k gates in a row, each choosing among n branches (a 3x3 convolution + ReLU each; branch 0 the identity), as
  - ``nested``: cond(c == 0, b0, cond(c == 1, b1, ... bn-1)), what edgeskip exports today, and
  - ``flat``:   n - 1 independent conds in sequence, y = cond(c == i, b_i(x), y), the same count of ``If`` nodes at
    depth 1 (a different graph: it evaluates n - 1 conditions per gate; shown to separate nesting from count).

Each is exported with ``torch.onnx.export(..., dynamo=True, optimize=True)`` as edgeskip does, in one process, one
thread, alternating the variants; the minimum of ``--repeats`` is reported, with ratios to k = 1, n = 2.

    python bench/export_cond_cost.py --out bench/results     # ~3 min on the 2-core machine

The workaround edgeskip ships (``export_dfs``): trace the network with one cheap placeholder ``If`` per gate and
every branch flat, once, then assemble the nested ``If``s in ONNX. ``--dfs CHECKPOINT`` times it against the
nested trace on a real DFS model (``export_graph(DFSGraph(model))``, what ``export_dfs`` did before), alternating,
and checks that the two graphs compute the same logits and options on ``--images`` test images:

    python bench/export_cond_cost.py --dfs bench/results/dfs_r20/r20_dfs_cp0.4.pt --out bench/results

Every gated graph is now exported that way (``edgeskip.export.splice``: one flat trace, each gate's options as
extra outputs and a ``Where`` placeholder where its ``If`` goes). ``--gated CHECKPOINT ...`` times the bundle's
gated graph (one ``If`` per gate) and its int8 option-array graph (two nested ``If``s per gate, int8 variants
calibrated on 128 training images) against their ``torch.cond`` traces, and compares the outputs on ``--images``
test images under 8 random skip (option) arrays:

    python bench/export_cond_cost.py --gated bench/results/r20_sd.pt bench/results/r56_sd.pt --out bench/results
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn


class Branch(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


def nested(x: torch.Tensor, c: torch.Tensor, branches: list[nn.Module], i: int = 0) -> torch.Tensor:
    if i == len(branches) - 1:
        return branches[i](x)
    return torch.cond(c == i, lambda t, c: branches[i](t), lambda t, c: nested(t, c, branches, i + 1), (x, c))


def flat(x: torch.Tensor, c: torch.Tensor, branches: list[nn.Module]) -> torch.Tensor:
    y = branches[-1](x)
    for i in range(len(branches) - 1):
        y = torch.cond(c == i, lambda t, y, b=branches[i]: b(t), lambda t, y: y.clone(), (x, y))
    return y


class Switches(nn.Module):
    """k gates; gate g picks branch ``choice[g]`` of its n."""

    def __init__(self, k: int, n: int, form: str, c: int = 8) -> None:
        super().__init__()
        self.form = form
        self.gates = nn.ModuleList(nn.ModuleList([Identity()] + [Branch(c) for _ in range(n - 1)]) for _ in range(k))

    def forward(self, x: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
        for g, branches in enumerate(self.gates):
            f = nested if self.form == "nested" else flat
            x = f(x, choice[g], list(branches))
        return x


def export_seconds(model: nn.Module, k: int, dest: Path) -> float:
    x, choice = torch.zeros(1, 8, 8, 8), torch.zeros(k, dtype=torch.int64)
    t = time.perf_counter()
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        torch.onnx.export(model.eval(), (x, choice), str(dest), dynamo=True, optimize=True, opset_version=18)
    return time.perf_counter() - t


def dfs_workaround(checkpoint: Path, repeats: int, images: int) -> dict:
    """Nested ``torch.cond`` trace vs edgeskip's spliced export of one DFS checkpoint (``integer`` form: no
    post-rewrite, so both graphs hold the same ops), alternating; the minimum of ``repeats`` and the largest
    logit difference between the two graphs on ``images`` test images."""
    import numpy as np

    from edgeskip.backends.ort import ort_session
    from edgeskip.data.batches import iterate
    from edgeskip.export.dfs_graph import DFSGraph, export_dfs
    from edgeskip.export.onnx_export import export_graph
    from edgeskip.train import load_checkpoint

    ck = load_checkpoint(checkpoint)
    model = ck.model().eval()
    image = torch.zeros(1, model.cfg.in_channels, *model.cfg.input_size)
    times: dict[str, list[float]] = {"nested": [], "spliced": []}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"nested": Path(tmp) / "nested.onnx", "spliced": Path(tmp) / "spliced.onnx"}
        for _ in range(repeats):
            t = time.perf_counter()
            export_graph(DFSGraph(model), (image,), ["image"], paths["nested"], ["logits", "options"], False)
            times["nested"].append(time.perf_counter() - t)
            t = time.perf_counter()
            export_dfs(model, paths["spliced"], int8="qdq")
            times["spliced"].append(time.perf_counter() - t)
        xb = next(iterate(ck.data.load().test, ck.norm, images))[0].numpy()
        runs = {k: [ort_session(p).run(None, {"image": x[None]}) for x in xb] for k, p in paths.items()}
    logit_diff = max(float(np.abs(a[0] - b[0]).max()) for a, b in zip(runs["nested"], runs["spliced"]))
    options_differ = sum(int((a[1] != b[1]).any()) for a, b in zip(runs["nested"], runs["spliced"]))
    row = {
        "checkpoint": str(checkpoint),
        "gates": model.cfg.num_gates,
        "options": len(model.gate_cfg.options),
        **{f"{k}_s": min(v) for k, v in times.items()},
        "nested_vs_spliced": min(times["nested"]) / min(times["spliced"]),
        "images": len(xb),
        "max_logit_difference": logit_diff,
        "images_with_other_options": options_differ,
    }
    print(
        f"DFS {checkpoint.name}: nested {row['nested_s']:.1f} s, spliced {row['spliced_s']:.1f} s "
        f"({row['nested_vs_spliced']:.2f}x); {len(xb)} images: max logit difference {logit_diff:.2e}, "
        f"{options_differ} with other options",
        flush=True,
    )
    return row


def gated_workaround(checkpoint: Path, repeats: int, images: int) -> list[dict]:
    """The gated graph and the option-array graph of one checkpoint: ``torch.cond`` trace vs spliced export,
    alternating; the minimum of ``repeats`` and the largest output difference between the two graphs."""
    import numpy as np

    from edgeskip.backends.ort import ort_session
    from edgeskip.data.batches import iterate
    from edgeskip.export.graphs import GatedGraph, OptionsGraph
    from edgeskip.export.onnx_export import _variants_as_blocks, export_gated, export_graph, export_options
    from edgeskip.models.quant import calibrate
    from edgeskip.pareto.design import calibration_batches
    from edgeskip.train import load_checkpoint

    ck = load_checkpoint(checkpoint)
    model = ck.model().eval()
    splits = ck.data.load()
    g = model.cfg.num_gates
    model.attach_int8(calibrate(model, calibration_batches(splits, 128), model.cfg.gated_blocks))
    image = torch.zeros(2, model.cfg.in_channels, *model.cfg.input_size)
    xb = next(iterate(splits.test, ck.norm, images))[0].numpy()
    rng = np.random.default_rng(0)
    rows = []
    for kind, view, spliced, switch, values in (
        ("gated", GatedGraph, export_gated, "skip", (False, True)),
        ("options", OptionsGraph, export_options, "options", (0, 1, 8)),
    ):
        arg = torch.ones(g, dtype=torch.bool) if kind == "gated" else torch.ones(g, dtype=torch.int64)
        times: dict[str, list[float]] = {"nested": [], "spliced": []}
        with tempfile.TemporaryDirectory() as tmp:
            paths = {"nested": Path(tmp) / "nested.onnx", "spliced": Path(tmp) / "spliced.onnx"}
            for _ in range(repeats):
                edit = _variants_as_blocks if kind == "options" else None  # as export_options names the weights
                t = time.perf_counter()
                export_graph(view(model), (image, arg), ["image", switch], paths["nested"], edit=edit)
                times["nested"].append(time.perf_counter() - t)
                t = time.perf_counter()
                spliced(model, paths["spliced"])
                times["spliced"].append(time.perf_counter() - t)
            sessions = {k: ort_session(p) for k, p in paths.items()}
            diff = 0.0
            for _ in range(8):
                sw = np.array(rng.choice(values, g), dtype=bool if kind == "gated" else np.int64)
                a, b = (s.run(None, {"image": xb, switch: sw})[0] for s in sessions.values())
                diff = max(diff, float(np.abs(a - b).max()))
        row = {
            "checkpoint": str(checkpoint),
            "graph": kind,
            "gates": g,
            **{f"{k}_s": min(v) for k, v in times.items()},
            "nested_vs_spliced": min(times["nested"]) / min(times["spliced"]),
            "images": len(xb),
            "arrays": 8,
            "max_output_difference": diff,
        }
        print(
            f"{checkpoint.name} {kind} ({g} gates): nested {row['nested_s']:.1f} s, spliced {row['spliced_s']:.1f} s "
            f"({row['nested_vs_spliced']:.2f}x); max output difference {diff:.2e}",
            flush=True,
        )
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--dfs", type=Path, help="a DFS checkpoint: time edgeskip's spliced export against the nested trace"
    )
    ap.add_argument("--gated", type=Path, nargs="+", help="checkpoints: time the spliced gated and option-array graphs")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--gates", default="1,2,3", help="gate counts k")
    ap.add_argument("--options", default="2,3,4", help="options per gate n (DFS has 4)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.gated:
        doc = {
            "command": "python " + " ".join(sys.argv),
            "torch": torch.__version__,
            "rows": [r for ck in args.gated for r in gated_workaround(ck, args.repeats, args.images)],
            "note": "minimum of repeats, one thread, one process, torch.cond trace and spliced export alternating",
        }
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "export_gated_splice.json").write_text(json.dumps(doc, indent=1))
        return
    if args.dfs is not None:
        doc = {
            "command": "python " + " ".join(sys.argv),
            "torch": torch.__version__,
            "dfs": dfs_workaround(args.dfs, args.repeats, args.images),
            "note": "minimum of repeats, one thread, one process, nested and spliced alternating",
        }
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "export_dfs_splice.json").write_text(json.dumps(doc, indent=1))
        return
    ks, ns = [int(v) for v in args.gates.split(",")], [int(v) for v in args.options.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in ks:
            for n in ns:
                times: dict[str, list[float]] = {"nested": [], "flat": []}
                for _ in range(args.repeats):
                    for form in times:  # alternating
                        times[form].append(export_seconds(Switches(k, n, form), k, Path(tmp) / "m.onnx"))
                rows.append({"gates": k, "options": n, **{f"{f}_s": min(v) for f, v in times.items()}})
                r = rows[-1]
                print(f"k={k} n={n}: nested {r['nested_s']:.2f} s, flat {r['flat_s']:.2f} s", flush=True)
    base = rows[0]["nested_s"]
    for r in rows:
        r["nested_vs_k1_n2"] = r["nested_s"] / base
        r["nested_vs_flat"] = r["nested_s"] / r["flat_s"]
    doc = {
        "command": "python " + " ".join(sys.argv),
        "torch": torch.__version__,
        "rows": rows,
        "note": "minimum of repeats, one thread, one process, variants alternating",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "export_cond_cost.json").write_text(json.dumps(doc, indent=1))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for n in ns:
            sel = [r for r in rows if r["options"] == n]
            ax.plot([r["gates"] for r in sel], [r["nested_s"] for r in sel], "o-", label=f"nested, n={n}")
            ax.plot([r["gates"] for r in sel], [r["flat_s"] for r in sel], "x--", label=f"flat, n={n}")
        ax.set_xlabel("gates k")
        ax.set_ylabel("export time (s)")
        ax.set_title(f"dynamo ONNX export of torch.cond switches (torch {torch.__version__})")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.out / "export_cond_cost.png", dpi=120)
    except ImportError:
        print("matplotlib not installed: no plot")


if __name__ == "__main__":
    main()

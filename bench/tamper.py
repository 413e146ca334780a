"""Tampered bundles against the old and the new code, side by side: what `inspect`, `serve` and `bench` do with
each of 26 edits (issue #11's list and the cases its regression tests cover). 127.0.0.1 only, every process
bounded in time.

Each case edits a copy of one bundle (in the version-1 form the old code reads; the new code upgrades it on
reading). Outcomes: ``refused`` (exit 2, one ``error:`` line), ``traceback``, ``accepted`` (inspect exit 0,
serve listening, bench finished), ``other`` (anything else, with its first line). Edits that keep every hash
consistent are only detectable against a pinned digest: the new code gets ``--digest`` of the untouched
bundle for them (``pinned``); the old code had no such option.

    python bench/tamper.py bench/work/bundle_r20_sd200 --old 6099bbd --out bench/results
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_footprint import REPO, add_old_worktree, drop_work, v1_copy  # noqa: E402

from edgeskip.manifest import bundle_digest  # noqa: E402
from edgeskip.utils.atomic import write_json  # noqa: E402

Edit = Callable[[dict, Path], None]


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _rehash(doc: dict, root: Path, rel: str) -> None:
    doc["artifacts"][rel] = sha(root / rel)


def hash_edited(doc, root):
    k = next(iter(doc["artifacts"]))
    doc["artifacts"][k] = "0" * 64


def artifacts_deleted(doc, root):
    doc.pop("artifacts")


def outside_artifact(doc, root):
    (root.parent / "outside.txt").write_text("outside")
    doc["artifacts"]["../outside.txt"] = sha(root.parent / "outside.txt")


def gated_onnx_outside(doc, root):
    shutil.copy(root / doc["gated"]["onnx"], root.parent / "outside.onnx")
    doc["gated"]["onnx"] = "../outside.onnx"
    doc["artifacts"]["../outside.onnx"] = sha(root.parent / "outside.onnx")


def gated_onnx_absolute(doc, root):
    shutil.copy(root / doc["gated"]["onnx"], root.parent / "abs.onnx")
    doc["gated"]["onnx"] = str(root.parent / "abs.onnx")


def weights_symlink_out(doc, root):
    w = root / doc["iree"]["weights"]
    shutil.copy(w, root.parent / "weights.irpa")
    w.unlink()
    w.symlink_to(root.parent / "weights.irpa")


def std_zero(doc, root):
    doc["normalization"]["std"] = [0.0] * len(doc["normalization"]["std"])


def mean_count(doc, root):
    doc["normalization"]["mean"] = doc["normalization"]["mean"][:2]


def classes_cut(doc, root):
    doc["class_names"] = doc["class_names"][:2]


def classes_duplicated(doc, root):
    doc["class_names"][1] = doc["class_names"][0]


def accuracy_out_of_range(doc, root):
    doc["configs"][0]["val_accuracy"] = 1.5


def accuracies_inflated(doc, root):  # consistent: every hash still matches
    for c in doc["configs"]:
        c["val_accuracy"] = 0.999


def modules_swapped(doc, root):  # consistent: config 0 runs the all-skip function
    a, b = doc["configs"][0], doc["configs"][-1]
    a["module"], b["module"] = b["module"], a["module"]


def classifier_rows_permuted(doc, root):  # consistent: every prediction shifted by one class, hashes updated
    import numpy as np
    import onnx
    from onnx import numpy_helper

    for _name, rel in [("gated", doc["gated"]["onnx"])] + [
        (c["module"], f"onnx/{c['module']}.onnx") for c in doc["configs"]
    ]:
        p = root / rel
        if not p.is_file():
            continue
        m = onnx.load(p)
        inits = [i for i in m.graph.initializer if len(i.dims) == 2]
        fc = inits[-1]
        w = numpy_helper.to_array(fc)
        fc.CopyFrom(numpy_helper.from_array(np.roll(w, 1, axis=0), fc.name))
        onnx.save(m, p)
        _rehash(doc, root, rel)


def configs_missing(doc, root):
    doc.pop("configs")


def configs_empty(doc, root):
    doc["configs"] = []


def configs_wrong_type(doc, root):
    doc["configs"] = "abc"


def skip_wrong_length(doc, root):
    doc["configs"][1]["skip"] = doc["configs"][1]["skip"][:-1]


def skip_vs_n_skipped(doc, root):
    doc["configs"][1]["n_skipped"] = 3


def configs_unsorted(doc, root):
    c = doc["configs"]
    c[0], c[1] = c[1], c[0]
    c[0]["index"], c[1]["index"] = 0, 1


def index_out_of_order(doc, root):
    doc["configs"][1]["index"] = 7


def input_shape_changed(doc, root):
    doc["input"]["shape"] = ["N", 1, 9, 9]


def version_unknown(doc, root):
    doc["version"] = 99


def format_unknown(doc, root):
    doc["format"] = "something-else"


def module_function_missing(doc, root):
    doc["configs"][2]["module"] = "static_nonexistent"


def pareto_garbage(doc, root):
    p = root / "pareto.json"
    p.write_text("{not json at all " + "x" * 100)
    if "pareto.json" in doc["artifacts"]:
        _rehash(doc, root, "pareto.json")
    else:
        doc["artifacts"]["pareto.json"] = sha(p)


CASES: list[tuple[str, Edit, bool]] = [  # (name, edit, consistent: detectable only against a pinned digest)
    ("a hash edited", hash_edited, False),
    ("artifacts deleted", artifacts_deleted, False),
    ("artifact ../outside.txt", outside_artifact, False),
    ("gated ONNX at ../outside.onnx (hashed)", gated_onnx_outside, False),
    ("gated ONNX at an absolute path", gated_onnx_absolute, False),
    ("weights a symlink out of the bundle", weights_symlink_out, False),
    ("normalisation std 0", std_zero, False),
    ("2 means for 3 channels", mean_count, False),
    ("class names cut to 2", classes_cut, False),
    ("class names duplicated", classes_duplicated, False),
    ("val_accuracy 1.5", accuracy_out_of_range, False),
    ("configs missing", configs_missing, False),
    ("configs empty", configs_empty, False),
    ("configs a string", configs_wrong_type, False),
    ("skip array one short", skip_wrong_length, False),
    ("n_skipped disagrees with skip", skip_vs_n_skipped, False),
    ("configs not sorted by skipped blocks", configs_unsorted, False),
    ("config index out of order", index_out_of_order, False),
    ("input shape [N, 1, 9, 9]", input_shape_changed, False),
    ("version 99", version_unknown, False),
    ("unknown format", format_unknown, False),
    ("a config naming a missing function", module_function_missing, False),
    ("garbage pareto.json, hash updated", pareto_garbage, True),
    ("every val_accuracy 0.999 (hashes kept)", accuracies_inflated, True),
    ("modules of configs 0 and 6 swapped", modules_swapped, True),
    ("classifier rows permuted, hashes updated", classifier_rows_permuted, True),
]
ORT_CASES = {"classifier rows permuted, hashes updated"}  # an edit of the ONNX graphs: run where they run


def outcome(res_rc: int | None, out: str, err: str, started: bool = False) -> dict:
    lines = [l for l in err.strip().splitlines() if l.strip()]
    if "Traceback" in err:
        kind = "traceback"
    elif started or res_rc == 0:
        kind = "accepted"
    elif res_rc == 2 and len(lines) == 1 and lines[0].startswith("error:"):
        kind = "refused"
    else:
        kind = "other"
    first = (lines[-1] if kind == "traceback" and lines else (lines[0] if lines else out.strip()[:160]))[:200]
    return {"outcome": kind, "rc": res_rc, "line": first}


def run_cmd(root: Path, argv: list[str], timeout: float = 120) -> dict:
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    if argv[0] != "serve":
        try:
            r = subprocess.run(
                [sys.executable, "-m", "edgeskip.cli", *argv],
                capture_output=True,
                text=True,
                timeout=timeout,
                env=env,
                cwd=root,
            )
        except subprocess.TimeoutExpired:
            return {"outcome": "other", "rc": None, "line": f"timed out after {timeout} s"}
        return outcome(r.returncode, r.stdout, r.stderr)
    p = subprocess.Popen(
        [sys.executable, "-m", "edgeskip.cli", *argv, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=root,
    )
    line = p.stdout.readline()  # the readiness line, or EOF when it exits
    started = "listening on" in line
    if started:
        p.terminate()
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    return outcome(None if started else p.returncode, line + out, err, started)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--old", required=True, help="git revision of the old code")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tamper-"))
    res: dict = {
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "bundle": str(args.bundle),
        "old": args.old,
        "cases": [],
    }
    t0 = time.perf_counter()
    try:
        add_old_worktree(args.old, work)
        (work / "shared").symlink_to(REPO.parent / "shared")  # the old bench reads the data spec's ../shared path
        clean = v1_copy(args.bundle, work / "clean" / "bundle")
        digest = bundle_digest(json.loads((clean / "manifest.json").read_text()))
        for i, (name, edit, consistent) in enumerate(CASES):
            case_dir = work / f"case{i:02d}"
            b = case_dir / "bundle"
            shutil.copytree(clean, b, symlinks=True)  # a copy per case: edits never reach the clean bundle
            doc = json.loads((b / "manifest.json").read_text())
            edit(doc, b)
            (b / "manifest.json").write_text(json.dumps(doc))
            row: dict = {"case": name, "consistent": consistent}
            backend = "onnxruntime" if name in ORT_CASES else "iree"
            for label, root in (("old", work / "old"), ("new", REPO)):
                pin = ["--digest", digest] if consistent and label == "new" else []
                row[label] = {
                    "inspect": run_cmd(root, ["inspect", str(b), *pin]),
                    "serve": run_cmd(root, ["serve", str(b), "--backend", backend, *pin]),
                    "bench": run_cmd(root, ["bench", str(b), "--count", "20", "--backend", backend, *pin]),
                }
            res["cases"].append(row)
            print(
                f"{name:45s} old: "
                + " ".join(f"{c}={row['old'][c]['outcome']}" for c in row["old"])
                + "   new: "
                + " ".join(f"{c}={row['new'][c]['outcome']}" for c in row["new"]),
                flush=True,
            )
            shutil.rmtree(case_dir, ignore_errors=True)
    finally:
        drop_work(work)
    res["seconds"] = time.perf_counter() - t0
    for label in ("old", "new"):
        tally: dict[str, int] = {}
        for row in res["cases"]:
            for c in row[label].values():
                tally[c["outcome"]] = tally.get(c["outcome"], 0) + 1
        res[f"{label}_outcomes"] = tally
        print(f"{label}: {tally}")
    write_json(args.out / "tamper.json", res)


if __name__ == "__main__":
    main()

"""`edgeskip compile` and `edgeskip inspect` end to end on a tiny digits model."""

import json
import os
import subprocess

from edgeskip.export import emulate
from edgeskip.export.shared_weights import module_name
from edgeskip.manifest import load_manifest
from edgeskip.utils.hashing import file_digest as sha256
from tests.conftest import cli as run


def one_line_error(res, fragment):
    assert res.returncode == 2, res.stderr
    lines = [l for l in res.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], res.stderr


def test_bundle_contents_and_manifest(bundle):
    m = load_manifest(bundle)
    doc = json.loads((bundle / "manifest.json").read_text())
    assert doc["format"] == "edgeskip-bundle" and doc["version"] == 3 and doc["kind"] == "edgeskip"
    assert m.num_gates == 6 and m.input.shape == ("N", 1, 8, 8)
    assert m.class_names == tuple(str(i) for i in range(10)) and m.dataset_id == "digits"
    assert set(m.targets) == {"host", "aarch64", "odroid-xu4"}
    assert "--iree-llvmcpu-debug-symbols=false" in m.targets["odroid-xu4"].flags
    # the host's static functions: channels-last with or without data tiling, or NCHW, as measured (any may win
    # on a model this small; NCHW always tiled); the ARM targets keep channels-last with data tiling
    for arm in ("aarch64", "odroid-xu4"):
        assert m.targets[arm].static_data_tiling and m.targets[arm].static_channels_last
    host = m.targets["host"]
    assert host.static_data_tiling or host.static_channels_last
    assert doc["targets"]["host"].get("static_data_tiling", True) == host.static_data_tiling
    assert m.extra["tools"]["iree-base-compiler"] == m.extra["tools"]["iree-base-runtime"]
    # every file is listed with its hash, the manifest aside
    files = {str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()} - {"manifest.json"}
    assert files == set(m.artifacts)
    assert all(sha256(bundle / f) == h for f, h in m.artifacts.items())
    # one module per target holding the gated function and one function per measured candidate (the Pareto
    # configs among them: a board can measure its own front); one ONNX graph per Pareto config; one weight archive
    pareto = json.loads((bundle / "pareto.json").read_text())
    candidates = [module_name(c["skip"]) for c in pareto["candidates"]]
    assert m.iree.functions == ("gated", *candidates) and 2 <= len(candidates) == len(set(candidates)) <= 2**6
    # compile's default search: a beam whose candidates are the front of val accuracy vs MACs it evaluated
    assert pareto["search"]["method"] == "beam" and pareto["search"]["beam_width"] == 1
    front = sorted(pareto["candidates"][1:], key=lambda c: -c["macs"])  # the full network is the anchor
    assert all(a["val_accuracy"] >= b["val_accuracy"] for a, b in zip(front, front[1:]))
    assert {c.module for c in m.configs} <= set(candidates)
    # an ONNX graph for every candidate too (a board's onnxruntime front chooses among them: edgeskip profile),
    # every initializer of every graph in one shared file, each distinct tensor once
    assert set(m.onnx) == {"gated", *candidates} and set(m.onnx.values()) <= files
    assert m.onnx_weights == "onnx/weights.bin" and m.onnx_weights in files
    sharing = m.extra["onnx_sharing"]
    size = (bundle / m.onnx_weights).stat().st_size  # the tensors, each at a 64-byte aligned offset
    assert (
        sharing["graphs"] == len(m.onnx)
        and sharing["bytes_shared"] <= size < sharing["bytes_shared"] + 64 * sharing["distinct"]
    )
    assert sharing["bytes_shared"] * 3 < sharing["bytes_in_graphs"]  # 8 graphs: at least the 3x of three full copies
    assert all((bundle / g).stat().st_size < sharing["bytes_shared"] / 4 for g in m.onnx.values())
    assert sorted(f for f in files if f.endswith(".vmfb")) == sorted(f"iree/{t}/model.vmfb" for t in m.targets)
    assert [f for f in files if f.endswith(".irpa")] == ["iree/weights.irpa"]
    # the front is built on measured IREE latency on this host
    assert pareto["cost"] == "latency_s" and pareto["latency_source"].startswith("iree-host")
    assert m.configs[0].n_skipped == 0 and m.configs[0].skip == (1,) * 6
    v = m.extra["verification"]
    assert v["onnx"]["gated_vs_torch"] <= 1e-4 and v["iree"]["host"]["iree_vs_onnxruntime"] <= 1e-4
    assert v["iree"]["odroid-xu4"]["undefined_symbols"] == 0 and v["iree"]["odroid-xu4"]["elf_checked"] > 0
    if emulate.missing() is None:
        assert v["iree"]["aarch64"]["executed"] and v["iree"]["aarch64"]["aarch64_vs_host"] <= 1e-4
    if emulate.missing("armv7") is None or os.environ.get("CI"):  # CI builds the armv7 runtime: it must run
        xu4 = v["iree"]["odroid-xu4"]
        assert xu4["executed"] and xu4["armv7_vs_host"] <= 1e-4 and xu4["runtime"].endswith("built from source")
    assert m.host_fastest in ("iree", "onnxruntime")
    assert all(c["iree_over_onnxruntime"] > 0 for c in pareto["configs"])
    assert all(c.extra["latency_s_onnxruntime"] > 0 for c in m.configs)


def test_inspect_and_tampering(bundle, tmp_path):
    ok = run("inspect", bundle)
    assert ok.returncode == 0 and "artifact hashes match" in ok.stdout and "skip array" in ok.stdout
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(bundle), str(copy)], check=True)
    with open(copy / "iree" / "host" / "model.vmfb", "ab") as f:
        f.write(b"x")
    one_line_error(run("inspect", copy), "sha256 mismatch for iree/host/model.vmfb")
    (copy / "iree" / "weights.irpa").unlink()
    (copy / "iree" / "host" / "model.vmfb").write_bytes((bundle / "iree" / "host" / "model.vmfb").read_bytes())
    one_line_error(run("inspect", copy), "missing artifact iree/weights.irpa")
    (copy / "iree" / "weights.irpa").write_bytes((bundle / "iree" / "weights.irpa").read_bytes())
    with open(copy / "onnx" / "weights.bin", "r+b") as f:  # the ONNX graphs' shared weights are hashed too
        f.write(b"\x00\x00\x00\x01")
    one_line_error(run("inspect", copy), "sha256 mismatch for onnx/weights.bin")
    one_line_error(run("inspect", tmp_path), "no manifest.json")


def test_compile_bad_input(tmp_path, tiny_checkpoint, bundle):
    out = tmp_path / "b"
    one_line_error(
        run("compile", "--checkpoint", tiny_checkpoint, "--target", "host,riscv", "--out", out),
        "unsupported target riscv",
    )
    one_line_error(
        run("compile", "--checkpoint", tiny_checkpoint, "--static-data-tiling", "maybe", "--out", out),
        "'maybe' is not one of 'auto', 'on', 'off'",
    )
    one_line_error(run("compile", "--checkpoint", tiny_checkpoint, "--out", bundle), "--force")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    one_line_error(run("compile", "--checkpoint", junk, "--out", out), "not a readable edgeskip checkpoint")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_evaluation_sample_is_a_random_subset_of_every_class(tmp_path):
    """An image-folder test split is sorted by class: the sample must not be its first 1,000 (all one class)."""
    import numpy as np

    from edgeskip.data.dataset import ArrayDataset, Normalization, Splits
    from edgeskip.export.bundle import write_sample

    y = np.repeat(np.arange(10), 500).astype(np.int64)  # sorted, as a folder-per-class tree loads
    x = np.repeat(np.arange(10, dtype=np.uint8), 500)[:, None, None, None] * np.ones((1, 3, 4, 4), np.uint8)
    test = ArrayDataset(x, y, [str(k) for k in range(10)])
    splits = Splits("t", test, test, test, Normalization((0.5,) * 3, (0.25,) * 3))
    write_sample(tmp_path, splits)
    d = np.load(tmp_path / "eval" / "sample.npz")
    assert len(d["labels"]) == 1000 and (np.bincount(d["labels"], minlength=10) > 50).all()
    assert (d["pixels"][:, 0, 0, 0] == d["labels"]).all()  # images stay with their labels

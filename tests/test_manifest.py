"""The bundle manifest contract: round trip, version-1 upgrade, and refusal of documents that break it."""

import copy
import json
import re

import pytest

from edgeskip.manifest import READS, VERSION, Manifest, ManifestError, load_manifest
from edgeskip.utils.hashing import file_digest


def valid_doc() -> dict:
    skips = [[1, 1, 1, 1], [1, 0, 1, 0], [0, 0, 0, 0]]
    configs = [
        {
            "index": i,
            "n_skipped": s.count(0),
            "skip": s,
            "module": "static_" + "".join(map(str, s)),
            "val_accuracy": 0.9 - 0.1 * i,
            "test_accuracy": 0.89 - 0.1 * i,
            "macs": 1000 - 200 * i,
            "latency_s": 1e-3 - 2e-4 * i,
            "latency_s_onnxruntime": 9e-4,
        }
        for i, s in enumerate(skips)
    ]
    return {
        "format": "edgeskip-bundle",
        "version": 2,
        "kind": "edgeskip",
        "created_unix": 1,
        "tools": {"edgeskip": "0"},
        "model": {"depth": 14, "num_classes": 3},
        "input": {"name": "image", "dtype": "float32", "shape": ["N", 3, 8, 8], "layout": "NCHW"},
        "normalization": {"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]},
        "class_names": ["a", "b", "c"],
        "dataset_id": "toy",
        "num_gates": 4,
        "gated_blocks": [1, 3, 5, 7],
        "onnx": {"gated": "onnx/gated.onnx", **{c["module"]: f"onnx/{c['module']}.onnx" for c in configs}},
        "configs": configs,
        "targets": {"host": {"triple": "host", "flags": ["-x"], "dir": "iree/host"}},
        "iree": {
            "weights": "iree/weights.irpa",
            "parameter_scope": "model",
            "module": "model.vmfb",
            "functions": ["gated", *[c["module"] for c in configs]],
        },
        "backend": {"host_fastest": "iree", "latency_source": "test"},
        "verification": {"tolerance": 1e-4},
        "artifacts": {},
    }


def write_bundle(root, doc: dict) -> None:
    """Files for every path the runtime opens, hashed into ``doc``."""
    iree = doc.get("iree")  # none in an onnxruntime-only bundle
    files = [
        *([iree["weights"]] if iree else []),
        *doc["onnx"].values(),
        *(f"{t['dir']}/{iree['module']}" for t in doc["targets"].values() if iree),
    ]
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode())
    doc["artifacts"] = {rel: file_digest(root / rel) for rel in files}
    (root / "manifest.json").write_text(json.dumps(doc))


def test_round_trip_and_typed_fields():
    doc = valid_doc()
    m = Manifest.from_dict(doc)
    assert m.input.chw == (3, 8, 8) and m.num_gates == 4 and m.configs[1].skip_tuple == (True, False, True, False)
    assert m.by_skip == {(True,) * 4: 0, (True, False, True, False): 1, (False,) * 4: 2}
    assert m.configs[0].extra == {"latency_s_onnxruntime": 9e-4} and m.extra["backend"] == {"latency_source": "test"}
    again = m.to_dict()
    assert Manifest.from_dict(again) == m
    assert set(again) == set(doc) and again["configs"] == doc["configs"] and again["backend"] == doc["backend"]
    assert m.targets["host"].static_data_tiling and "static_data_tiling" not in again["targets"]["host"]
    doc["targets"]["host"]["static_data_tiling"] = False  # measured at compile: the static functions untiled
    untiled = Manifest.from_dict(doc)
    assert not untiled.targets["host"].static_data_tiling and Manifest.from_dict(untiled.to_dict()) == untiled
    assert (
        untiled.targets["host"].static_channels_last
        and "static_channels_last" not in untiled.to_dict()["targets"]["host"]
    )
    doc["targets"]["host"].update(static_data_tiling=True, static_channels_last=False)  # NCHW kept
    nchw = Manifest.from_dict(doc)
    assert not nchw.targets["host"].static_channels_last and Manifest.from_dict(nchw.to_dict()) == nchw


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda d: d.update(version=99), "bundle version 99"),
        (lambda d: d.update(format="other"), "not an edgeskip bundle manifest"),
        (lambda d: d["normalization"].update(std=[0.2, 0.0, 0.2]), "std > 0"),
        (lambda d: d["normalization"].update(mean=[0.5]), "needs 3 mean and std"),
        (lambda d: d.update(class_names=["a", "b"]), "2 class_names for a model of 3 classes"),
        (lambda d: d.update(class_names=["a", "a", "b"]), "distinct"),
        (lambda d: d["configs"][1].update(val_accuracy=1.5), "configs[1].val_accuracy"),
        (lambda d: d["configs"][1].update(skip=[1, 0, 1]), "configs[1].skip must be 4 values"),
        (lambda d: d["configs"][1].update(n_skipped=0), "n_skipped does not match"),
        (lambda d: d["configs"][2].update(index=5), "configs[2].index must be 2"),
        (lambda d: d["configs"][2].update(skip=[1, 1, 1, 1], n_skipped=0), "sorted by skipped blocks"),
        (lambda d: d["configs"][0].update(module="static_nope"), "functions the module lacks: static_nope"),
        (lambda d: d["iree"].update(functions=d["iree"]["functions"][1:]), "needs the function 'gated'"),
        (lambda d: d["iree"].update(weights="../../outside.irpa"), "points outside the bundle"),
        (lambda d: d["onnx"].update(gated="/etc/passwd"), "points outside the bundle"),
        (lambda d: d["targets"]["host"].update(dir="../x"), "points outside the bundle"),
        (lambda d: d["targets"]["host"].update(static_data_tiling="no"), "targets.host.static_data_tiling has the"),
        (lambda d: d["targets"]["host"].update(static_channels_last=0), "targets.host.static_channels_last has the"),
        (lambda d: d["backend"].update(host_fastest="tvm"), "host_fastest"),
        (lambda d: d.update(artifacts={"../x": "0" * 64}), "points outside the bundle"),
        (lambda d: d.pop("configs"), "configs is missing"),
        (lambda d: d.update(configs=[]), "configs is empty"),
        (lambda d: d.update(num_gates=True), "num_gates has the wrong type"),
        (lambda d: d["input"].update(shape=["N", 3, 0, 8]), "positive sizes"),
        (lambda d: d.update(kind="magic"), "kind must be one of"),
    ],
)
def test_contract_violations_are_named(edit, fragment):
    refused(valid_doc(), edit, fragment)


def refused(doc: dict, edit, fragment: str) -> None:
    """``edit(doc)`` makes a document the contract refuses, naming ``fragment``."""
    edit(doc)
    with pytest.raises(ManifestError, match=re.escape(fragment)):
        Manifest.from_dict(doc)


def test_load_checks_hashes_and_that_every_used_file_is_hashed(tmp_path):
    doc = valid_doc()
    write_bundle(tmp_path, doc)
    m = load_manifest(tmp_path)
    assert m.version == VERSION and len(m.artifacts) == 6
    (tmp_path / "onnx" / "gated.onnx").write_bytes(b"tampered")
    with pytest.raises(Exception, match="sha256 mismatch for onnx/gated.onnx"):
        load_manifest(tmp_path)
    assert load_manifest(tmp_path, check_hashes=False).num_gates == 4
    # deleting the artifacts list does not turn verification off
    stripped = copy.deepcopy(doc)
    stripped["artifacts"] = {}
    (tmp_path / "manifest.json").write_text(json.dumps(stripped))
    with pytest.raises(ManifestError, match="used but not hashed"):
        load_manifest(tmp_path)
    # a symlink inside the bundle pointing outside it is refused even with a matching hash
    outside = tmp_path.parent / f"{tmp_path.name}-outside.bin"
    outside.write_bytes(b"secret")
    (tmp_path / "link.bin").symlink_to(outside)
    linked = copy.deepcopy(doc)
    linked["artifacts"]["link.bin"] = file_digest(outside)
    (tmp_path / "manifest.json").write_text(json.dumps(linked))
    (tmp_path / "onnx" / "gated.onnx").write_bytes(b"onnx/gated.onnx")
    with pytest.raises(ManifestError, match="resolves outside the bundle"):
        load_manifest(tmp_path)


def test_version_1_documents_are_upgraded(tmp_path):
    doc = valid_doc()
    v1 = copy.deepcopy(doc)
    v1["version"] = 1
    del v1["onnx"], v1["kind"]
    v1["gated"] = {"onnx": "onnx/gated.onnx", "inputs": ["image", "skip"]}
    assert 1 in READS
    m = Manifest.from_dict(v1)
    assert m.version == VERSION and m.onnx == doc["onnx"] and m.kind == "edgeskip"
    sk = copy.deepcopy(v1)
    sk.update(kind="skipnet", num_gates=4)
    sk["configs"] = [{**doc["configs"][0], "module": "skipnet", "policy": "learned"}]
    del sk["configs"][0]["skip"]
    sk["iree"] = {"weights": "iree/weights.irpa", "parameter_scope": "model", "entry_function": "main_graph"}
    m = Manifest.from_dict(sk)
    assert m.iree.module == "skipnet.vmfb" and m.iree.functions == ("main_graph",)
    assert m.configs[0].module == "main_graph" and m.onnx == {"main_graph": "onnx/skipnet.onnx"}


def test_not_a_bundle(tmp_path):
    with pytest.raises(Exception, match="no manifest.json"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(Exception, match="not valid JSON"):
        load_manifest(tmp_path)


def int8_doc() -> dict:
    """A version-3 document: config 1 runs gates 0 and 2 in int8, and each back end names its front."""
    doc = valid_doc()
    doc["version"] = 3
    c = doc["configs"][1]
    c.update(options=[8, 0, 8, 0], module="static_8080")
    doc["onnx"]["static_8080"] = doc["onnx"].pop("static_1010")
    doc["iree"]["functions"].remove("static_1010")  # int8 configs run on onnxruntime only
    doc["int8"] = {"blocks": {"1": {k: {"scale": 0.1, "zero_point": 0} for k in "xhcy"}}}
    doc["fronts"] = {"iree": [0, 2], "onnxruntime": [0, 1, 2]}
    return doc


def test_version_3_options_and_fronts():
    doc = int8_doc()
    m = Manifest.from_dict(doc)
    assert m.configs[1].options == (8, 0, 8, 0) and m.configs[1].n_int8 == 2 and m.configs[0].options is None
    assert m.by_skip == {(True,) * 4: 0, (False,) * 4: 2}  # an int8 config is not its skip array's float config
    assert Manifest.from_dict(m.to_dict()) == m
    iree = m.for_backend("iree")
    assert [c.module for c in iree.configs] == ["static_1111", "static_0000"] and [c.index for c in iree.configs] == [
        0,
        1,
    ]
    assert len(m.for_backend("onnxruntime").configs) == 3
    v2 = Manifest.from_dict(valid_doc())  # a version-2 document: every back end steps through every config
    assert v2.version == VERSION == 4 and v2.front("iree") == (0, 1, 2) and v2.int8 is None
    assert m.to_dict()["version"] == 3  # no int8_rest: written as version 3, which older readers take


def test_a_config_with_the_rest_in_int8_is_typed_and_never_its_skip_arrays_float_config():
    """Issue #34: ``int8_rest`` (stem, stage entries and head in int8) beside options; a config running no gated block
    in int8 but the rest (``1010+8``) is still an int8 config: a skip array names the float one."""
    doc = int8_doc()
    doc["configs"][1].update(options=[1, 0, 1, 0], int8_rest=True, module="static_1010+8")
    doc["onnx"]["static_1010+8"] = doc["onnx"].pop("static_8080")
    m = Manifest.from_dict(doc)
    c = m.configs[1]
    assert c.int8_rest and c.quantized and c.n_int8 == 0 and c.to_dict()["int8_rest"] is True
    assert m.by_skip == {(True,) * 4: 0, (False,) * 4: 2} and Manifest.from_dict(m.to_dict()) == m
    assert m.to_dict()["version"] == 4  # older readers (versions 1-3) refuse it rather than run it as float
    assert "int8_rest" not in m.configs[0].to_dict()  # written only where true: older readers see nothing new
    doc["configs"][1].pop("options")
    refused(doc, lambda d: None, "int8_rest must be true or false, and true only beside options")
    refused(int8_doc(), lambda d: d["configs"][1].update(int8_rest="yes"), "int8_rest must be true or false")


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda d: d["configs"][1].update(options=[8, 1, 8, 0]), "not the executed mask"),
        (lambda d: d["configs"][1].update(options=[2, 0, 8, 0]), "values of 0/1/8"),
        (lambda d: d["configs"][1].update(options=[8, 0, 8]), "values of 0/1/8"),
        (lambda d: d.pop("int8"), "int8 section is missing"),
        (lambda d: d.update(fronts={"iree": [1, 2]}), "starting with 0"),
        (lambda d: d.update(fronts={"iree": [0, 0]}), "distinct"),
        (lambda d: d.update(fronts={"iree": [0, 7]}), "distinct config indices"),
        (lambda d: d.update(fronts={"tflite": [0]}), "not a back end"),
        (lambda d: d.update(fronts={"iree": [0, 1]}), "functions the module lacks: static_8080"),
        (lambda d: d.update(fronts={"onnxruntime": [0, 1]}), "must name the IREE front"),
        (lambda d: d["onnx"].pop("static_8080"), "without a graph: static_8080"),
    ],
)
def test_version_3_violations_are_named(edit, fragment):
    refused(int8_doc(), edit, fragment)


def onnxruntime_only_doc() -> dict:
    """A bundle IREE could not compile (issue #35): no iree section, no targets, the reason in the backend."""
    doc = valid_doc()
    del doc["iree"]
    doc["targets"] = {}
    doc["backend"] = {"host_fastest": "onnxruntime", "iree_unavailable": "iree-compile for host failed: x"}
    return doc


def test_an_onnxruntime_only_bundle_says_why_and_round_trips(tmp_path):
    doc = onnxruntime_only_doc()
    m = Manifest.from_dict(doc)
    assert m.iree is None and m.targets == {} and m.iree_unavailable == "iree-compile for host failed: x"
    assert Manifest.from_dict(m.to_dict()) == m and "iree" not in m.to_dict()
    assert Manifest.from_dict(valid_doc()).iree_unavailable is None
    write_bundle(tmp_path, doc)
    assert load_manifest(tmp_path).iree is None


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda d: d["backend"].pop("iree_unavailable"), "does not say why"),
        (lambda d: d["backend"].update(host_fastest="iree"), "no targets and runs its graphs on onnxruntime"),
        (lambda d: d.update(targets=valid_doc()["targets"]), "no targets and runs its graphs on onnxruntime"),
        (lambda d: d["onnx"].pop("static_1010"), "onnxruntime front configs without a graph: static_1010"),
    ],
)
def test_an_onnxruntime_only_bundle_violations_are_named(edit, fragment):
    refused(onnxruntime_only_doc(), edit, fragment)

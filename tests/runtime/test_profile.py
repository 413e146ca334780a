"""`edgeskip profile`: every candidate measured on this machine, its own fronts, bound to bundle and machine;
serve, bench and inspect run the matching profile's fronts and refuse another bundle's, another machine's or an
edited one in one line."""

import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from edgeskip.manifest import load_manifest
from edgeskip.runtime.executor import open_executor
from edgeskip.runtime.profile import Candidate, Profile, draw_fronts, load_profile, machine
from edgeskip.skip import doc_options, module_name
from tests.conftest import inproc

REPO = Path(__file__).resolve().parents[2]


def cand(skip, acc, **latency):
    return Candidate("static_" + skip, tuple(int(c) for c in skip), None, acc, acc, 1.0, latency)


def test_fronts_follow_this_machines_latencies():
    cands = [
        cand("111", 0.95, iree=1.0, onnxruntime=1.0),
        cand("110", 0.94, iree=0.8, onnxruntime=1.2),  # faster than full on IREE here, slower on onnxruntime
        cand("100", 0.90, iree=0.5, onnxruntime=0.5),
        cand("000", 0.70, iree=0.6),  # slower than 100 and less accurate on IREE: dominated there
    ]
    fronts = draw_fronts(cands)
    assert fronts["iree"] == ["static_111", "static_110", "static_100"]
    assert fronts["onnxruntime"] == ["static_111", "static_100"]  # full first, then slowest to fastest


@pytest.fixture(scope="module")
def profiled(bundle, tmp_path_factory):
    copy = tmp_path_factory.mktemp("profiled") / "bundle"
    shutil.copytree(bundle, copy)
    res = inproc("profile", copy, "--repeats", "5")
    assert res.returncode == 0, res.stderr
    return copy, Path(res.stdout.strip().splitlines()[-1].split()[1])


def test_profile_round_trip_and_its_fronts_run(profiled):
    copy, path = profiled
    assert path == copy / "profiles" / f"{machine()['key']}.json"
    m = load_manifest(copy)
    p = load_profile(path, m)
    assert p.bundle_digest == m.digest and {"iree", "onnxruntime"} <= set(p.fronts)
    iree = [c for c in p.candidates if "iree" in c.latency_s]
    assert len(iree) == len(m.iree.functions) - 1  # every candidate the module holds, not only the front's
    ort = [c for c in p.candidates if "onnxruntime" in c.latency_s]  # each has a graph over the shared weights
    assert len(ort) == len(p.candidates) == len(iree)
    for backend in ("iree", "onnxruntime"):
        ex = open_executor(copy, backend)
        assert [c.module for c in ex.configs] == list(p.fronts[backend])
        assert ex.manifest.extra["profile"]["machine"] == machine()["key"]
        assert [c.module for c in open_executor(copy, backend, profile="none").configs] == [
            m.configs[i].module for i in m.front(backend)
        ]
    res = inproc("inspect", copy)
    assert res.returncode == 0 and f"fronts measured on this machine: {path}" in res.stdout


def rewrite(path: Path, dest: Path, edit) -> Path:
    """``path``'s profile with ``edit`` applied to its Profile, the digest recomputed (a well-formed profile)."""
    p = Profile.from_dict(json.loads(path.read_text()))
    dest.write_text(json.dumps(edit(p).to_dict()))
    return dest


def test_a_profile_whose_latencies_change_the_front(profiled, tmp_path):
    """The all-skip config on the IREE front where the profile measured it fastest, off it where slowest (as on a
    board where the smallest config is the slowest). Both set here: on the tiny model the last skipped block saves
    ~1 us, within the noise of a 5-repeat measurement, so the measured front may or may not hold it."""
    copy, path = profiled
    m = load_manifest(copy)
    all_skip = "static_" + "0" * m.num_gates

    def all_skip_at(seconds):
        def edit(p):
            cands = tuple(
                dataclasses.replace(c, latency_s={**c.latency_s, "iree": seconds}) if c.n_skipped == len(c.skip) else c
                for c in p.candidates
            )
            fronts = {k: tuple(v) for k, v in draw_fronts(cands).items()}
            return dataclasses.replace(p, candidates=cands, fronts=fronts)

        return edit

    fast = rewrite(path, tmp_path / "fast.json", all_skip_at(1e-9))
    assert all_skip in [c.module for c in open_executor(copy, "iree", profile=str(fast)).configs]
    slow = rewrite(path, tmp_path / "board.json", all_skip_at(1.0))
    assert all_skip not in [c.module for c in open_executor(copy, "iree", profile=str(slow)).configs]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda p: dataclasses.replace(p, bundle_digest="sha256:" + "0" * 64), "measured on another bundle"),
        (
            lambda p: dataclasses.replace(p, machine={**p.machine, "key": "armv7l-odroid", "cpu": "Cortex-A15"}),
            "measured on another machine (Cortex-A15",
        ),
    ],
)
def test_another_bundles_or_machines_profile_is_refused_in_one_line(profiled, tmp_path, edit, message):
    copy, path = profiled
    f = rewrite(path, tmp_path / "other.json", edit)
    for cmd in (["inspect", copy], ["bench", copy, "--count", "5"]):
        res = inproc(*cmd, "--profile", f)
        assert res.returncode == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_an_edited_profile_is_refused_like_a_tampered_bundle(profiled, tmp_path):
    copy, path = profiled
    doc = json.loads(path.read_text())
    doc["candidates"][0]["latency_s"]["iree"] = 1e-9  # a faster-looking full network, digest left as it was
    f = tmp_path / "edited.json"
    f.write_text(json.dumps(doc))
    res = inproc("inspect", copy, "--profile", f)
    assert res.returncode == 2 and "does not match its digest" in res.stderr
    from tests.conftest import cli

    res = cli("serve", copy, "--port", "0", "--profile", f, timeout=120)
    assert res.returncode == 2 and "does not match its digest" in res.stderr and "Traceback" not in res.stderr


def test_a_profile_made_under_qemu_aarch64(profiled, tmp_path):
    """The mechanics on an aarch64 runtime-only install (latencies under emulation mean nothing): both engines
    (the aarch64 IREE module and onnxruntime's aarch64 wheel), a profile of an aarch64 machine, which this x86 host
    then refuses."""
    from edgeskip.export import emulate

    why = emulate.python_missing() or emulate.missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the aarch64 profile: {why}")
        pytest.skip(why)
    copy, _ = profiled
    argv, env = emulate.python_command(extra_path=[REPO])
    out = tmp_path / "aarch64.json"
    res = subprocess.run(
        [*argv, "-m", "edgeskip", "profile", str(copy), "--repeats", "3", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads(out.read_text())
    assert doc["machine"]["arch"] == "aarch64" and set(doc["fronts"]) == {"iree", "onnxruntime"}
    assert doc["engines"]["iree"].startswith("iree-base-runtime") and doc["engines"]["onnxruntime"]
    res = inproc("inspect", copy, "--profile", out)
    assert res.returncode == 2 and "measured on another machine" in res.stderr


def test_a_signed_bundle_stays_verified_with_its_profiles(profiled, tmp_path):
    from tests.test_signing import keypair

    copy, _ = profiled
    signed = tmp_path / "signed"
    shutil.copytree(copy, signed, ignore=shutil.ignore_patterns("profiles"))
    key, pub = keypair(tmp_path, "k")
    assert inproc("sign", signed, "--key", key).returncode == 0
    assert inproc("profile", signed, "--repeats", "3", "--backend", "iree").returncode == 0  # after signing
    res = inproc("inspect", signed, "--verify-key", pub)
    assert res.returncode == 0 and "signature verified" in res.stdout and "measured on this machine" in res.stdout, (
        res.stderr
    )


def test_a_profile_with_energy_per_inference(profiled, tmp_path):
    copy, _ = profiled
    out = tmp_path / "energy.json"
    res = inproc(
        "profile", copy, "--repeats", "3", "--backend", "iree", "--power", "cmd:echo 2 W",
        "--energy-seconds", "0.1", "--out", out,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    doc = json.loads(out.read_text())
    assert doc["power"] == "command (echo 2 W)"
    for c in doc["candidates"]:
        if "iree" in c["latency_s"]:  # 2 W x about its latency, per inference
            assert 0.3 < c["energy_j"]["iree"] / (2.0 * c["latency_s"]["iree"]) < 3.0, c


def test_an_int8_bundles_onnxruntime_front_is_drawn_from_every_fractional_candidate(int8_bundle, tmp_path):
    """Issue #32: the bundle carries a graph for every config of its fractional design space, so the board's
    onnxruntime front chooses among all of them, not only among the compile host's front; its configs run."""
    import numpy as np

    copy = tmp_path / "bundle"
    shutil.copytree(int8_bundle, copy)
    res = inproc("profile", copy, "--repeats", "3", "--backend", "onnxruntime")
    assert res.returncode == 0, res.stderr
    m = load_manifest(copy)
    p = load_profile(copy / "profiles" / f"{machine()['key']}.json", m)
    frac = json.loads((copy / "fractional.json").read_text())
    timed = {c.module for c in p.candidates if "onnxruntime" in c.latency_s}
    assert {module_name(doc_options(r)) for r in frac["candidates"]} <= timed  # with the int8 rest too
    assert any(r["int8_rest"] for r in frac["candidates"])
    assert len(timed) > len(m.front("onnxruntime"))
    ex = open_executor(copy, "onnxruntime")
    assert [c.module for c in ex.configs] == list(p.fronts["onnxruntime"])
    x = np.zeros((1, *ex.input_shape), np.float32)
    assert all(ex.infer(x, config=k).shape == (1, 10) for k in range(len(ex.configs)))

"""The Odroid XU4's (armv7) IREE runtime built from source: its modules executed under qemu-arm."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edgeskip.backends.iree import SharedIreeExecutor
from edgeskip.errors import EdgeskipError
from edgeskip.export import armv7_runtime, emulate
from edgeskip.manifest import load_manifest
from tests.conftest import require_arm


def test_xu4_module_matches_the_host_on_real_images(bundle):
    """Static and gated functions of the XU4 module on 64 of the bundle's test images: the host's top-1 classes,
    scores within 1e-4, weights from the one archive all targets share."""
    require_arm("armv7")
    m = load_manifest(bundle)
    images = np.load(bundle / "eval" / "sample.npz")["images"][:64]
    weights = bundle / "iree" / "weights.irpa"
    xu4 = bundle / m.targets["odroid-xu4"].dir / "model.vmfb"
    config = m.configs[len(m.configs) // 2]
    host = SharedIreeExecutor(weights, [bundle / "iree" / "host" / "model.vmfb"], functions=["gated", config.module])
    skip = np.array([k % 2 for k in range(m.num_gates)], dtype=bool)
    for function, inputs, ref in (
        (config.module, [images], host.run(1, images)),
        ("gated", [images, skip], host.run(0, images, skip)),
    ):
        got = emulate.run_module(xu4, inputs, function=function, parameters=weights, arch="armv7")
        assert np.array_equal(got.argmax(1), ref.argmax(1)), function
        assert np.abs(got - ref).max() <= 1e-4 * max(1.0, float(np.abs(ref).max())), function


def test_a_module_of_another_target_is_one_line(bundle):
    require_arm("armv7")
    with pytest.raises(EdgeskipError, match="embedded-elf-arm_64, not arm_32: a module of another target"):
        emulate.run_module(
            bundle / "iree" / "aarch64" / "model.vmfb", [np.zeros((1, 1, 8, 8), np.float32)], arch="armv7"
        )


def test_a_missing_runtime_names_the_command_that_builds_it(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESKIP_CACHE", str(tmp_path))
    why = emulate.missing("armv7")
    assert why is not None and ("build-armv7" in why or "qemu-arm-static not found" in why)
    with pytest.raises(EdgeskipError, match="cannot run armv7 modules"):
        emulate.run_module(tmp_path / "m.vmfb", [np.zeros(1, np.float32)], arch="armv7")


def test_build_without_the_cross_compiler_is_one_line(tmp_path):
    """No arm-linux-gnueabihf-gcc on PATH: exit 2, one line naming it and the apt package."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("cc", "c++"):
        if shutil.which(tool):
            (bin_dir / tool).symlink_to(shutil.which(tool))
    env = {**os.environ, "PATH": str(bin_dir), "EDGESKIP_CACHE": str(tmp_path / "cache")}
    res = subprocess.run(
        [sys.executable, "-m", "edgeskip.export.emulate", "build-armv7"], capture_output=True, text=True, env=env
    )
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert "arm-linux-gnueabihf-gcc not found (apt-get install gcc-arm-linux-gnueabihf" in lines[0]


def test_a_tampered_source_snapshot_is_refused(tmp_path):
    why = armv7_runtime.missing_tools()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI must build the armv7 runtime: {why}")
        pytest.skip(why)
    meta = json.loads((armv7_runtime.SNAPSHOT / "SOURCES.json").read_text())
    (tmp_path / meta["archive"]).symlink_to(armv7_runtime.SNAPSHOT / meta["archive"])
    (tmp_path / "SOURCES.json").write_text(json.dumps({**meta, "sha256": "0" * 64}))
    with pytest.raises(EdgeskipError, match="does not match the SHA-256"):
        armv7_runtime.build(tmp_path, force=True, log=lambda _: None)


def test_a_module_of_another_iree_release_is_named_as_such():
    """iree-run-module's own words for a bytecode from a newer compiler (verifier.c), as one line with the fix."""
    text = (
        "iree/vm/bytecode/verifier.c:180: INVALID_ARGUMENT; bytecode version mismatch; runtime supports 17.0, "
        "module has 18.2; loading bytecode module at 'm.vmfb'; loading modules and dependencies; creating run context"
    )
    why = emulate.run_error("armv7", text)
    assert why.startswith("bytecode version mismatch; runtime supports 17.0, module has 18.2: the module comes from")
    assert "python -m edgeskip.export.emulate build-armv7" in why and "\n" not in why

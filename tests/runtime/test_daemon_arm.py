"""`edgeskip serve` itself executed on ARM: Debian's CPython under qemu-user with the runtime's packages only (no
torch, no compiler), serving the bundle's module for that CPU on 127.0.0.1. aarch64: PyPI's aarch64 wheels.
armv7 (the Odroid XU4): Debian's armhf numpy and Pillow, PyPI's armv7l aiohttp, and IREE's Python runtime built
here from source (IREE publishes none for armv7)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from daemon_process import Server

from edgeskip.export import emulate
from edgeskip.runtime.executor import open_executor

REPO = Path(__file__).resolve().parents[2]


TARGETS = {"aarch64": "aarch64", "armv7": "odroid-xu4"}


@pytest.fixture(scope="module", params=sorted(TARGETS))
def arm_daemon(request, bundle):
    arch = request.param
    why = emulate.python_missing(arch) or emulate.missing(arch)
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the daemon under qemu: {why}")
        pytest.skip(why)
    argv, env = emulate.python_command(extra_path=[REPO], arch=arch)
    s = Server(bundle, "--backend", "iree", "--delta-req", "0.05", python=argv, env=env, start_timeout=300)
    yield arch, s
    s.kill()


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def test_daemon_runs_the_arm_module_and_agrees_with_the_host(arm_daemon, bundle, digits_splits):
    arch, s = arm_daemon
    assert f"backend iree  target {TARGETS[arch]} " in s.banner, s.banner
    x = ((digits_splits.test.x[:1] - digits_splits.norm.mean[0]) / digits_splits.norm.std[0]).astype(np.float32)
    host = open_executor(bundle, backend="iree", target="host")
    # edgeskip's own API: top-5 scores of one real image
    status, doc = s.infer(x.tobytes())
    assert status == 200, doc
    ref = softmax(host.infer(x, config=doc["config"])[0])
    assert doc["top"][0]["index"] == int(ref.argmax())
    for t in doc["top"]:
        assert abs(t["score"] - ref[t["index"]]) <= 1e-4
    # KServe v2 with the real Triton client: logits of the ARM module vs the host's
    client = httpclient.InferenceServerClient(s.url.split("//", 1)[1], connection_timeout=60, network_timeout=60)
    try:
        inp = httpclient.InferInput("image", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        res = client.infer(Path(bundle).name, [inp], parameters={"config": 0})
        np.testing.assert_allclose(res.as_numpy("logits"), host.infer(x, config=0), atol=1e-4)
        assert res.as_numpy("logits").argmax() == ref.argmax() or doc["config"] != 0
    finally:
        client.close()
    status, raw, _ = s.call("/v1/status")
    assert status == 200 and json.loads(raw)["counts"]["processed"] == 2
    assert s.stop() == 0
    assert "Traceback" not in s.proc.stderr.read()

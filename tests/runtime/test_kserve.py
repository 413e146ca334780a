"""The Open Inference Protocol (KServe v2) on a real daemon, spoken by the real Triton HTTP client."""

import json
import struct
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient
from daemon_process import Server, SharedRegion
from daemon_process import digit_images as images
from tritonclient.utils import InferenceServerException

from edgeskip.runtime.executor import open_executor


@pytest.fixture(scope="module")
def served(bundle):
    s = Server(bundle, "--model-name", "digits")
    host = s.url.split("//", 1)[1]
    client = httpclient.InferenceServerClient(host, connection_timeout=30, network_timeout=30)
    yield s, client
    client.close()
    s.kill()


def request(s, path, body=None, headers=None):
    req = urllib.request.Request(s.url + path, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def test_health_and_metadata(served, bundle):
    s, client = served
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("digits")
    assert not client.is_model_ready("nope")
    meta = client.get_model_metadata("digits")
    assert meta["name"] == "digits" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert client.get_server_metadata()["extensions"] == [
        "binary_tensor_data",
        "classification",
        "model_configuration",
        "statistics",
        "model_repository",
        "system_shared_memory",
    ]
    assert request(s, "/v2/")[0] == 200
    with pytest.raises(InferenceServerException, match="unknown model 'nope'") as e:
        client.get_model_metadata("nope")
    assert e.value.status() == "404"
    status, raw, headers = request(s, "/v2/models/nope/infer", b"{}")
    assert status == 404 and "unknown model" in json.loads(raw)["error"]
    # the default model name is the bundle folder's
    s2 = Server(bundle)
    try:
        assert f"model {bundle.name} " in s2.banner
        assert request(s2, f"/v2/models/{bundle.name}/ready")[0] == 200
    finally:
        s2.kill()


@pytest.mark.parametrize("binary", [True, False])
def test_infer_matches_the_executor(served, bundle, digits_splits, binary):
    s, client = served
    x = images(digits_splits, 4)
    inp = httpclient.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outs = (
        [
            httpclient.InferRequestedOutput("logits", binary_data=binary),
        ]
        if not binary
        else None
    )  # no outputs named: the client asks for all of them in binary
    res = client.infer("digits", [inp], outputs=outs, request_id="r1")
    logits = res.as_numpy("logits")
    params = res.get_response()["parameters"]
    ref = open_executor(bundle, backend="iree").infer(x, config=params["config"])
    np.testing.assert_allclose(logits, ref, atol=1e-4)
    assert res.get_response()["id"] == "r1" and params["latency_s"] > 0


def test_classification_extension_and_pinned_configs(served, bundle, digits_splits):
    s, client = served
    x = images(digits_splits, 2)
    inp = httpclient.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    for binary in (True, False):
        res = client.infer("digits", [inp], outputs=[httpclient.InferRequestedOutput("logits", binary, class_count=3)])
        top = res.as_numpy("logits")
        assert top.shape == (2, 3)
        first = [t.decode() if isinstance(t, bytes) else t for t in top[:, 0]]
        assert all(f.split(":")[1] == f.split(":")[2] for f in first)  # digits: label == index
        scores = [float(t.split(":")[0]) for t in first]
        assert all(0 < v <= 1 for v in scores)
    ex = open_executor(bundle, backend="iree")
    last = len(ex.configs) - 1
    res = client.infer("digits", [inp], parameters={"config": last})
    assert res.get_response()["parameters"]["config"] == last
    np.testing.assert_allclose(res.as_numpy("logits"), ex.infer(x, config=last), atol=1e-4)
    skip = "101010"
    res = client.infer("digits", [inp], parameters={"skip": skip})
    np.testing.assert_allclose(res.as_numpy("logits"), ex.infer(x, skip=skip), atol=1e-4)
    assert res.get_response()["parameters"]["skipped_blocks"] == 3


@pytest.mark.parametrize(
    "doc, headers, fragment",
    [
        (b"{bad", {}, "bad JSON"),
        (json.dumps({"inputs": []}).encode(), {}, "exactly one input"),
        (
            json.dumps(
                {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0] * 64}]}
            ).encode(),
            {},
            "unknown input 'x'",
        ),
        (
            json.dumps(
                {"inputs": [{"name": "image", "datatype": "INT8", "shape": [1, 1, 8, 8], "data": [0] * 64}]}
            ).encode(),
            {},
            "must be FP32",
        ),
        (
            json.dumps(
                {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 8, 8], "data": [0] * 192}]}
            ).encode(),
            {},
            "must have shape [N, 1, 8, 8]",
        ),
        (
            json.dumps(
                {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0] * 10}]}
            ).encode(),
            {},
            "has 10 values",
        ),
        (
            json.dumps(
                {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1000, 1, 8, 8], "data": [0]}]}
            ).encode(),
            {},
            "batch size must be in 1..64",
        ),
        (
            json.dumps(
                {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": ["NaN"] * 64}]}
            ).encode(),
            {},
            "numbers only",
        ),
        (
            json.dumps(
                {
                    "inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0] * 64}],
                    "outputs": [{"name": "probs"}],
                }
            ).encode(),
            {},
            "unknown output 'probs'",
        ),
        (
            json.dumps(
                {
                    "inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0] * 64}],
                    "parameters": {"config": 99},
                }
            ).encode(),
            {},
            "config must be an integer",
        ),
        (
            json.dumps(
                {
                    "inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0] * 64}],
                    "parameters": {"skip": "12"},
                }
            ).encode(),
            {},
            "skip array",
        ),
        (
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": "image",
                            "datatype": "FP32",
                            "shape": [1, 1, 8, 8],
                            "parameters": {"binary_data_size": 256},
                        }
                    ]
                }
            ).encode()
            + b"\0" * 10,
            "header",
            "must be 256 bytes",
        ),
        (b"{}", {"Inference-Header-Content-Length": "999"}, "does not fit"),
        (
            json.dumps(
                {"id": 7, "inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0] * 64}]}
            ).encode(),
            {},
            "request id must be a string",
        ),
        (
            b'{"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": ['
            + b"9" * 5000
            + b"]}]}",
            {},
            "too many digits",
        ),
        (
            json.dumps(
                {
                    "inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0] * 64}],
                    "parameters": [1],
                }
            ).encode(),
            {},
            "request parameters must be an object",
        ),
        (
            json.dumps(
                {
                    "inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0] * 64}],
                    "outputs": [{"name": "logits", "parameters": 3}],
                }
            ).encode(),
            {},
            "output parameters must be an object",
        ),
    ],
)
def test_bad_requests_get_one_line_4xx(served, digits_splits, doc, headers, fragment):
    s, client = served
    if headers == "header":
        n = doc.index(b"}]}") + 3
        headers = {"Inference-Header-Content-Length": str(n)}
    status, raw, got = request(s, "/v2/models/digits/infer", doc, {"Content-Type": "application/json", **headers})
    err = json.loads(raw)["error"]
    assert status == 400 and fragment in err and "\n" not in err, err
    assert got["Content-Type"] == "application/json"  # exactly: KServe's client reads errors only then
    x = images(digits_splits, 1)
    inp = httpclient.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    assert client.infer("digits", [inp]).as_numpy("logits").shape == (1, 10)  # still serving


def test_busy_requests_are_dropped_with_503(served, digits_splits):
    s, _ = served
    x = images(digits_splits, 1)
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "FP32",
                    "shape": [1, 1, 8, 8],
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    body, hdr = head + x.tobytes(), {"Inference-Header-Content-Length": str(len(head))}
    codes, errors = [], []
    for _ in range(20):  # bounded: rounds of simultaneous requests until some arrive while busy
        barrier = threading.Barrier(16)

        def one(barrier=barrier):
            barrier.wait()
            status, raw, headers = request(s, "/v2/models/digits/infer", body, hdr)
            codes.append(status)
            if status == 503:
                errors.append(json.loads(raw)["error"])
            else:  # a binary response: JSON header, then the logits
                n = int(headers["Inference-Header-Content-Length"])
                assert json.loads(raw[:n])["outputs"][0]["parameters"]["binary_data_size"] == 40
                assert len(raw) == n + 40 and np.isfinite(struct.unpack("<10f", raw[n:])).all()

        threads = [threading.Thread(target=one) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if 503 in codes:
            break
    assert set(codes) <= {200, 503} and 503 in codes and 200 in codes
    assert all(e.startswith("dropped (busy): the executor was busy") for e in errors)


def test_triton_extensions_configuration_statistics_repository(served, digits_splits):
    s, client = served
    cfg = client.get_model_config("digits")
    assert cfg["name"] == "digits" and cfg["max_batch_size"] == 64
    assert cfg["input"] == [{"name": "image", "data_type": "TYPE_FP32", "format": "FORMAT_NCHW", "dims": [1, 8, 8]}]
    assert cfg["output"] == [{"name": "logits", "data_type": "TYPE_FP32", "dims": [10]}]
    assert client.get_model_repository_index() == [{"name": "digits", "version": "1", "state": "READY"}]
    before = client.get_inference_statistics("digits")["model_stats"][0]
    x = images(digits_splits, 3)
    inp = httpclient.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    client.infer("digits", [inp])
    after = client.get_inference_statistics("digits")["model_stats"][0]
    assert after == client.get_inference_statistics()["model_stats"][0]  # all models: the one
    assert after["inference_count"] - before["inference_count"] == 3
    assert after["execution_count"] - before["execution_count"] == 1
    st, st0 = after["inference_stats"], before["inference_stats"]
    for kind in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert st[kind]["count"] - st0[kind]["count"] == 1 and st[kind]["ns"] > st0[kind]["ns"], kind
    assert st["success"]["ns"] - st0["success"]["ns"] >= st["compute_infer"]["ns"] - st0["compute_infer"]["ns"]
    assert after["last_inference"] > 0
    with pytest.raises(InferenceServerException, match="serves the one bundle"):
        client.load_model("digits")
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.get_model_config("nope")


def test_protocol_conformance_errors_ids_and_outputs(served, bundle, digits_splits):
    s, client = served
    for path, body, code in (("/v2/nothing", None, 404), ("/nope", None, 404), ("/v2/models/digits/infer", None, 405)):
        status, raw, headers = request(s, path, body)
        assert status == code and headers["Content-Type"] == "application/json", (path, headers)
        assert json.loads(raw)["error"]
    assert "POST" in request(s, "/v2/models/digits/infer")[2]["Allow"]
    x = images(digits_splits, 2)
    doc = {
        "id": "a-1",
        "inputs": [{"name": "image", "datatype": "FP32", "shape": [2, 1, 8, 8], "data": x.ravel().tolist()}],
        "outputs": [{"name": "logits"}, {"name": "logits", "parameters": {"classification": 2}}],
        "parameters": {"skip": "100001"},  # off the front: no config ran, so no "config" parameter
    }
    status, raw, headers = request(s, "/v2/models/digits/infer", json.dumps(doc).encode())
    res = json.loads(raw)
    assert status == 200 and headers["Content-Type"] == "application/json" and res["id"] == "a-1"
    assert [(o["name"], o["datatype"], o["shape"]) for o in res["outputs"]] == [
        ("logits", "FP32", [2, 10]),
        ("logits", "BYTES", [2, 2]),
    ]
    ex = open_executor(bundle, backend="iree")
    assert ex.manifest.by_skip.get(tuple(c == "1" for c in "100001")) is None
    assert "config" not in res["parameters"] and res["parameters"]["skipped_blocks"] == 4
    assert all(isinstance(v, (str, int, float, bool)) for v in res["parameters"].values())
    np.testing.assert_allclose(
        np.array(res["outputs"][0]["data"]).reshape(2, 10), ex.infer(x, skip="100001"), atol=1e-4
    )


def test_system_shared_memory_inputs_and_outputs(served, bundle, digits_splits):
    s, client = served
    x = images(digits_splits, 2)
    with SharedRegion("http", x, x.nbytes + 80) as region:
        key = region.key
        client.register_system_shared_memory("io", key, x.nbytes + 80)
        assert client.get_system_shared_memory_status() == [
            {"name": "io", "key": key, "offset": 0, "byte_size": x.nbytes + 80}
        ]
        inp = httpclient.InferInput("image", list(x.shape), "FP32")
        inp.set_shared_memory("io", x.nbytes)
        out = httpclient.InferRequestedOutput("logits", binary_data=True)
        out.set_shared_memory("io", 80, offset=x.nbytes)
        res = client.infer("digits", [inp], outputs=[out])
        entry = res.get_output("logits")
        assert entry["parameters"] == {"shared_memory_region": "io", "shared_memory_byte_size": 80}
        got = region.read(np.float32, [2, 10], x.nbytes)
        config = res.get_response()["parameters"]["config"]
        np.testing.assert_allclose(got, open_executor(bundle, backend="iree").infer(x, config=config), atol=1e-4)
        # bad regions: one-line 400s, and the daemon keeps serving
        for name, size, offset, fragment in (
            ("nope", x.nbytes, 0, "region 'nope' is not registered"),
            ("io", x.nbytes, 100, "is outside region 'io'"),
            ("io", 16, 0, f"shared_memory_byte_size must be {x.nbytes}"),
        ):
            bad = httpclient.InferInput("image", list(x.shape), "FP32")
            bad.set_shared_memory(name, size, offset=offset)
            with pytest.raises(InferenceServerException, match=fragment) as e:
                client.infer("digits", [bad])
            assert e.value.status() == "400"
        with pytest.raises(InferenceServerException, match="already registered"):
            client.register_system_shared_memory("io", key, 8)
        with pytest.raises(InferenceServerException, match="cannot open shared-memory key"):
            client.register_system_shared_memory("other", "/es_no_such_key", 8)
        with pytest.raises(InferenceServerException, match="exceeds key"):
            client.register_system_shared_memory("big", key, 1 << 20)
        client.unregister_system_shared_memory("io")
        assert client.get_system_shared_memory_status() == []
        with pytest.raises(InferenceServerException, match="not registered"):
            client.infer("digits", [inp])
        assert client.is_server_live()

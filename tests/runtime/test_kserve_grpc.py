"""KServe v2 over gRPC on a real daemon (``serve --grpc-port``), spoken by the real Triton gRPC client."""

import json
import threading

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from daemon_process import Server, SharedRegion
from daemon_process import digit_images as images
from tritonclient.utils import InferenceServerException

from edgeskip.runtime.executor import open_executor


@pytest.fixture(scope="module")
def served(bundle):
    s = Server(bundle, "--model-name", "digits", "--grpc-port", "0", "--queue-depth", "2")
    target = s.banner.split("grpc ", 1)[1].split()[0]
    client = grpcclient.InferenceServerClient(target)
    yield s, client
    client.close()
    s.kill()


def tensor(x):
    inp = grpcclient.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def test_grpc_metadata_config_statistics_and_index(served):
    s, client = served
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("digits")
    assert not client.is_model_ready("nope")
    assert "statistics" in client.get_server_metadata(as_json=True)["extensions"]
    meta = client.get_model_metadata("digits", as_json=True)
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": ["-1", "1", "8", "8"]}]
    cfg = client.get_model_config("digits", as_json=True)["config"]
    assert cfg["max_batch_size"] == 64 and cfg["input"][0]["dims"] == ["1", "8", "8"]
    assert cfg["input"][0]["data_type"] == "TYPE_FP32" and cfg["output"][0]["dims"] == ["10"]
    index = client.get_model_repository_index(as_json=True)["models"]
    assert index == [{"name": "digits", "version": "1", "state": "READY"}]
    with pytest.raises(InferenceServerException, match="unknown model 'nope'") as e:
        client.get_model_metadata("nope")
    assert e.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException, match="serves the one bundle"):
        client.load_model("digits")


def test_grpc_infer_matches_the_executor_and_counts_like_http(served, bundle, digits_splits):
    s, client = served
    x = images(digits_splits, 4)
    before = client.get_inference_statistics("digits", as_json=True)["model_stats"][0]
    res = client.infer(
        "digits",
        [tensor(x)],
        outputs=[grpcclient.InferRequestedOutput("logits"), grpcclient.InferRequestedOutput("logits", class_count=3)],
        request_id="g1",
    )
    resp = res.get_response(as_json=True)
    params = {k: next(iter(v.values())) for k, v in resp["parameters"].items()}
    ex = open_executor(bundle, backend="iree")
    np.testing.assert_allclose(res.as_numpy("logits"), ex.infer(x, config=int(params["config"])), atol=1e-4)
    assert resp["id"] == "g1" and [o["datatype"] for o in resp["outputs"]] == ["FP32", "BYTES"]
    after = client.get_inference_statistics("digits", as_json=True)["model_stats"][0]
    assert int(after["inference_count"]) - int(before.get("inference_count", 0)) == 4
    # pins: a config, and a skip array off the front (no config parameter comes back)
    last = len(ex.configs) - 1
    res = client.infer("digits", [tensor(x)], parameters={"config": last})
    np.testing.assert_allclose(res.as_numpy("logits"), ex.infer(x, config=last), atol=1e-4)
    res = client.infer("digits", [tensor(x)], parameters={"skip": "100001"})
    resp = res.get_response(as_json=True)
    assert "config" not in resp["parameters"] and resp["parameters"]["skipped_blocks"]["double_param"] == 4
    np.testing.assert_allclose(res.as_numpy("logits"), ex.infer(x, skip="100001"), atol=1e-4)
    # the same service: the HTTP API's counters moved too
    status = json.loads(s.call("/v1/status")[1])
    assert status["counts"]["processed"] >= 3


@pytest.mark.parametrize(
    "make, code, fragment",
    [
        (lambda x: [grpcclient.InferInput("image", [1, 1, 8, 8], "INT32")], "INVALID_ARGUMENT", "must be FP32"),
        (lambda x: [grpcclient.InferInput("x", [1, 1, 8, 8], "FP32")], "INVALID_ARGUMENT", "unknown input 'x'"),
        (lambda x: [grpcclient.InferInput("image", [1, 3, 8, 8], "FP32")], "INVALID_ARGUMENT", "must have shape"),
        (lambda x: [tensor(np.full((1, 1, 8, 8), np.nan, np.float32))], "INVALID_ARGUMENT", "NaN"),
    ],
)
def test_grpc_bad_requests_get_the_protocol_status(served, digits_splits, make, code, fragment):
    s, client = served
    inputs = make(None)
    for inp in inputs:
        if inp.datatype() == "INT32":
            inp.set_data_from_numpy(np.zeros((1, 1, 8, 8), np.int32))
        elif inp.name() == "x" or inp.shape() == [1, 3, 8, 8]:
            inp.set_data_from_numpy(np.zeros(inp.shape(), np.float32))
    with pytest.raises(InferenceServerException, match=fragment) as e:
        client.infer("digits", inputs)
    assert e.value.status() == f"StatusCode.{code}" and "\n" not in e.value.message()
    with pytest.raises(InferenceServerException, match="unknown model") as e:
        client.infer("nope", [tensor(images(digits_splits, 1))])
    assert e.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException, match="config must be an integer"):
        client.infer("digits", [tensor(images(digits_splits, 1))], parameters={"config": 99})
    assert client.infer("digits", [tensor(images(digits_splits, 1))]).as_numpy("logits").shape == (1, 10)


def test_grpc_drops_are_unavailable_with_the_reason(served, digits_splits):
    s, _ = served
    target = s.banner.split("grpc ", 1)[1].split()[0]
    x = images(digits_splits, 64)
    codes, messages = [], []
    for _ in range(20):  # bounded: rounds of simultaneous requests until the queue (depth 2) overflows
        barrier = threading.Barrier(12)

        def one(barrier=barrier):
            c = grpcclient.InferenceServerClient(target)
            barrier.wait()
            try:
                c.infer("digits", [tensor(x)])
                codes.append("OK")
            except InferenceServerException as e:
                codes.append(e.status())
                messages.append(e.message())
            finally:
                c.close()

        threads = [threading.Thread(target=one) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if "StatusCode.UNAVAILABLE" in codes:
            break
    assert set(codes) <= {"OK", "StatusCode.UNAVAILABLE"} and "OK" in codes and "StatusCode.UNAVAILABLE" in codes
    assert all(m.startswith("dropped (queue_full)") for m in messages), messages[:3]


def test_grpc_system_shared_memory(served, bundle, digits_splits):
    s, client = served
    x = images(digits_splits, 3)
    with SharedRegion("grpc", x, x.nbytes + 120) as region:
        key = region.key
        client.register_system_shared_memory("gio", key, x.nbytes + 120)
        status = client.get_system_shared_memory_status(as_json=True)["regions"]["gio"]
        assert status["key"] == key and int(status["byte_size"]) == x.nbytes + 120
        inp = grpcclient.InferInput("image", list(x.shape), "FP32")
        inp.set_shared_memory("gio", x.nbytes)
        out = grpcclient.InferRequestedOutput("logits")
        out.set_shared_memory("gio", 120, offset=x.nbytes)
        res = client.infer("digits", [inp], outputs=[out])
        config = res.get_response(as_json=True)["parameters"]["config"]["int64_param"]
        got = region.read(np.float32, [3, 10], x.nbytes)
        np.testing.assert_allclose(got, open_executor(bundle, backend="iree").infer(x, config=int(config)), atol=1e-4)
        bad = grpcclient.InferInput("image", list(x.shape), "FP32")
        bad.set_shared_memory("gio", x.nbytes, offset=200)
        with pytest.raises(InferenceServerException, match="is outside region 'gio'") as e:
            client.infer("digits", [bad])
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
        client.unregister_system_shared_memory("gio")
        with pytest.raises(InferenceServerException, match="not registered"):
            client.infer("digits", [inp])
        with pytest.raises(InferenceServerException, match="cannot open shared-memory key"):
            client.register_system_shared_memory("x", "/es_no_such_key", 8)
        assert client.is_server_live()

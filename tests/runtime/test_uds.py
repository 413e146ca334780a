"""Local fast paths: HTTP and gRPC on Unix-domain sockets (``serve --uds`` / ``--grpc-uds``) on a real daemon."""

import json
import os
import socket
import tempfile

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from daemon_process import Server, UnixHTTPConnection, serve_once
from daemon_process import digit_images as images


def post(path, route, body, headers):
    c = UnixHTTPConnection(path)
    try:
        c.request("POST", route, body=body, headers=headers)
        r = c.getresponse()
        return r.status, r.read(), dict(r.getheaders())
    finally:
        c.close()


@pytest.fixture()
def short_dir():
    d = tempfile.mkdtemp(prefix="es", dir="/tmp")  # socket paths must stay under ~100 bytes
    yield d
    for name in os.listdir(d):
        os.unlink(os.path.join(d, name))
    os.rmdir(d)


def test_http_and_grpc_over_unix_sockets_replace_a_stale_socket(bundle, digits_splits, short_dir):
    http_path, grpc_path = os.path.join(short_dir, "h.sock"), os.path.join(short_dir, "g.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(http_path)  # a dead daemon's socket: the file exists, nothing accepts on it
    stale.close()
    s = Server(bundle, "--model-name", "digits", "--uds", http_path, "--grpc-uds", grpc_path)
    try:
        assert f"uds {http_path}" in s.banner and f"grpc-uds {grpc_path}" in s.banner
        x = images(digits_splits, 2)
        doc = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [2, 1, 8, 8], "data": x.ravel().tolist()}]}
        status, raw, headers = post(http_path, "/v2/models/digits/infer", json.dumps(doc).encode(), {})
        assert status == 200 and headers["Content-Type"] == "application/json"
        answer = json.loads(raw)
        over_uds, uds_config = np.array(answer["outputs"][0]["data"]).reshape(2, 10), answer["parameters"]["config"]
        status, raw, _ = post(http_path, "/v1/infer", x[:1].tobytes(), {"Content-Type": "application/octet-stream"})
        assert status == 200 and json.loads(raw)["top"]
        client = grpcclient.InferenceServerClient(f"unix:{grpc_path}")
        inp = grpcclient.InferInput("image", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        res = client.infer("digits", [inp])
        config = res.get_response(as_json=True)["parameters"]["config"]["int64_param"]
        client.close()
        from edgeskip.runtime.executor import open_executor

        ex = open_executor(bundle, backend="iree")
        np.testing.assert_allclose(res.as_numpy("logits"), ex.infer(x, config=int(config)), atol=1e-4)
        np.testing.assert_allclose(over_uds, ex.infer(x, config=uds_config), atol=1e-4)
        # a second daemon may not take a live socket
        code, err = serve_once(bundle, "--uds", http_path)
        assert code == 2 and len(err) == 1 and "is in use by a running server" in err[0], err
        assert s.proc.poll() is None
    finally:
        assert s.stop() == 0
    assert not os.path.exists(http_path) and not os.path.exists(grpc_path)  # removed on shutdown


def test_uds_on_a_path_that_is_not_a_socket_is_refused(bundle, short_dir):
    path = os.path.join(short_dir, "file")
    with open(path, "w") as f:
        f.write("keep me")
    code, err = serve_once(bundle, "--uds", path)
    assert code == 2 and len(err) == 1 and "exists and is not a socket" in err[0], err
    assert open(path).read() == "keep me"

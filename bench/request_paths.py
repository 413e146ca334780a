"""The daemon's own cost per request on each path a local client can take (issue #31, item 5).

One ``edgeskip serve BUNDLE --grpc-port 0 --uds ... --grpc-uds ...`` daemon; one request at a time, the same
image, a pinned config (the fastest: the cost around the model does not depend on it); the paths round-robin
in one run so drift hits them alike:

- http-tcp / http-uds: KServe v2 with the binary tensor extension over a kept-alive connection (http.client);
- v1-tcp: ``/v1/infer`` with a raw float32 body;
- grpc-tcp / grpc-uds: a bare gRPC stub with a pre-built ``ModelInferRequest`` (no tritonclient wrapper);
- http-uds-shm / grpc-uds-shm: the same over the Unix socket, the image read from and the logits written to a
  registered system shared-memory region (Triton's extension): no tensor travels on the socket;
- lean-tcp / lean-uds / lean-uds-shm: the same KServe requests to the lean listener (``--lean-port``,
  ``--lean-uds``: each connection answered on its own thread, no event-loop hand-offs);
- lean-uds-raw / lean-uds-shm-raw: the lean listener's Unix-socket paths with a minimal client instead of
  http.client: one pre-built request per send, the answer read by its Content-Length, only its JSON parsed. What a
  camera process in C would pay; the difference to lean-uds(-shm) is http.client's own cost;
- in-process: ``edgeskip.runtime.open(...).infer`` (the same service, no transport).

Own cost = round trip minus the inference time the daemon reports for that request (``latency_s``); medians.

    python bench/request_paths.py bench/work/r20 --requests 1000 --out bench/results
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeskip.manifest import load_manifest
from edgeskip.utils.atomic import write_json, write_with


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=30)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.unix_path)


def kserve_body(x: np.ndarray, config: int) -> tuple[bytes, dict]:
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"config": config, "binary_data_output": False},
        }
    ).encode()
    return head + x.tobytes(), {
        "Inference-Header-Content-Length": str(len(head)),
        "Content-Type": "application/octet-stream",
    }


def shm_body(x: np.ndarray, config: int, region: str, out_size: int) -> tuple[bytes, dict]:
    doc = {
        "inputs": [
            {
                "name": "image",
                "datatype": "FP32",
                "shape": list(x.shape),
                "parameters": {"shared_memory_region": region, "shared_memory_byte_size": x.nbytes},
            }
        ],
        "outputs": [
            {
                "name": "logits",
                "parameters": {
                    "shared_memory_region": region,
                    "shared_memory_byte_size": out_size,
                    "shared_memory_offset": x.nbytes,
                },
            }
        ],
        "parameters": {"config": config},
    }
    return json.dumps(doc).encode(), {"Content-Type": "application/json"}


def grpc_shm_runner(target: str, name: str, x: np.ndarray, config: int, region: str, out_size: int):
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(target))
    req = pb.ModelInferRequest(model_name=name)
    inp = req.inputs.add(name="image", datatype="FP32", shape=list(x.shape))
    inp.parameters["shared_memory_region"].string_param = region
    inp.parameters["shared_memory_byte_size"].int64_param = x.nbytes
    out = req.outputs.add(name="logits")
    out.parameters["shared_memory_region"].string_param = region
    out.parameters["shared_memory_byte_size"].int64_param = out_size
    out.parameters["shared_memory_offset"].int64_param = x.nbytes
    req.parameters["config"].int64_param = config

    def run() -> float:
        return stub.ModelInfer(req).parameters["latency_s"].double_param

    return run


def http_runner(conn: http.client.HTTPConnection, path: str, body: bytes, headers: dict, v1: bool):
    def run() -> float:
        conn.request("POST", path, body=body, headers=headers)
        r = conn.getresponse()
        doc = json.loads(r.read())
        assert r.status == 200, doc
        return doc["latency_s"] if v1 else doc["parameters"]["latency_s"]

    return run


def raw_runner(path: str, target: str, body: bytes, headers: dict):
    """A minimal HTTP/1.1 client over a Unix socket: the request is built once, the answer is read by its
    Content-Length and only its JSON body parsed."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = f"POST {target} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode()
    request += body

    def run() -> float:
        sock.sendall(request)
        data = sock.recv(65536)
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        end = data.index(b"\r\n\r\n") + 4
        at = data.find(b"Content-Length: ", 0, end)
        n = int(data[at + 16 : data.index(b"\r\n", at)])
        while len(data) < end + n:
            data += sock.recv(65536)
        assert data.startswith(b"HTTP/1.1 200"), data[:200]
        return json.loads(data[end : end + n])["parameters"]["latency_s"]

    return run


def grpc_runner(target: str, name: str, x: np.ndarray, config: int):
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(target))
    req = pb.ModelInferRequest(model_name=name)
    req.inputs.add(name="image", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.tobytes())
    req.parameters["config"].int64_param = config

    def run() -> float:
        return stub.ModelInfer(req).parameters["latency_s"].double_param

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--requests", type=int, default=1000, help="requests per path")
    ap.add_argument("--backend", default="iree")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--inline-max-ms", type=float, default=0.0, help="serve's --inline-max-ms (0: off)")
    ap.add_argument("--event-loop", default="asyncio", help="serve's --event-loop (asyncio, uvloop)")
    ap.add_argument("--paths", help="comma-separated paths to measure (default: all)")
    a = ap.parse_args()
    man = load_manifest(a.bundle)
    x = np.random.default_rng(0).standard_normal((1, *man.input.chw)).astype(np.float32)
    config = len(man.for_backend(a.backend).configs) - 1
    tmp = tempfile.mkdtemp(prefix="rp", dir="/tmp")
    uds, guds, luds = os.path.join(tmp, "h.sock"), os.path.join(tmp, "g.sock"), os.path.join(tmp, "l.sock")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgeskip",
            "serve",
            str(a.bundle),
            "--port",
            "0",
            "--grpc-port",
            "0",
            "--uds",
            uds,
            "--grpc-uds",
            guds,
            "--lean-uds",
            luds,
            "--lean-port",
            "0",
            "--backend",
            a.backend,
            "--model-name",
            "m",
            "--queue-depth",
            "4",
            "--inline-max-ms",
            str(a.inline_max_ms),
            "--event-loop",
            a.event_loop,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    banner = proc.stdout.readline()
    try:
        port = int(banner.split()[2].rsplit(":", 1)[1])
        gport = banner.split("grpc ", 1)[1].split()[0]
        lport = int(banner.split("lean http://", 1)[1].split()[0].rsplit(":", 1)[1])
        body, headers = kserve_body(x, config)
        import tritonclient.utils.shared_memory as shm

        import edgeskip.runtime as es

        out_size = 4 * len(man.class_names)
        key = f"/es_paths_{os.getpid()}"
        handle = shm.create_shared_memory_region("paths", key, x.nbytes + out_size)
        shm.set_shared_memory_region(handle, [x])
        reg = UnixHTTPConnection(uds)
        reg.request(
            "POST",
            "/v2/systemsharedmemory/region/io/register",
            body=json.dumps({"key": key, "offset": 0, "byte_size": x.nbytes + out_size}).encode(),
        )
        assert reg.getresponse().status == 200
        shm_doc, shm_headers = shm_body(x, config, "io", out_size)

        rt = es.open(a.bundle, backend=a.backend, queue_depth=4)
        runners = {
            "http-tcp": http_runner(
                http.client.HTTPConnection("127.0.0.1", port, timeout=30), "/v2/models/m/infer", body, headers, False
            ),
            "http-uds": http_runner(UnixHTTPConnection(uds), "/v2/models/m/infer", body, headers, False),
            "v1-tcp": http_runner(
                http.client.HTTPConnection("127.0.0.1", port, timeout=30),
                f"/v1/infer?config={config}",
                x.tobytes(),
                {"Content-Type": "application/octet-stream"},
                True,
            ),
            "grpc-tcp": grpc_runner(gport, "m", x, config),
            "grpc-uds": grpc_runner(f"unix:{guds}", "m", x, config),
            "http-uds-shm": http_runner(UnixHTTPConnection(uds), "/v2/models/m/infer", shm_doc, shm_headers, False),
            "grpc-uds-shm": grpc_shm_runner(f"unix:{guds}", "m", x, config, "io", out_size),
            "lean-tcp": http_runner(
                http.client.HTTPConnection("127.0.0.1", lport, timeout=30), "/v2/models/m/infer", body, headers, False
            ),
            "lean-uds": http_runner(UnixHTTPConnection(luds), "/v2/models/m/infer", body, headers, False),
            "lean-uds-shm": http_runner(UnixHTTPConnection(luds), "/v2/models/m/infer", shm_doc, shm_headers, False),
            "lean-uds-raw": raw_runner(luds, "/v2/models/m/infer", body, headers),
            "lean-uds-shm-raw": raw_runner(luds, "/v2/models/m/infer", shm_doc, shm_headers),
            "in-process": lambda: rt.infer(x, config=config).latency_s,
        }
        if a.paths:
            unknown = set(a.paths.split(",")) - set(runners)
            if unknown:
                raise SystemExit(f"unknown paths {sorted(unknown)}; known: {', '.join(runners)}")
            runners = {n: r for n, r in runners.items() if n in a.paths.split(",")}
        rounds: dict[str, list[tuple[float, float]]] = {n: [] for n in runners}
        for r in range(a.requests + 20):
            for n, run in runners.items():
                t0 = time.perf_counter()
                inference = run()
                total = time.perf_counter() - t0
                if r >= 20:
                    rounds[n].append((total, inference))
        rt.close()
        got = shm.get_contents_as_numpy(handle, np.float32, [1, len(man.class_names)], offset=x.nbytes)
        assert np.isfinite(got).all() and np.abs(got).sum() > 0  # the daemon wrote the logits there
        shm.destroy_shared_memory_region(handle)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    res: dict = {"paths": {}, "config": config, "backend": a.backend, "requests": a.requests}
    for n, pairs in rounds.items():
        own = [t - i for t, i in pairs]
        res["paths"][n] = {
            "round_trip_s": statistics.median(t for t, _ in pairs),
            "inference_s": statistics.median(i for _, i in pairs),
            "own_cost_s": statistics.median(own),
            "own_cost_p90_s": float(np.percentile(own, 90)),
        }
        p = res["paths"][n]
        print(
            f"{n:16s} round trip {p['round_trip_s'] * 1e3:.3f} ms  inference {p['inference_s'] * 1e3:.3f} ms  "
            f"own cost {p['own_cost_s'] * 1e6:.0f} us (p90 {p['own_cost_p90_s'] * 1e6:.0f})"
        )
    res["command"] = "python " + " ".join(shlex.quote(s) for s in sys.argv)
    a.out.mkdir(parents=True, exist_ok=True)
    write_json(a.out / "request_paths.json", res)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = list(res["paths"])
    ax.bar(names, [res["paths"][n]["own_cost_s"] * 1e6 for n in names], color="tab:blue", label="median")
    ax.scatter(
        names, [res["paths"][n]["own_cost_p90_s"] * 1e6 for n in names], color="k", marker="_", s=300, label="p90"
    )
    ax.set_ylabel("own cost per request (µs)\n= round trip - inference")
    ax.set_title(f"{a.bundle.name}, backend {a.backend}, one request at a time")
    ax.legend()
    fig.tight_layout()
    write_with(a.out / "request_paths.png", lambda p: fig.savefig(p, format="png", dpi=120))


if __name__ == "__main__":
    main()

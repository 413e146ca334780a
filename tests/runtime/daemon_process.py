"""A real `edgeskip serve` process on 127.0.0.1 (port 0: the daemon picks a free one and prints it)."""

import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix-domain socket (``serve --uds`` / ``--lean-uds``)."""

    def __init__(self, path):
        super().__init__("localhost", timeout=30)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.unix_path)


class Server:
    """``python -m edgeskip serve BUNDLE --port 0 ARGS``; ``python`` may be an emulated interpreter's argv."""

    def __init__(self, bundle, *args, python=(sys.executable,), env=None, start_timeout=60):
        self.proc = subprocess.Popen(
            [*python, "-m", "edgeskip", "serve", str(bundle), "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**(env or os.environ), "OMP_NUM_THREADS": "1"},
        )
        ready, _, _ = select.select([self.proc.stdout], [], [], start_timeout)
        line = self.proc.stdout.readline() if ready else ""
        if "listening on http://127.0.0.1:" not in line:
            self.kill()
            raise AssertionError(f"daemon did not start within {start_timeout} s: {line}{self.proc.stderr.read()}")
        self.url = line.split()[2]
        self.banner = line

    def call(self, path, body=None, ctype=None):
        req = urllib.request.Request(self.url + path, data=body, headers={"Content-Type": ctype} if ctype else {})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read(), r.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            return e.code, e.read(), e.headers.get("Content-Type", "")

    def infer(self, body, ctype="application/octet-stream"):
        status, raw, _ = self.call("/v1/infer", body, ctype)
        return status, json.loads(raw)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def digit_images(digits_splits, n):
    """The first ``n`` digits test images, normalised as the bundle expects: float32 [n, 1, 8, 8]."""
    import numpy as np

    x = (digits_splits.test.x[:n] - digits_splits.norm.mean[0]) / digits_splits.norm.std[0]
    return x.astype(np.float32)


def serve_once(bundle, *args, timeout=120):
    """``edgeskip serve BUNDLE --port 0 ARGS`` expected to stop at start-up: (exit status, stderr lines)."""
    res = subprocess.run(
        [sys.executable, "-m", "edgeskip", "serve", str(bundle), "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return res.returncode, res.stderr.strip().splitlines()


class SharedRegion:
    """A POSIX shared-memory object of ``size`` bytes holding ``x`` at offset 0 (tritonclient's helper), with
    a unique key; ``read(dtype, shape, offset)`` reads it back; destroyed on exit."""

    def __init__(self, tag, x, size):
        import tritonclient.utils.shared_memory as shm

        self.shm, self.key = shm, f"/es_{tag}_{os.getpid()}"
        self.handle = shm.create_shared_memory_region(tag, self.key, size)
        shm.set_shared_memory_region(self.handle, [x])

    def read(self, dtype, shape, offset):
        return self.shm.get_contents_as_numpy(self.handle, dtype, shape, offset=offset)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shm.destroy_shared_memory_region(self.handle)

"""Signed bundles (OpenSSF model-signing, offline EC keys): inspect, serve and bench refuse what the key did
not sign, with one line and exit 2."""

import shutil
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import edited_bundle, inflate_accuracies


def edgeskip(*args, timeout=180):
    return subprocess.run(
        [sys.executable, "-m", "edgeskip", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def keypair(folder, name):
    k = ec.generate_private_key(ec.SECP256R1())
    key, pub = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    key.write_bytes(
        k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    pub.write_bytes(
        k.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return key, pub


def one_line(res, fragment):
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], (
        res.stderr
    )


@pytest.fixture(scope="module")
def signed(bundle, tmp_path_factory):
    d = tmp_path_factory.mktemp("signed")
    copy = d / "bundle"
    shutil.copytree(bundle, copy)
    key, pub = keypair(d, "key")
    res = edgeskip("sign", copy, "--key", key)
    assert res.returncode == 0 and "bundle.sig" in res.stdout, res.stderr
    return copy, pub, d


def test_signed_bundle_verifies(signed):
    copy, pub, _ = signed
    res = edgeskip("inspect", copy, "--verify-key", pub)
    assert res.returncode == 0 and "signature verified" in res.stdout, res.stderr


def test_unsigned_tampered_and_foreign_bundles_are_refused(signed, bundle, tmp_path):
    copy, pub, d = signed
    one_line(edgeskip("inspect", bundle, "--verify-key", pub), "is not signed")
    _, other_pub = keypair(tmp_path, "other")
    one_line(edgeskip("inspect", copy, "--verify-key", other_pub), "signature check failed")
    # the H4 edit with every hash kept consistent: validation passes, the signature does not
    edited = edited_bundle(copy, tmp_path / "edited", inflate_accuracies)
    assert edgeskip("inspect", edited).returncode == 0  # consistent, so only the signature can tell
    for argv in (["inspect", edited], ["serve", edited, "--port", "0"], ["bench", edited, "--count", "5"]):
        one_line(edgeskip(*argv, "--verify-key", pub), "signature check failed")
    added = tmp_path / "added"
    shutil.copytree(copy, added)
    (added / "extra.txt").write_text("x")
    one_line(edgeskip("inspect", added, "--verify-key", pub), "signature check failed")
    one_line(edgeskip("inspect", copy, "--verify-key", tmp_path / "missing.pem"), "not found")
    one_line(edgeskip("sign", copy, "--key", tmp_path / "missing.pem"), "not found")


def test_serve_with_a_verified_bundle(signed):
    copy, pub, _ = signed
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent / "runtime"))
    from daemon_process import Server

    s = Server(copy, "--verify-key", pub)
    try:
        assert s.call("/healthz")[0] == 200
        assert s.stop() == 0
    finally:
        s.kill()

"""Bundle signatures with the OpenSSF ``model-signing`` library, offline, with an elliptic-curve key pair.

``edgeskip sign BUNDLE --key KEY.pem`` signs every file of the bundle (manifest included) into
``BUNDLE/bundle.sig`` (a Sigstore bundle); ``--verify-key PUB.pem`` on ``serve``, ``bench`` and ``inspect``
refuses an unsigned bundle, one signed by another key, and one in which any file was changed, added or
removed. Needs the ``signing`` extra (``pip install 'edgeskip[signing]'``: model-signing and pyOpenSSL).

Make a key pair with OpenSSL::

    openssl ecparam -name prime256v1 -genkey -noout -out key.pem
    openssl ec -in key.pem -pubout -out pub.pem
"""

from __future__ import annotations

import os
from pathlib import Path

from edgeskip.errors import EdgeskipError

SIGNATURE = "bundle.sig"
PROFILES = "profiles"  # measurements made on each serving machine (edgeskip profile): not part of the build


def _library():
    try:
        import model_signing
        from model_signing import hashing
    except ImportError as e:
        raise EdgeskipError(
            f"bundle signatures need the signing extra ({e.name} is not installed): pip install 'edgeskip[signing]'"
        ) from None
    return model_signing, hashing


def _key(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise EdgeskipError(f"{what} {p} not found")
    return p


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def sign_bundle(bundle: str | os.PathLike, key: str | os.PathLike) -> Path:
    """Sign every file of ``bundle`` with the EC private key at ``key`` (PEM); returns the signature path."""
    ms, hashing = _library()
    bundle = Path(bundle)
    if not (bundle / "manifest.json").is_file():
        raise EdgeskipError(f"{bundle} is not an edgeskip bundle (no manifest.json)")
    sig = bundle / SIGNATURE
    tmp = bundle.parent / f".{bundle.name}.{SIGNATURE}.tmp"
    try:
        ms.signing.Config().set_hashing_config(
            hashing.Config().set_ignored_paths(paths=[sig, tmp, bundle / PROFILES])
        ).use_elliptic_key_signer(private_key=_key(key, "private key")).sign(bundle, tmp)
        os.replace(tmp, sig)
    except EdgeskipError:
        raise
    except Exception as e:  # noqa: BLE001 - the library raises several types for unreadable keys
        raise EdgeskipError(f"cannot sign {bundle}: {_first_line(e)}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return sig


def verify_bundle(bundle: str | os.PathLike, public_key: str | os.PathLike) -> None:
    """Raise EdgeskipError unless ``bundle`` carries a signature by ``public_key`` over exactly its files."""
    ms, hashing = _library()
    bundle = Path(bundle)
    sig = bundle / SIGNATURE
    if not sig.is_file():
        raise EdgeskipError(f"bundle {bundle} is not signed (no {SIGNATURE}); --verify-key refuses it")
    try:
        ms.verifying.Config().set_hashing_config(
            hashing.Config().set_ignored_paths(paths=[sig, bundle / PROFILES])
        ).use_elliptic_key_verifier(public_key=_key(public_key, "public key")).verify(bundle, sig)
    except EdgeskipError:
        raise
    except Exception as e:  # noqa: BLE001 - mismatches, wrong keys and damaged signatures alike
        raise EdgeskipError(f"bundle {bundle}: signature check failed: {_first_line(e)}") from None

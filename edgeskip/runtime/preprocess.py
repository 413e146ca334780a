"""Request bodies -> one normalised image tensor [1, C, H, W] for the bundle's model.

Accepted: PNG/JPEG (only those two formats, matching the declared type; resized to the model input,
converted to its channel count, scaled to [0, 1], normalised with the bundle's statistics), raw float32
``application/octet-stream`` of C*H*W values already normalised, or JSON ``{"data": [[...]]}`` of shape
[C, H, W] (normalised). Values must be finite numbers. Images whose header declares more than
``max_pixels`` pixels are refused before anything is decoded.

Decoding runs on the daemon's worker thread, never on the event loop.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from edgeskip.errors import EdgeskipError
from edgeskip.manifest import Manifest

IMAGE_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG"}
TYPES = (*IMAGE_TYPES, "application/octet-stream", "application/json")
MAX_PIXELS = 4096 * 4096  # well below PIL's own decompression-bomb limit (~89 Mpx)
KSERVE_HEADER = "Inference-Header-Content-Length"
MAX_BATCH = 64  # images per KServe v2 request


class BadRequest(EdgeskipError):
    """A client error: answered with ``status`` and a one-line message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def check_encoding(header: str | None) -> None:
    """Bodies are taken as sent: any Content-Encoding but identity is 415 (no decompression, so no zip bombs)."""
    if header is not None and header.strip().lower() not in ("", "identity"):
        raise BadRequest(f"Content-Encoding {header[:40]!r} is not supported; send the body uncompressed", status=415)


def check_content_type(header: str | None) -> str:
    """The media type of a Content-Type header, or BadRequest 415 (a missing header included)."""
    ctype = (header or "").split(";")[0].strip().lower()
    if not ctype:
        raise BadRequest(f"missing Content-Type; use one of {', '.join(TYPES)}", status=415)
    if ctype not in TYPES:
        raise BadRequest(f"unsupported content type {ctype[:60]!r}; use one of {', '.join(TYPES)}", status=415)
    return ctype


def finite(a: np.ndarray, what: str = "input") -> np.ndarray:
    """``a`` if every value is finite, else BadRequest."""
    if not np.isfinite(a).all():
        raise BadRequest(f"{what} contains NaN or infinity")
    return a


def _reject_constant(name: str) -> float:
    raise BadRequest(f"JSON {name} is not a number")


def parse_json(body: bytes | memoryview) -> Any:
    """JSON without NaN/Infinity literals; a one-line BadRequest for anything malformed or nested too deep."""
    try:
        return json.loads(bytes(body), parse_constant=_reject_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"bad JSON: {e}") from None
    except ValueError:  # Python's limit on integer digits (4300)
        raise BadRequest("bad JSON: a number with too many digits") from None
    except RecursionError:
        raise BadRequest("bad JSON: nested too deeply") from None


def numbers(data: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    """Nested lists (or a flat list) of finite numbers -> float32 array of ``shape``; no booleans, strings,
    nulls or values float32 cannot hold."""
    want = int(np.prod(shape))
    flat: list = []
    stack = [data]
    while stack:  # iterative: deep nesting cannot exhaust the stack
        v = stack.pop()
        if isinstance(v, list):
            if len(flat) + len(v) > want * 2 + 16:
                raise BadRequest(f"{what} has more than {want} values")
            stack.extend(reversed(v))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            flat.append(v)
        else:
            raise BadRequest(f"{what} must hold numbers only, found {type(v).__name__}")
    if len(flat) != want:
        raise BadRequest(f"{what} has {len(flat)} values, shape {list(shape)} needs {want}")
    try:
        with np.errstate(over="raise"):
            a = np.array(flat, dtype=np.float64).astype(np.float32)
    except (OverflowError, FloatingPointError):
        raise BadRequest(f"{what} holds a value float32 cannot represent") from None
    return finite(a, what).reshape(shape)


def decode_image(body: bytes, ctype: str, manifest: Manifest, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A PNG or JPEG body -> normalised float32 [1, C, H, W]."""
    from PIL import Image, UnidentifiedImageError

    c, h, w = manifest.input.chw
    want = IMAGE_TYPES[ctype]
    try:
        with Image.open(io.BytesIO(body), formats=[want]) as im:  # reads the header only
            width, height = im.size
            if width * height > max_pixels:
                raise BadRequest(
                    f"image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels", status=413
                )
            if want == "JPEG":
                im.draft("RGB" if c == 3 else "L", (w, h))  # let the JPEG decoder scale down on the way
            im = im.convert("RGB" if c == 3 else "L").resize((w, h), Image.BILINEAR)
            a = np.asarray(im, dtype=np.float32) / 255.0
    except UnidentifiedImageError:
        raise BadRequest(f"body is not a {want} image") from None
    except Image.DecompressionBombError:  # PIL's own limit, hit while reading the header of a huge image
        raise BadRequest(f"image exceeds the limit of {max_pixels} pixels", status=413) from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise BadRequest(f"cannot decode {want} image: {type(e).__name__}") from None
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    mean = np.array(manifest.normalization.mean, np.float32)[:, None, None]
    std = np.array(manifest.normalization.std, np.float32)[:, None, None]
    return ((a - mean) / std)[None].astype(np.float32)


def decode(body: bytes, ctype: str, manifest: Manifest, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode a request body of media type ``ctype`` (see :func:`check_content_type`) into float32
    [1, C, H, W]; raises BadRequest."""
    c, h, w = manifest.input.chw
    if not body:
        raise BadRequest("empty request body")
    if ctype in IMAGE_TYPES:
        return decode_image(body, ctype, manifest, max_pixels)
    if ctype == "application/octet-stream":
        want = c * h * w * 4
        if len(body) != want:
            raise BadRequest(f"raw body must be {want} bytes (float32 [{c}, {h}, {w}]), got {len(body)}")
        return finite(np.frombuffer(body, dtype=np.float32).reshape(1, c, h, w).copy())
    if ctype == "application/json":
        doc = parse_json(body)
        if not isinstance(doc, dict) or "data" not in doc:
            raise BadRequest('JSON body must be {"data": [C][H][W] numbers}')
        return numbers(doc["data"], (c, h, w), "JSON data")[None]  # [C][H][W], [1][C][H][W] or flat
    raise BadRequest(f"unsupported content type {ctype!r}; use one of {', '.join(TYPES)}", status=415)


def check_image_input(name: object, datatype: object, shape: object, manifest: Manifest) -> int:
    """The Open Inference Protocol's input tensor header (HTTP or gRPC): its batch size, or BadRequest."""
    if name != "image":
        raise BadRequest(f"unknown input {name!r}; this model's input is 'image'")
    if datatype != "FP32":
        raise BadRequest(f"input 'image' must be FP32, got {datatype!r}")
    c, h, w = manifest.input.chw
    if (
        not isinstance(shape, list)
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in shape)
        or tuple(shape[-3:]) != (c, h, w)
        or len(shape) not in (3, 4)
    ):
        raise BadRequest(f"input 'image' must have shape [N, {c}, {h}, {w}], got {shape}")
    batch = 1 if len(shape) == 3 else shape[0]
    if not 1 <= batch <= MAX_BATCH:
        raise BadRequest(f"batch size must be in 1..{MAX_BATCH}, got {batch}")
    return batch


def requested_output(
    name: object,
    classification: object,
    binary: object,
    manifest: Manifest,
    params: dict | None = None,
    regions: Any = None,
) -> dict:
    """One requested output (HTTP or gRPC): {"name", "binary", "classification", "shm"}, or BadRequest. ``shm``:
    (region, offset, byte_size) where the output's ``params`` name a registered shared-memory region."""
    if name != "logits":
        raise BadRequest(f"unknown output {name!r}; this model's output is 'logits'")
    n = len(manifest.class_names)
    k = classification
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= n:
        raise BadRequest(f"classification must be an integer in 0..{n}, got {k!r}")
    shm = None
    if params and "shared_memory_region" in params:
        span = (
            params["shared_memory_region"],
            params.get("shared_memory_offset"),
            params.get("shared_memory_byte_size"),
        )
        regions.check(*span, "output 'logits'")
        shm = span
    return {"name": "logits", "binary": bool(binary), "classification": k, "shm": shm}


def shm_input(params: dict, regions: Any, want: int) -> np.ndarray | None:
    """The input tensor from the shared-memory region its ``params`` name (float32 values, ``want`` of them,
    not yet checked for NaN), or None when it names none."""
    if "shared_memory_region" not in params:
        return None
    raw = regions.read(
        params["shared_memory_region"],
        params.get("shared_memory_offset"),
        params.get("shared_memory_byte_size"),
        want * 4,
        "input 'image'",
    )
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)


def decode_kserve(
    body: bytes, header_length: str | None, manifest: Manifest, regions: Any = None
) -> tuple[dict, np.ndarray, list[dict]]:
    """A KServe v2 inference request (JSON, optionally followed by binary tensor data of ``header_length``
    bytes of JSON) -> (request JSON, images [N, C, H, W], requested outputs in order: {"name", "binary",
    "classification"}; the same output may be asked for twice, e.g. raw and classified); raises BadRequest."""
    chw = manifest.input.chw
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise BadRequest(f"{KSERVE_HEADER} must be an integer, got {header_length!r}") from None
        if not 0 < n <= len(body):
            raise BadRequest(f"{KSERVE_HEADER} {n} does not fit a body of {len(body)} bytes")
        head, binary = body[:n], memoryview(body)[n:]
    else:
        head, binary = body, memoryview(b"")
    doc = parse_json(head)
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        raise BadRequest("inference request must be an object with an 'inputs' list")
    if "id" in doc and not isinstance(doc["id"], str):
        raise BadRequest(f"request id must be a string, got {type(doc['id']).__name__}")
    if len(doc["inputs"]) != 1 or not isinstance(doc["inputs"][0], dict):
        raise BadRequest("this model takes exactly one input, 'image'")
    inp = doc["inputs"][0]
    batch = check_image_input(inp.get("name"), inp.get("datatype"), inp.get("shape"), manifest)
    c, h, w = chw
    want = batch * c * h * w
    params = inp.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest("input parameters must be an object")
    from_shm = shm_input(params, regions, want)
    if from_shm is not None:
        x = finite(from_shm.reshape(batch, c, h, w), "input 'image'")
    elif "binary_data_size" in params:
        size = params["binary_data_size"]
        if size != want * 4 or len(binary) != size:
            raise BadRequest(
                f"binary data for 'image' must be {want * 4} bytes (FP32 {inp.get('shape')}), "
                f"declared {size}, received {len(binary)}"
            )
        x = finite(np.frombuffer(binary, dtype="<f4").astype(np.float32).reshape(batch, c, h, w), "input 'image'")
    else:
        if len(binary):
            raise BadRequest("binary data follows the header but no input declares binary_data_size")
        x = numbers(inp.get("data"), (batch, c, h, w), "input 'image' data")
    outputs: list[dict] = []
    request_params = doc.get("parameters") or {}
    if not isinstance(request_params, dict):
        raise BadRequest("request parameters must be an object")
    binary_default = bool(request_params.get("binary_data_output", False))
    for o in doc.get("outputs") or [{"name": "logits"}]:
        if not isinstance(o, dict):
            raise BadRequest(f"unknown output {o!r}; this model's output is 'logits'")
        p = o.get("parameters") or {}
        if not isinstance(p, dict):
            raise BadRequest("output parameters must be an object")
        outputs.append(
            requested_output(
                o.get("name"), p.get("classification", 0), p.get("binary_data", binary_default), manifest, p, regions
            )
        )
    return doc, x, outputs


def pin(manifest: Manifest, config: object = None, skip: object = None) -> tuple[int | None, tuple[bool, ...] | None]:
    """Validate a request's pinned config index or skip array: (config, skip); a skip array on the front
    also names its config. Raises BadRequest."""
    if config is not None and skip is not None:
        raise BadRequest("pin either a config or a skip array, not both")
    n = len(manifest.configs)
    if config is not None:
        if isinstance(config, bool) or not isinstance(config, int) or not 0 <= config < n:
            raise BadRequest(f"config must be an integer in 0..{n - 1}, got {config!r}")
        return config, None
    if skip is not None:
        if manifest.learned_gates:
            raise BadRequest(f"a {manifest.kind} bundle picks its blocks per input; it takes no skip array")
        from edgeskip.skip import normalize_skip

        try:
            s = normalize_skip(skip, manifest.num_gates)
        except EdgeskipError as e:
            raise BadRequest(str(e)) from None
        return manifest.by_skip.get(s), s
    return None, None

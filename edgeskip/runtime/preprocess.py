"""Request bodies -> one normalised image tensor [1, C, H, W] for the bundle's model.

Accepted: PNG/JPEG (resized to the model input, converted to its channel count, scaled to [0, 1],
normalised with the bundle's statistics), raw float32 ``application/octet-stream`` of C*H*W values
already normalised, or JSON ``{"data": [[...]]}`` of shape [C, H, W] (normalised).
"""

from __future__ import annotations

import io
import json
import numpy as np

from edgeskip.errors import EdgeskipError
from edgeskip.manifest import Manifest

IMAGE_TYPES = ("image/png", "image/jpeg", "image/jpg")
TYPES = (*IMAGE_TYPES, "application/octet-stream", "application/json")


class BadRequest(EdgeskipError):
    """A client error: answered with ``status`` and a one-line message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def decode(body: bytes, content_type: str, manifest: Manifest) -> np.ndarray:
    """Decode a request body into float32 [1, C, H, W]; raises BadRequest."""
    c, h, w = manifest.input.chw
    ctype = (content_type or "").split(";")[0].strip().lower()
    if not body:
        raise BadRequest("empty request body")
    if ctype in IMAGE_TYPES:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(body)) as im:
                im = im.convert("RGB" if c == 3 else "L").resize((w, h), Image.BILINEAR)
                a = np.asarray(im, dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise BadRequest(f"cannot decode image: {e}") from None
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        mean = np.array(manifest.normalization.mean, np.float32)[:, None, None]
        std = np.array(manifest.normalization.std, np.float32)[:, None, None]
        return ((a - mean) / std)[None].astype(np.float32)
    if ctype == "application/octet-stream":
        want = c * h * w * 4
        if len(body) != want:
            raise BadRequest(f"raw body must be {want} bytes (float32 [{c}, {h}, {w}]), got {len(body)}")
        return np.frombuffer(body, dtype=np.float32).reshape(1, c, h, w).copy()
    if ctype == "application/json":
        try:
            doc = json.loads(body)
            a = np.asarray(doc["data"], dtype=np.float32)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadRequest(f"bad JSON: {e}") from None
        except (KeyError, TypeError, ValueError) as e:
            raise BadRequest(f"JSON body must be {{\"data\": [C][H][W] numbers}}: {e}") from None
        if a.shape not in ((c, h, w), (1, c, h, w)):
            raise BadRequest(f"JSON data must have shape [{c}, {h}, {w}], got {list(a.shape)}")
        return a.reshape(1, c, h, w)
    raise BadRequest(f"unsupported content type {ctype or '(none)'!r}; use one of {', '.join(TYPES)}", status=415)

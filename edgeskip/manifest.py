"""The bundle manifest: a typed, versioned contract between the compiler side and the runtime.

``edgeskip compile`` builds a :class:`Manifest` and writes it as ``manifest.json``; the runtime reads it back
with :func:`load_manifest`, which validates every field it relies on (types, ranges, cross-references, paths
kept inside the bundle) and, by default, every artifact's sha256. Torch-free: numpy is not even needed.

Versions: 3 (this module) adds fractional depth (issue #15): a config may carry ``options`` (per gated block 0 skip,
1 full, 8 int8; its ``skip`` is then the executed mask), an ``int8`` section (the calibration the int8 blocks were
built with) and ``fronts`` (per back end, the configs it steps through, in order: a back end on which int8 is slower
than float steps through its skip-only front). Version 2 named every ONNX graph in ``onnx`` and every IREE function in
``iree.functions``; a version-2 document is a version-3 one without int8 (every back end steps through every config).
Version 1 bundles (edgeskip 0.1: ``gated.onnx`` plus ``onnx/<module>.onnx`` by convention; SkipNet's
``iree.entry_function``) are upgraded on reading. Any other version is refused with a
one-line error rather than guessed at; a change of shape bumps :data:`VERSION` and keeps a reader for the old.
Optional within version 3: ``onnx_weights`` (issue #32), the one file of external data every ONNX graph of the
bundle points into (each distinct initializer once); graphs without it carry their own weights. Version 4 (issue #34)
adds a config's ``int8_rest``: the stem, the ungated blocks and the head in int8 too. A bundle is written as version
4 only where a config has it (an older reader would take such a config for a float one), else as version 3; a
version-3 document is a version-4 one without it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from edgeskip.errors import EdgeskipError
from edgeskip.utils.hashing import file_digest

FORMAT = "edgeskip-bundle"
VERSION = 4
READS = (1, 2, 3, 4)
OPTION_VALUES = (0, 1, 8)  # skip, full, int8 (edgeskip.skip)
KINDS = ("edgeskip", "skipnet", "dfs")
LEARNED = ("skipnet", "dfs")  # kinds whose learned gates pick the blocks per input
# their graphs' second output: name and dtype of the gates' decisions [B_s] (DFS: option index, 0 = skip)
DECISIONS = {"skipnet": ("executed", "bool"), "dfs": ("options", "int64")}
BACKENDS = ("iree", "onnxruntime")
FILE = "manifest.json"


class ManifestError(EdgeskipError):
    """A manifest that does not satisfy the contract (the message names the field)."""


def _req(d: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(d, Mapping):
        raise ManifestError(f"manifest: {where} must be an object")
    if key not in d:
        raise ManifestError(f"manifest: {where}.{key} is missing")
    v = d[key]
    if kind in (int, float, (int, float)) and isinstance(v, bool) or not isinstance(v, kind):
        raise ManifestError(f"manifest: {where}.{key} has the wrong type ({type(v).__name__})")
    return v


def _num(d: Mapping[str, Any], key: str, where: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    """A number in [lo, hi], returned as written (an int stays an int)."""
    v = _req(d, key, (int, float), where)
    if math.isnan(v) or not (lo <= v <= hi):
        raise ManifestError(f"manifest: {where}.{key} = {v} is outside [{lo}, {hi}]")
    return v


def _rel_path(value: object, where: str) -> str:
    """A relative POSIX path that stays inside the bundle (no absolute path, no '..')."""
    if not isinstance(value, str) or not value:
        raise ManifestError(f"manifest: {where} must be a non-empty path")
    p = PurePosixPath(value)
    if p.is_absolute() or ".." in p.parts or "\\" in value:
        raise ManifestError(f"manifest: {where} = {value!r} points outside the bundle")
    return value


@dataclass(frozen=True)
class InputSpec:
    """The model input: a float32 NCHW image, normalised with :class:`Normalization`."""

    shape: tuple[Any, ...]  # ["N" or 1, C, H, W]
    name: str = "image"
    dtype: str = "float32"
    layout: str = "NCHW"
    range: str = "[0, 1] then normalised"

    @property
    def chw(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.shape[1:])  # type: ignore[return-value]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InputSpec:
        shape = _req(d, "shape", list, "input")
        if len(shape) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape[1:]):
            raise ManifestError(f"manifest: input.shape must be [N, C, H, W] with positive sizes, got {shape}")
        if _req(d, "dtype", str, "input") != "float32" or _req(d, "layout", str, "input") != "NCHW":
            raise ManifestError("manifest: input must be float32 NCHW")
        return cls(tuple(shape), _req(d, "name", str, "input"), "float32", "NCHW", str(d.get("range", cls.range)))


@dataclass(frozen=True)
class Normalization:
    """Per-channel statistics: ``(x / 255 - mean) / std``."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], channels: int) -> Normalization:
        mean, std = _req(d, "mean", list, "normalization"), _req(d, "std", list, "normalization")
        if len(mean) != channels or len(std) != channels:
            raise ManifestError(f"manifest: normalization needs {channels} mean and std values")
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in mean + std) or min(std) <= 0:
            raise ManifestError("manifest: normalization values must be finite and every std > 0")
        return cls(tuple(float(v) for v in mean), tuple(float(v) for v in std))


@dataclass(frozen=True)
class ConfigEntry:
    """One operating point of the Pareto front (for a SkipNet bundle: the one learned-gate model).

    ``skip`` is the skip array (1 = execute, 0 = bypass), None for SkipNet; ``options`` the option array where the
    config runs int8 blocks (0 skip, 1 full, 8 int8), else None; ``int8_rest`` whether it also runs the stem, the
    ungated blocks and the head in int8 (issue #34; ``options`` is then present); ``module`` the IREE function (and
    ONNX file stem) that runs it; ``extra`` keeps fields the runtime does not rely on.
    """

    index: int
    module: str
    n_skipped: float
    val_accuracy: float
    test_accuracy: float
    macs: float
    latency_s: float
    skip: tuple[int, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    options: tuple[int, ...] | None = None
    int8_rest: bool = False

    @property
    def skip_tuple(self) -> tuple[bool, ...] | None:
        return None if self.skip is None else tuple(bool(v) for v in self.skip)

    @property
    def n_int8(self) -> int:
        """Gated blocks run in int8."""
        return 0 if self.options is None else self.options.count(8)

    @property
    def quantized(self) -> bool:
        """Whether any part runs in int8 (gated blocks, or the rest: ``options`` is present exactly then)."""
        return self.options is not None

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("extra", "options", "int8_rest")}
        d["skip"] = None if self.skip is None else list(self.skip)
        if self.skip is None:
            del d["skip"]
        if self.options is not None:
            d["options"] = list(self.options)
        if self.int8_rest:
            d["int8_rest"] = True
        return {**d, **self.extra}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], i: int, num_gates: int) -> ConfigEntry:
        w = f"configs[{i}]"
        if _req(d, "index", int, w) != i:
            raise ManifestError(f"manifest: {w}.index must be {i}")
        skip = d.get("skip")
        if skip is not None:
            if (
                not isinstance(skip, list)
                or len(skip) != num_gates
                or any(v not in (0, 1) or isinstance(v, float) for v in skip)
            ):
                raise ManifestError(f"manifest: {w}.skip must be {num_gates} values of 0/1")
            skip = tuple(int(v) for v in skip)
            if _num(d, "n_skipped", w) != skip.count(0):
                raise ManifestError(f"manifest: {w}.n_skipped does not match its skip array")
        options = d.get("options")
        if options is not None:
            if (
                skip is None
                or not isinstance(options, list)
                or len(options) != num_gates
                or any(isinstance(v, (bool, float)) or v not in OPTION_VALUES for v in options)
            ):
                raise ManifestError(f"manifest: {w}.options must be {num_gates} values of 0/1/8 beside a skip array")
            options = tuple(int(v) for v in options)
            if tuple(int(v != 0) for v in options) != skip:
                raise ManifestError(f"manifest: {w}.skip is not the executed mask of its options")
        rest = d.get("int8_rest", False)
        if not isinstance(rest, bool) or (rest and options is None):
            raise ManifestError(f"manifest: {w}.int8_rest must be true or false, and true only beside options")
        known = {
            "index",
            "module",
            "n_skipped",
            "val_accuracy",
            "test_accuracy",
            "macs",
            "latency_s",
            "skip",
            "options",
            "int8_rest",
        }
        return cls(
            i,
            _req(d, "module", str, w),
            _num(d, "n_skipped", w, 0, num_gates),
            _num(d, "val_accuracy", w, 0, 1),
            _num(d, "test_accuracy", w, 0, 1),
            _num(d, "macs", w, 0),
            _num(d, "latency_s", w, 0),
            skip,
            {k: v for k, v in d.items() if k not in known},
            options,
            rest,
        )


@dataclass(frozen=True)
class TargetEntry:
    """One compilation target: LLVM triple (``host`` for this machine), compiler flags, module folder, and how
    its static functions were built: channels-last or NCHW convolutions, with or without data tiling (the gated
    function is always NCHW with data tiling)."""

    triple: str
    flags: tuple[str, ...]
    dir: str
    static_data_tiling: bool = True
    static_channels_last: bool = True

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"triple": self.triple, "flags": list(self.flags), "dir": self.dir}
        if not self.static_data_tiling:
            d["static_data_tiling"] = False  # absent: tiled, as every bundle before it
        if not self.static_channels_last:
            d["static_channels_last"] = False  # absent: channels-last, as every bundle before it
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], name: str) -> TargetEntry:
        w = f"targets.{name}"
        return cls(
            _req(d, "triple", str, w),
            tuple(_req(d, "flags", list, w)),
            _rel_path(_req(d, "dir", str, w), w + ".dir"),
            _req(d, "static_data_tiling", bool, w) if "static_data_tiling" in d else True,
            _req(d, "static_channels_last", bool, w) if "static_channels_last" in d else True,
        )


@dataclass(frozen=True)
class IreeEntry:
    """The IREE side: one weight archive, one module per target; ``functions`` in the module, in order."""

    weights: str
    module: str
    functions: tuple[str, ...]
    parameter_scope: str = "model"
    driver: str = "local-sync"
    common_flags: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            "parameter_scope": self.parameter_scope,
            "driver": self.driver,
            "module": self.module,
            "functions": list(self.functions),
            "common_flags": list(self.common_flags),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> IreeEntry:
        fns = _req(d, "functions", list, "iree")
        if not fns or not all(isinstance(f, str) and f for f in fns):
            raise ManifestError("manifest: iree.functions must be a non-empty list of names")
        return cls(
            _rel_path(_req(d, "weights", str, "iree"), "iree.weights"),
            _rel_path(_req(d, "module", str, "iree"), "iree.module"),
            tuple(fns),
            _req(d, "parameter_scope", str, "iree"),
            str(d.get("driver", "local-sync")),
            tuple(d.get("common_flags", ())),
        )


@dataclass(frozen=True)
class Manifest:
    """Everything the runtime needs to know about a bundle. ``kind`` "edgeskip": Pareto configs switched
    at run time, a gated ONNX graph for any skip array; "skipnet" and "dfs" (Dynamic Fractional Skipping): one
    model whose learned gates decide per input (DFS: skip, a bit width or full precision per block)."""

    kind: str
    model: dict[str, Any]
    input: InputSpec
    normalization: Normalization
    class_names: tuple[str, ...]
    dataset_id: str
    num_gates: int
    gated_blocks: tuple[int, ...]
    configs: tuple[ConfigEntry, ...]
    targets: dict[str, TargetEntry]  # empty where iree is None
    iree: IreeEntry | None  # None: IREE could not compile the model; onnxruntime runs it (iree_unavailable says why)
    host_fastest: str
    onnx: dict[str, str]  # ONNX graph per function name ("gated" and each config's module), bundle-relative
    digest: str | None = None  # bundle_digest of the document read (set by load_manifest; not written)
    sample: str | None = None  # labelled test images for `edgeskip bench` (.npz, no pickle), bundle-relative
    artifacts: dict[str, str] = field(default_factory=dict)  # bundle-relative path -> sha256
    extra: dict[str, Any] = field(default_factory=dict)  # tools, verification, gates, timings ...
    format: str = FORMAT
    version: int = VERSION
    fronts: dict[str, tuple[int, ...]] = field(default_factory=dict)  # back end -> config indices, stepping order
    int8: dict[str, Any] | None = None  # calibration of the int8 blocks: {"blocks": {block: BlockQuant dict}, ...}
    onnx_weights: str | None = None  # the ONNX graphs' shared external data (each distinct initializer once)

    @property
    def iree_unavailable(self) -> str | None:
        """Why the bundle has no IREE modules (the compiler's one-line error), None where it has them."""
        why = self.extra.get("backend", {}).get("iree_unavailable")
        return str(why) if self.iree is None and why else None

    @property
    def learned_gates(self) -> bool:
        """A SkipNet or DFS bundle: its gates pick the blocks per input; nothing to switch, no skip array."""
        return self.kind in LEARNED

    @property
    def decisions(self) -> tuple[str, str]:
        """A learned-gate bundle's decisions output: (name, numpy dtype name)."""
        return DECISIONS[self.kind]

    @property
    def by_skip(self) -> dict[tuple[bool, ...], int]:
        """Config index of each Pareto skip array (float configs only: an int8 config computes other numbers)."""
        return {s: c.index for c in self.configs if (s := c.skip_tuple) is not None and not c.quantized}

    def front(self, backend: str) -> tuple[int, ...]:
        """Indices of the configs ``backend`` steps through, in order (every config where no front is named)."""
        return self.fronts.get(backend, tuple(range(len(self.configs))))

    def for_backend(self, backend: str) -> Manifest:
        """This manifest as ``backend``'s runtime sees it: its front's configs, re-indexed 0..n-1 in stepping
        order (policies, pins and metrics count in these indices)."""
        picked = tuple(dataclasses.replace(self.configs[i], index=k) for k, i in enumerate(self.front(backend)))
        return dataclasses.replace(self, configs=picked, fronts={})

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (``manifest.json``)."""
        d: dict[str, Any] = {
            "format": self.format,
            "version": VERSION if any(c.int8_rest for c in self.configs) else 3,  # see the module docstring
            "kind": self.kind,
            **{k: v for k, v in self.extra.items() if k in ("created_unix", "tools")},
        }
        d.update(
            {
                "model": self.model,
                "input": {
                    "name": self.input.name,
                    "dtype": self.input.dtype,
                    "shape": list(self.input.shape),
                    "layout": self.input.layout,
                    "range": self.input.range,
                },
                "normalization": {"mean": list(self.normalization.mean), "std": list(self.normalization.std)},
                "class_names": list(self.class_names),
                "dataset_id": self.dataset_id,
                "num_gates": self.num_gates,
                "gated_blocks": list(self.gated_blocks),
                "onnx": dict(self.onnx),
                "configs": [c.to_dict() for c in self.configs],
                "targets": {k: t.to_dict() for k, t in self.targets.items()},
                **({"iree": self.iree.to_dict()} if self.iree is not None else {}),
                "backend": {"host_fastest": self.host_fastest, **self.extra.get("backend", {})},
            }
        )
        if self.sample is not None:
            d["sample"] = self.sample
        if self.fronts:
            d["fronts"] = {k: list(v) for k, v in self.fronts.items()}
        if self.int8 is not None:
            d["int8"] = self.int8
        if self.onnx_weights is not None:
            d["onnx_weights"] = self.onnx_weights
        d.update({k: v for k, v in self.extra.items() if k not in d and k != "backend"})
        d["artifacts"] = dict(self.artifacts)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Manifest:
        """Validate a parsed ``manifest.json``; raises :class:`ManifestError` naming the first bad field."""
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise ManifestError("not an edgeskip bundle manifest")
        if d.get("version") not in READS:
            raise ManifestError(
                f"bundle version {d.get('version')!r}; this edgeskip reads versions {', '.join(map(str, READS))}"
            )
        if d["version"] == 1:
            d = _upgrade_v1(d)
        d = {**d, "version": VERSION}  # a version-2 document is a version-3 one without int8, which is a version-4 one
        kind = d.get("kind", "edgeskip")
        if kind not in KINDS:
            raise ManifestError(f"manifest: kind must be one of {', '.join(KINDS)}, got {kind!r}")
        inp = InputSpec.from_dict(_req(d, "input", dict, "manifest"))
        names = _req(d, "class_names", list, "manifest")
        if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
            raise ManifestError("manifest: class_names must be distinct strings")
        model = _req(d, "model", dict, "manifest")
        if model.get("num_classes", len(names)) != len(names):
            raise ManifestError(f"manifest: {len(names)} class_names for a model of {model.get('num_classes')} classes")
        g = _req(d, "num_gates", int, "manifest")
        blocks = _req(d, "gated_blocks", list, "manifest")
        if g < 0 or len(blocks) != g:
            raise ManifestError("manifest: gated_blocks must list num_gates blocks")
        configs = _req(d, "configs", list, "manifest")
        if not configs:
            raise ManifestError("manifest: configs is empty")
        cfgs = tuple(ConfigEntry.from_dict(c, i, g) for i, c in enumerate(configs))
        if kind == "edgeskip" and any(c.skip is None for c in cfgs):
            raise ManifestError("manifest: every config of an edgeskip bundle needs a skip array")
        if any(b.n_skipped < a.n_skipped for a, b in zip(cfgs, cfgs[1:])):
            raise ManifestError("manifest: configs must be sorted by skipped blocks (Algorithm 1 steps through them)")
        fronts = _fronts(d.get("fronts"), len(cfgs))
        int8 = d.get("int8")
        if int8 is not None and not isinstance(int8, dict):
            raise ManifestError("manifest: int8 must be an object")
        if any(c.quantized for c in cfgs) and int8 is None:
            raise ManifestError("manifest: configs run int8 blocks but the int8 section is missing")
        targets = {str(k): TargetEntry.from_dict(v, k) for k, v in _req(d, "targets", dict, "manifest").items()}
        onnx = {str(k): _rel_path(v, f"onnx.{k}") for k, v in _req(d, "onnx", dict, "manifest").items()}
        backend = _req(d, "backend", dict, "manifest")
        fastest = _req(backend, "host_fastest", str, "backend")
        if fastest not in BACKENDS:
            raise ManifestError(f"manifest: backend.host_fastest must be one of {', '.join(BACKENDS)}")
        iree: IreeEntry | None = None
        if d.get("iree") is None:  # IREE could not compile the model: an onnxruntime-only bundle
            why = backend.get("iree_unavailable")
            if not isinstance(why, str) or not why:
                raise ManifestError("manifest: iree is missing and backend.iree_unavailable does not say why")
            if targets or fastest != "onnxruntime" or kind != "edgeskip":
                raise ManifestError(
                    "manifest: a bundle without IREE modules has no targets and runs its graphs on onnxruntime"
                )
            unlisted = [c.module for c in cfgs if c.module not in onnx]
        else:
            if not targets:
                raise ManifestError("manifest: targets is empty")
            iree = IreeEntry.from_dict(_req(d, "iree", dict, "manifest"))
            if any(c.quantized for c in cfgs) and "iree" not in fronts:
                raise ManifestError("manifest: a bundle with int8 configs must name the IREE front")
            on_iree = fronts.get("iree", range(len(cfgs)))  # only the IREE front's configs need IREE functions
            missing = [cfgs[i].module for i in on_iree if cfgs[i].module not in iree.functions]
            if missing:
                raise ManifestError(f"manifest: configs name functions the module lacks: {', '.join(missing)}")
            if kind == "edgeskip" and "gated" not in iree.functions:
                raise ManifestError("manifest: the module of an edgeskip bundle needs the function 'gated'")
            unlisted = [cfgs[i].module for i in fronts.get("onnxruntime", ()) if cfgs[i].module not in onnx]
        if unlisted:
            raise ManifestError(f"manifest: onnxruntime front configs without a graph: {', '.join(unlisted)}")
        artifacts = _req(d, "artifacts", dict, "manifest")
        for rel, digest in artifacts.items():
            _rel_path(rel, "artifacts")
            if not isinstance(digest, str) or len(digest) != 64:
                raise ManifestError(f"manifest: artifacts[{rel!r}] is not a sha256 digest")
        sample = d.get("sample")
        if sample is not None:
            _rel_path(sample, "sample")
        onnx_weights = d.get("onnx_weights")
        if onnx_weights is not None:
            onnx_weights = _rel_path(onnx_weights, "onnx_weights")
            home = PurePosixPath(onnx_weights).parent
            if any(PurePosixPath(g).parent != home for g in onnx.values()):
                raise ManifestError(
                    "manifest: onnx_weights must sit beside the ONNX graphs (external data resolves there)"
                )
        known = {
            "format",
            "version",
            "kind",
            "model",
            "input",
            "normalization",
            "class_names",
            "dataset_id",
            "num_gates",
            "gated_blocks",
            "configs",
            "targets",
            "iree",
            "onnx",
            "artifacts",
            "sample",
            "fronts",
            "int8",
            "onnx_weights",
        }
        extra = {k: v for k, v in d.items() if k not in known}
        extra["backend"] = {k: v for k, v in backend.items() if k != "host_fastest"}
        return cls(
            kind,
            model,
            inp,
            Normalization.from_dict(_req(d, "normalization", dict, "manifest"), inp.chw[0]),
            tuple(names),
            str(_req(d, "dataset_id", str, "manifest")),
            g,
            tuple(int(b) for b in blocks),
            cfgs,
            targets,
            iree,
            fastest,
            onnx,
            None,
            sample,
            dict(artifacts),
            extra,
            fronts=fronts,
            int8=int8,
            onnx_weights=onnx_weights,
        )


def model_label(model: Mapping[str, Any]) -> str:
    """A model description's name: ``ResNet-20`` for the built-in ResNet, else its source (``timm:resnet18``)."""
    return str(model["model"]) if "model" in model else f"ResNet-{model.get('depth', '?')}"


def _fronts(value: object, n: int) -> dict[str, tuple[int, ...]]:
    """Validated ``fronts``: per back end, distinct config indices starting at 0 (the full network)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ManifestError("manifest: fronts must be an object")
    out = {}
    for backend, idx in value.items():
        if backend not in BACKENDS:
            raise ManifestError(f"manifest: fronts.{backend}: not a back end ({', '.join(BACKENDS)})")
        if (
            not isinstance(idx, list)
            or not idx
            or idx[0] != 0
            or len(set(idx)) != len(idx)
            or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n for i in idx)
        ):
            raise ManifestError(f"manifest: fronts.{backend} must list distinct config indices, starting with 0")
        out[str(backend)] = tuple(idx)
    return out


def _upgrade_v1(v1: Mapping[str, Any]) -> dict[str, Any]:
    """A version-1 document in the version-2 shape (the graphs' paths were implied by convention)."""
    d: dict[str, Any] = json.loads(json.dumps(v1))  # deep copy
    configs, iree = d.get("configs"), d.get("iree")
    if not isinstance(configs, list) or not isinstance(iree, dict):
        return d  # from_dict names what is missing
    if d.get("kind") == "skipnet":
        fn = iree.pop("entry_function", "main_graph")
        iree.update(module="skipnet.vmfb", functions=[fn])
        for c in configs:
            if isinstance(c, dict):
                c["module"] = fn
        d["onnx"] = {fn: "onnx/skipnet.onnx"}
    else:
        gated = (
            d.get("gated", {}).get("onnx", "onnx/gated.onnx") if isinstance(d.get("gated"), dict) else "onnx/gated.onnx"
        )
        d["onnx"] = {
            "gated": gated,
            **{
                c["module"]: f"onnx/{c['module']}.onnx"
                for c in configs
                if isinstance(c, dict) and isinstance(c.get("module"), str)
            },
        }
    d["version"] = VERSION
    return d


def bundle_digest(doc: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` of the canonical manifest (sorted keys, no whitespace). The manifest lists every
    artifact's sha256, so this one value pins the whole bundle."""
    import hashlib

    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    return "sha256:" + hashlib.sha256(canonical).hexdigest()


def load_manifest(
    bundle: str | os.PathLike,
    check_hashes: bool = True,
    digest: str | None = None,
    verify_key: str | os.PathLike | None = None,
) -> Manifest:
    """Read and validate a bundle's manifest; with ``check_hashes`` every artifact it lists must exist inside
    the bundle with the recorded sha256, and every file the runtime opens must be listed. With ``digest``
    (printed by `edgeskip compile` and `inspect`), the manifest itself must be the one that was built; with
    ``verify_key`` (a public key PEM), the bundle must carry a signature by it over exactly its files."""
    bundle = Path(bundle)
    if verify_key is not None:
        from edgeskip.signing import verify_bundle

        verify_bundle(bundle, verify_key)
    path = bundle / FILE
    if not path.is_file():
        raise EdgeskipError(f"{bundle} is not an edgeskip bundle (no {FILE})")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EdgeskipError(f"{path} is not valid JSON ({e})") from None
    if digest is not None:
        got = bundle_digest(doc)
        want = digest if digest.startswith("sha256:") else "sha256:" + digest
        if got != want.lower():
            raise ManifestError(f"bundle {bundle}: digest {got} is not the expected {want}")
    try:
        m = Manifest.from_dict(doc)
    except ManifestError as e:
        raise ManifestError(f"{path}: {e}") from None
    m = dataclasses.replace(m, digest=bundle_digest(doc))
    if check_hashes:
        iree = m.iree
        used = [
            *([iree.weights] if iree else []),
            *m.onnx.values(),
            *([m.onnx_weights] if m.onnx_weights else []),
            *(f"{t.dir}/{iree.module}" for t in m.targets.values() if iree),
            *([m.sample] if m.sample else []),
        ]
        unlisted = [u for u in used if u not in m.artifacts]
        if unlisted:
            raise ManifestError(f"bundle {bundle}: {unlisted[0]} is used but not hashed in the manifest")
        root = bundle.resolve()
        for rel, digest in m.artifacts.items():
            p = bundle / rel
            if not p.resolve().is_relative_to(root):
                raise ManifestError(f"bundle {bundle}: artifact {rel} resolves outside the bundle")
            if not p.is_file():
                raise EdgeskipError(f"bundle {bundle}: missing artifact {rel}")
            if file_digest(p) != digest:
                raise EdgeskipError(f"bundle {bundle}: sha256 mismatch for {rel}")
    return m

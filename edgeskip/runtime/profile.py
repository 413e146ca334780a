"""A bundle measured on the machine that serves it (``edgeskip profile``).

Every *candidate* config the bundle carries (the skip arrays its design space measured, and its int8 configs) is
timed on each engine installed here, batch 1, round-robin; each engine's front is then drawn from these
measurements with the validation accuracies recorded at compile time (selection on validation data, as
``compile`` does). The profile is bound to the bundle's digest and to this machine (CPU model and features),
carries its own digest (an edited file is refused), and lives in ``BUNDLE/profiles/<machine>.json`` (outside
the bundle's hashed and signed files). ``serve`` and ``bench`` run the front of the profile that matches this
machine, or the compile host's where there is none.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeskip.errors import EdgeskipError
from edgeskip.front import Point, stepping_order
from edgeskip.manifest import ConfigEntry, Manifest
from edgeskip.signing import PROFILES as DIR
from edgeskip.skip import INT8, doc_options, gates_of, has_rest, module_name
from edgeskip.utils.atomic import write_json

FORMAT = "edgeskip-profile"
VERSION = 1


def machine() -> dict[str, Any]:
    """What identifies this machine's speed: architecture, CPU model and features (and a file-name key)."""
    arch, cpu, features = platform.machine(), "", ""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for key in ("model name", "Hardware", "Processor", "cpu model", "CPU part"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.M)
        if m:
            cpu = m.group(1).strip()
            break
    m = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.M)
    if m:
        features = " ".join(sorted(set(m.group(1).split())))
    cpu = cpu or platform.processor() or arch
    slug = re.sub(r"[^a-z0-9]+", "-", f"{arch} {cpu}".lower()).strip("-")[:60]
    tag = hashlib.sha256(f"{arch}|{cpu}|{features}".encode()).hexdigest()[:8]
    return {"arch": arch, "cpu": cpu, "features": features, "cores": os.cpu_count(), "key": f"{slug}-{tag}"}


@dataclass(frozen=True)
class Candidate:
    """One config the bundle can run, with what it cost here per engine (seconds; joules where measured)."""

    module: str
    skip: tuple[int, ...]
    options: tuple[int, ...] | None
    val_accuracy: float
    test_accuracy: float
    macs: float
    latency_s: dict[str, float] = field(default_factory=dict)
    energy_j: dict[str, float] = field(default_factory=dict)
    int8_rest: bool = False

    @property
    def n_skipped(self) -> int:
        return self.skip.count(0)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["skip"], d["options"] = list(self.skip), None if self.options is None else list(self.options)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Candidate:
        if d.get("int8_rest") and d.get("options") is None:
            raise EdgeskipError("profile: a candidate with int8_rest needs its options, as a manifest config does")
        try:
            return cls(
                str(d["module"]),
                tuple(int(v) for v in d["skip"]),
                None if d.get("options") is None else tuple(int(v) for v in d["options"]),
                float(d["val_accuracy"]),
                float(d["test_accuracy"]),
                float(d["macs"]),
                {str(k): float(v) for k, v in d.get("latency_s", {}).items()},
                {str(k): float(v) for k, v in d.get("energy_j", {}).items()},
                bool(d.get("int8_rest", False)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise EdgeskipError(f"profile: a candidate is malformed ({type(e).__name__}: {e})") from None


def draw_fronts(candidates: Sequence[Candidate]) -> dict[str, list[str]]:
    """Each engine's front among the candidates it ran (validation accuracy vs its latency here), full network
    first, then slowest to fastest: module names in stepping order."""
    fronts = {}
    full = tuple([1] * len(candidates[0].skip)) if candidates else ()
    for backend in sorted({b for c in candidates for b in c.latency_s}):
        ran = [c for c in candidates if backend in c.latency_s]
        anchor = next((i for i, c in enumerate(ran) if c.skip == full and c.options is None), None)
        if anchor is None:
            raise EdgeskipError(f"profile: engine {backend} did not run the full network")
        points = [Point(c.val_accuracy, c.latency_s[backend], c.n_skipped) for c in ran]
        fronts[backend] = [ran[i].module for i in stepping_order(points, anchor)]
    return fronts


def _digest(doc: Mapping[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "digest"}
    return "sha256:" + hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class Profile:
    bundle_digest: str
    machine: dict[str, Any]
    engines: dict[str, str]
    candidates: tuple[Candidate, ...]
    fronts: dict[str, tuple[str, ...]]
    repeats: int
    created_unix: int
    power: str | None = None

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "bundle_digest": self.bundle_digest,
            "machine": self.machine,
            "engines": self.engines,
            "repeats": self.repeats,
            "created_unix": self.created_unix,
            "power": self.power,
            "candidates": [c.to_dict() for c in self.candidates],
            "fronts": {k: list(v) for k, v in self.fronts.items()},
        }
        doc["digest"] = _digest(doc)
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], where: str = "profile") -> Profile:
        if not isinstance(doc, Mapping) or doc.get("format") != FORMAT:
            raise EdgeskipError(f"{where} is not an edgeskip profile")
        if doc.get("version") != VERSION:
            raise EdgeskipError(f"{where}: profile version {doc.get('version')!r} is not {VERSION}")
        if doc.get("digest") != _digest(doc):
            raise EdgeskipError(f"{where}: its content does not match its digest (edited or damaged); measure again")
        try:
            cands = tuple(Candidate.from_dict(c) for c in doc["candidates"])
            fronts = {str(k): tuple(str(m) for m in v) for k, v in doc["fronts"].items()}
            profile = cls(
                str(doc["bundle_digest"]),
                dict(doc["machine"]),
                {str(k): str(v) for k, v in doc["engines"].items()},
                cands,
                fronts,
                int(doc["repeats"]),
                int(doc["created_unix"]),
                doc.get("power"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise EdgeskipError(f"{where} is malformed ({type(e).__name__}: {e})") from None
        known = {c.module for c in cands}
        for backend, modules in fronts.items():
            if not modules or any(m not in known for m in modules):
                raise EdgeskipError(f"{where}: the {backend} front names configs it did not measure")
        return profile


def bundle_candidates(bundle: Path, manifest: Manifest) -> list[Candidate]:
    """Every config the bundle carries: its design space's candidates (``pareto.json``, hashed in the manifest),
    with int8 the fractional design space's (``fractional.json``: those with a test accuracy, which is every one
    since the bundle carries them all), and its configs, once each."""
    rel = "pareto.json"
    if rel not in manifest.artifacts:
        raise EdgeskipError(f"bundle {bundle} lists no {rel}: rebuild it with this version's compile")
    doc = json.loads((bundle / rel).read_text())
    found: dict[str, Candidate] = {}
    for c in doc.get("candidates", []):
        skip = tuple(int(v) for v in c["skip"])
        name = module_name(skip)
        found.setdefault(name, Candidate(name, skip, None, c["val_accuracy"], c["test_accuracy"], c["macs"]))
    if "fractional.json" in manifest.artifacts:
        for c in json.loads((bundle / "fractional.json").read_text()).get("candidates", []):
            opts = doc_options(c)
            if c.get("test_accuracy") is None:  # a bundle of an earlier edgeskip: no graph for it either
                continue
            gates, rest = gates_of(opts), has_rest(opts)
            cand = Candidate(
                module_name(opts),
                tuple(int(v != 0) for v in gates),
                gates if INT8 in gates or rest else None,
                c["val_accuracy"],
                c["test_accuracy"],
                c["macs"],
                int8_rest=rest,
            )
            found.setdefault(cand.module, cand)
    for c in manifest.configs:
        assert c.skip is not None  # an edgeskip bundle's configs have skip arrays
        found.setdefault(
            c.module,
            Candidate(c.module, c.skip, c.options, c.val_accuracy, c.test_accuracy, c.macs, int8_rest=c.int8_rest),
        )
    return list(found.values())


def _configs(cands: Sequence[Candidate], latency: Callable[[Candidate], float]) -> tuple[ConfigEntry, ...]:
    return tuple(
        ConfigEntry(
            k,
            c.module,
            c.n_skipped,
            c.val_accuracy,
            c.test_accuracy,
            c.macs,
            latency(c),
            c.skip,
            {},
            c.options,
            c.int8_rest,
        )
        for k, c in enumerate(cands)
    )


def runnable(manifest: Manifest, backend: str, cands: Sequence[Candidate]) -> list[Candidate]:
    """The candidates ``backend`` can run from this bundle: IREE the float configs its module holds a function
    for, onnxruntime those it has a graph for."""
    if backend == "iree":
        iree = manifest.iree
        return [c for c in cands if c.options is None and iree is not None and c.module in iree.functions]
    return [c for c in cands if c.module in manifest.onnx]


def measure(
    bundle: str | os.PathLike,
    backends: Sequence[str],
    repeats: int = 30,
    meter: Any = None,
    log: Callable[[str], object] = print,
    target: str = "auto",
    driver: str = "local-sync",
    threads: int = 1,
    digest: str | None = None,
    energy_seconds: float = 1.0,
) -> Profile:
    """Time every candidate on each of ``backends`` here (and, with an :class:`~edgeskip.runtime.power.EnergyMeter`,
    its energy per inference over ``energy_seconds`` of back-to-back inferences), and draw this machine's fronts."""
    import numpy as np

    from edgeskip.manifest import load_manifest
    from edgeskip.runtime.daemon import measure_config_latencies
    from edgeskip.runtime.executor import executor_class, machine_target

    bundle = Path(bundle)
    manifest = load_manifest(bundle, digest=digest)
    if manifest.learned_gates:
        raise EdgeskipError(f"{bundle} is a {manifest.kind} bundle: its gates pick the blocks, there is no front")
    cands = bundle_candidates(bundle, manifest)
    latency: dict[str, dict[str, float]] = {c.module: {} for c in cands}
    energy: dict[str, dict[str, float]] = {c.module: {} for c in cands}
    engines = {}
    for backend in backends:
        ran = runnable(manifest, backend, cands)
        if not ran:
            why = f" ({manifest.iree_unavailable})" if backend == "iree" and manifest.iree is None else ""
            log(f"{backend}: the bundle holds no candidate it can run{why}")
            continue
        log(f"{backend}: timing {len(ran)} candidate configs, {repeats} rounds ...")
        m = dataclasses.replace(manifest, configs=_configs(ran, lambda c: 0.0), fronts={})
        options = (
            {"target": machine_target(m) if target == "auto" else target, "driver": driver}
            if backend == "iree"
            else {"threads": threads}
        )
        ex = executor_class(backend, manifest)(bundle, manifest=m, **options)
        engines[backend] = engine_version(backend)
        for c, t in zip(ran, measure_config_latencies(ex, repeats)):
            latency[c.module][backend] = t
        if meter is not None:
            x = np.zeros((1, *ex.input_shape), np.float32)
            for k, c in enumerate(ran):
                n = max(repeats, int(energy_seconds / max(latency[c.module][backend], 1e-6)))
                meter.start()
                for _ in range(n):
                    ex.infer(x, config=k)
                energy[c.module][backend] = meter.stop().joules / n
    measured = tuple(dataclasses.replace(c, latency_s=latency[c.module], energy_j=energy[c.module]) for c in cands)
    return Profile(
        str(manifest.digest),
        machine(),
        engines,
        measured,
        {k: tuple(v) for k, v in draw_fronts([c for c in measured if c.latency_s]).items()},
        repeats,
        int(time.time()),
        None if meter is None else meter.source.description,
    )


def installed_backends() -> list[str]:
    """The engines this machine can run: IREE where its runtime imports, onnxruntime where installed."""
    from edgeskip.backends.ort import available

    found = []
    try:
        import iree.runtime  # noqa: F401

        found.append("iree")
    except ImportError:
        pass
    return found + (["onnxruntime"] if available() else [])


def engine_version(backend: str) -> str:
    try:
        if backend == "iree":
            from importlib.metadata import version

            return "iree-base-runtime " + version("iree-base-runtime")
        import onnxruntime

        return "onnxruntime " + onnxruntime.__version__
    except Exception:  # noqa: BLE001 - a version is information, never a reason to fail
        return backend


def default_path(bundle: str | os.PathLike, key: str | None = None) -> Path:
    return Path(bundle) / DIR / f"{key or machine()['key']}.json"


def write_profile(profile: Profile, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, profile.to_dict())
    return path


def load_profile(path: str | os.PathLike, manifest: Manifest, here: Mapping[str, Any] | None = None) -> Profile:
    """The profile at ``path``, refused in one line unless it was measured on this bundle and this machine."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise EdgeskipError(f"no profile at {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EdgeskipError(f"profile {path} is not readable JSON ({type(e).__name__})") from None
    profile = Profile.from_dict(doc, f"profile {path}")
    if profile.bundle_digest != manifest.digest:
        raise EdgeskipError(
            f"profile {path} was measured on another bundle ({profile.bundle_digest[:19]}..., this bundle is "
            f"{str(manifest.digest)[:19]}...); run edgeskip profile on this one"
        )
    here = here or machine()
    if profile.machine.get("key") != here["key"]:
        raise EdgeskipError(
            f"profile {path} was measured on another machine ({profile.machine.get('cpu')}, "
            f"{profile.machine.get('arch')}), not this one ({here['cpu']}, {here['arch']})"
        )
    return profile


def find_profile(
    bundle: str | os.PathLike, manifest: Manifest, choice: str | None = "auto"
) -> tuple[Profile, Path] | None:
    """``choice`` "auto": this machine's profile in the bundle's ``profiles/`` if there is one; None or "none":
    no profile (the compile host's fronts); else a profile file, which must match."""
    if choice in (None, "none"):
        return None
    if choice == "auto":
        if not (Path(bundle) / DIR).is_dir():  # nothing to match: no need to read this machine's identity
            return None
        here = machine()
        path = default_path(bundle, here["key"])
        return (load_profile(path, manifest, here), path) if path.is_file() else None
    return load_profile(choice, manifest), Path(choice)


def profiled(
    bundle: str | os.PathLike, manifest: Manifest, choice: str | None = "auto"
) -> tuple[Manifest, Path | None]:
    """``manifest`` with the fronts of the profile ``choice`` finds (see :func:`find_profile`), and that profile's
    path; as it is, with None, where there is none or the bundle's gates pick the blocks (SkipNet, DFS)."""
    found = None if manifest.learned_gates else find_profile(bundle, manifest, choice)
    return (manifest, None) if found is None else (apply_profile(manifest, *found), found[1])


def apply_profile(manifest: Manifest, profile: Profile, path: Path | None = None) -> Manifest:
    """``manifest`` with this machine's fronts: the configs of every front of the profile, their latencies
    measured here (IREE's where it ran them, else onnxruntime's)."""
    by_module = {c.module: c for c in profile.candidates}
    order = list(dict.fromkeys(m for front in profile.fronts.values() for m in front))
    full = next(m for front in profile.fronts.values() for m in front[:1])
    order.remove(full)
    order.insert(0, full)  # config 0 is the full network, as in every manifest
    cands = [by_module[m] for m in order]
    configs = tuple(
        dataclasses.replace(c, extra={f"latency_s_{b}": t for b, t in by_module[c.module].latency_s.items()})
        for c in _configs(cands, lambda c: c.latency_s.get("iree", next(iter(c.latency_s.values()))))
    )
    index = {m: k for k, m in enumerate(order)}
    fronts = {b: tuple(index[m] for m in front) for b, front in profile.fronts.items()}
    fastest = manifest.host_fastest
    if len(fronts) > 1:  # compile's rule: the engine faster over the float configs both ran
        both = [c for c in cands if len(c.latency_s) > 1]
        if both:
            fastest = min(profile.fronts, key=lambda b: sum(c.latency_s[b] for c in both))
    about = {"machine": profile.machine["key"], "cpu": profile.machine["cpu"], "created_unix": profile.created_unix}
    return dataclasses.replace(
        manifest,
        configs=configs,
        fronts=fronts,
        host_fastest=fastest,
        extra={**manifest.extra, "profile": {**about, **({"path": str(path)} if path else {})}},
    )

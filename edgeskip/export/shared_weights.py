"""Config-specialised IREE executables that share one copy of the weights.

Each Pareto config becomes a static graph (its bypassed blocks removed, no control flow). Its
weights are externalised into a parameter archive (.irpa) by name; names are the checkpoint's
module paths, so every config refers to the same entries. One archive (from the full network) is
loaded once into a ``ParameterIndex``; every config module (renamed ``config_<k>``) is added to one
``VmContext`` with it. Switching configs calls another function: weights are never reloaded.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeskip.backends.iree import parameter_index
from edgeskip.errors import EdgeskipError
from edgeskip.export.iree_compile import Target, compile_many, import_onnx
from edgeskip.export.onnx_export import export_static, subgraphs
from edgeskip.models import BlockNet
from edgeskip.skip import module_name
from edgeskip.utils.atomic import atomic_path


def rename_module(mlir: Path, name: str) -> None:
    """Give the MLIR module a symbol name, so several compiled modules can live in one context."""
    text = mlir.read_text()
    new, n = re.subn(
        r"^module\s*(attributes\s*\{[^}]*\}\s*)?\{",
        lambda m: f"module @{name} {m.group(1) or ''}{{",
        text,
        count=1,
        flags=re.M,
    )
    if n != 1:
        raise EdgeskipError(f"cannot rename module in {mlir}: no top-level 'module {{'")
    with atomic_path(mlir, suffix=".mlir") as tmp:
        tmp.write_text(new)


def _entries(path: Path) -> dict[str, np.ndarray]:
    import iree.runtime as rt

    return {
        name: np.array(rt.parameter_index_entry_as_numpy_flat_ndarray(entry))
        for name, entry in parameter_index(path).items()
    }


def check_shared(weights: Path, config_params: Path) -> int:
    """Every parameter a config uses exists in the shared archive with identical bytes; returns the count."""
    shared, mine = _entries(weights), _entries(config_params)
    for name, value in mine.items():
        if name not in shared or shared[name].tobytes() != value.tobytes():
            raise EdgeskipError(f"parameter {name!r} of {config_params.name} differs from the shared archive")
    return len(mine)


def write_weights(
    model: BlockNet, dest: str | os.PathLike, work_dir: str | os.PathLike, gated: Path | None = None
) -> Path:
    """The shared archive: every parameter of the full network (BN folded), by module path (``gated``: see
    :func:`export_static`)."""
    work = Path(work_dir)
    full = export_static(model, [1] * model.cfg.num_gates, work / "full.onnx", gated)
    import_onnx(full, work / "full.mlir", params=dest)
    return Path(dest)


def merge_archives(sources: Sequence[Path], dest: str | os.PathLike) -> Path:
    """One archive holding every entry of ``sources`` (an entry in several must hold the same bytes), atomically."""
    import iree.runtime as rt

    merged: dict[str, np.ndarray] = {}
    for src in sources:
        for name, value in _entries(src).items():
            if name in merged and merged[name].tobytes() != value.tobytes():
                raise EdgeskipError(f"parameter {name!r} differs between {sources[0].name} and {src.name}")
            merged[name] = value
    idx = rt.ParameterIndex()
    for name, value in merged.items():
        idx.add_buffer(name, np.ascontiguousarray(value).tobytes())
    dest = Path(dest)
    with atomic_path(dest, suffix=".irpa") as tmp:
        idx.create_archive_file(str(tmp))
    return dest


def import_shared(onnx_path: Path, weights: Path, work_dir: Path, name: str) -> Path:
    """Import one graph with externalised parameters, prove they are the archive's, name its module.

    Parameters named by module path (``blocks.4.conv1.weight``) must be the archive's, byte for byte. Constants
    the exporter generated (``val_5_4``: no dot, a name that means nothing outside this graph) are the graph's
    own: renamed ``<name>__val_5_4`` (global and parameter) in the module and added to the archive."""
    own = work_dir / f"{name}.irpa"
    mlir = import_onnx(onnx_path, work_dir / f"{name}.mlir", params=own)
    generated = {k: v for k, v in _entries(own).items() if "." not in k}
    if generated:
        import iree.runtime as rt

        text = mlir.read_text()
        for key in generated:
            text = text.replace(f'::"{key}">', f'::"{name}__{key}">')
            text = re.sub(rf"@{re.escape(key)}\b", f"@{name}__{key}", text)
        with atomic_path(mlir, suffix=".mlir") as tmp:
            tmp.write_text(text)
        idx = rt.ParameterIndex()
        for key, value in generated.items():
            idx.add_buffer(f"{name}__{key}", np.ascontiguousarray(value).tobytes())
        extra = work_dir / f"{name}.generated.irpa"
        idx.create_archive_file(str(extra))
        merge_archives([weights, extra], weights)
        own = work_dir / f"{name}.named.irpa"
        idx = rt.ParameterIndex()
        for key, value in _entries(work_dir / f"{name}.irpa").items():
            idx.add_buffer(f"{name}__{key}" if key in generated else key, np.ascontiguousarray(value).tobytes())
        idx.create_archive_file(str(own))
    check_shared(weights, own)
    rename_module(mlir, name)
    return mlir


def merge_modules(mlirs: dict[str, Path], dest: Path, name: str = "model") -> Path:
    """One MLIR module whose functions are the given modules' ``main_graph``, renamed to their keys.

    Parameter globals (same names, same archive entries) are declared once; inline constants
    (``dense_resource``) are prefixed per source so they cannot collide. Compiled as one module, IREE
    hoists each weight's data-tiled repacking into one global shared by every function: all configs
    hold one copy of the packed weights at full speed (separate modules repack per module).
    """
    globals_: dict[str, str] = {}
    funcs: list[str] = []
    resources: list[str] = []
    for k, (fn, path) in enumerate(mlirs.items()):
        body, sep, res = path.read_text().partition("{-#")
        res = sep + res
        for key in set(re.findall(r"dense_resource<([\w.]+)>", body)):
            body = re.sub(rf"dense_resource<{re.escape(key)}>", f"dense_resource<m{k}_{key}>", body)
            res = re.sub(rf"^(\s*){re.escape(key)}:", rf"\1m{k}_{key}:", res, flags=re.M)
        lines = body.strip().splitlines()
        if not lines or not lines[0].startswith("module") or lines[-1].strip() != "}":
            raise EdgeskipError(f"cannot merge {path}: unexpected module layout")
        rest = []
        for line in lines[1:-1]:
            if line.strip().startswith("util.global"):
                globals_.setdefault(line.split("@", 1)[1].split()[0], line)
            else:
                rest.append(line)
        text = "\n".join(rest)
        if text.count("func.func @main_graph(") != 1:
            raise EdgeskipError(f"cannot merge {path}: expected one main_graph function")
        funcs.append(text.replace("func.func @main_graph(", f"func.func @{fn}("))
        if res:
            found = re.search(r"builtin:\s*\{(.*)\}\s*\}\s*#-\}", res, flags=re.S)
            if found is None:
                raise EdgeskipError(f"cannot merge {path}: unexpected resource block")
            resources.append(found.group(1).strip().rstrip(","))
    out = f"module @{name} {{\n" + "\n".join(globals_.values()) + "\n" + "\n".join(funcs) + "\n}\n"
    if resources:
        out += (
            "\n{-#\n  dialect_resources: {\n    builtin: {\n      "
            + ",\n      ".join(resources)
            + "\n    }\n  }\n#-}\n"
        )
    with atomic_path(dest, suffix=".mlir") as tmp:
        tmp.write_text(out)
    return dest


@dataclass(frozen=True)
class SharedModules:
    """The shared archive and, per config, its module, static ONNX graph and imported MLIR."""

    weights: Path
    modules: tuple[Path, ...]
    onnx: tuple[Path, ...]
    mlir: tuple[Path, ...]


def import_configs(
    model: BlockNet,
    skip_arrays: Sequence[Sequence[object]],
    weights: Path,
    work_dir: str | os.PathLike,
    gated: Path | None = None,
) -> tuple[list[Path], list[Path]]:
    """(static ONNX graphs, imported MLIR modules) of each skip array, over the shared archive ``weights``. With the
    model's ``gated`` graph, every static graph is cut from it (:func:`export_static`) rather than traced."""
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    graphs, mlirs = [], []
    for skip in skip_arrays:  # in turn: an import may add to the shared archive
        name = module_name(skip)
        graphs.append(export_static(model, skip, work / f"{name}.onnx", gated))
        mlirs.append(import_shared(graphs[-1], weights, work, name))
    return graphs, mlirs


def build_shared_modules(
    model: BlockNet,
    skip_arrays: Sequence[Sequence[object]],
    target: Target,
    out_dir: str | os.PathLike,
    work_dir: str | os.PathLike,
    gated: Path | None = None,
    weights: Path | None = None,
) -> SharedModules:
    """One static module per skip array (:func:`import_configs`), compiled side by side, all using
    ``weights.irpa``. ``weights``: the archive of an earlier call, to add these configs to (rewriting it would drop
    the constants the earlier configs' modules added); None writes a new one from the full network."""
    out, work = Path(out_dir), Path(work_dir)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    if weights is None:
        weights = write_weights(model, out / "weights.irpa", work, gated)
    graphs, mlirs = import_configs(model, skip_arrays, weights, work, gated)
    modules = [
        c.path
        for c in compile_many(
            [(m, target, out / f"{module_name(s)}.{target.name}.vmfb") for m, s in zip(mlirs, skip_arrays)],
            channels_last=("main_graph",),  # static graphs, compiled as the bundle's merged module compiles them
        )
    ]
    return SharedModules(weights, tuple(modules), tuple(graphs), tuple(mlirs))


ONNX_WEIGHTS = "weights.bin"  # beside the bundle's ONNX graphs: every graph's initializers, each distinct one once
_ALIGN = 64  # offsets of tensors in the shared file (onnxruntime maps or reads them; aligned for vector loads)
_INLINE_BYTES = 1024  # smaller initializers (shapes, scales, zero points) stay in their graph


def share_onnx_weights(graphs: Sequence[Path], dest: Path) -> dict[str, int]:
    """Move the initializers of ``graphs`` (ONNX files in ``dest``'s folder) into the one file ``dest``, each
    distinct tensor once (by dtype and bytes, whatever its name), and point each graph at it (ONNX external data:
    location, offset, length). onnxruntime resolves the location beside the graph, so every config's graph
    loads from one copy of the weights, as IREE's functions do from one parameter archive. The graphs and
    ``dest`` are rewritten atomically. The exporter's per-node debug notes (stack traces naming the compile host's
    files) are dropped on the way: onnxruntime never reads them. Returns counts (tensors moved, distinct tensors, bytes before and after)."""
    import hashlib

    import onnx
    from onnx import numpy_helper

    if dest.exists():  # graphs outside ``graphs`` may point into it
        raise EdgeskipError(f"{dest} exists: the graphs of one bundle share one new weight file")
    placed: dict[bytes, tuple[int, int]] = {}
    stats = {"graphs": len(graphs), "tensors": 0, "distinct": 0, "bytes_in_graphs": 0, "bytes_shared": 0}
    rewritten = []
    with atomic_path(dest, suffix=".bin") as tmp, open(tmp, "wb") as out:
        for path in graphs:
            if path.parent != dest.parent:
                raise EdgeskipError(f"{path} is not beside {dest}: its external data would not resolve")
            model = onnx.load(str(path), load_external_data=False)
            for sub in subgraphs(model.graph):  # the exporter's debug notes: two thirds of a small graph, host paths
                for node in sub.node:
                    del node.metadata_props[:]
            for t in (t for sub in subgraphs(model.graph) for t in sub.initializer):
                if t.data_location == onnx.TensorProto.EXTERNAL:
                    raise EdgeskipError(f"{path.name}: initializer {t.name!r} already has external data")
                if t.data_type == onnx.TensorProto.STRING:
                    continue
                # ONNX's raw layout (packed 4-bit types included): the tensor's own, or encoded from its typed fields
                data = (
                    t.raw_data if t.HasField("raw_data") else numpy_helper.from_array(numpy_helper.to_array(t)).raw_data
                )
                if len(data) < _INLINE_BYTES:
                    continue
                key = hashlib.sha256(t.data_type.to_bytes(4, "little") + data).digest()
                if key not in placed:
                    offset = -out.tell() % _ALIGN + out.tell()
                    out.seek(offset)
                    out.write(data)
                    placed[key] = (offset, len(data))
                    stats["distinct"] += 1
                    stats["bytes_shared"] += len(data)
                stats["tensors"] += 1
                stats["bytes_in_graphs"] += len(data)
                offset, length = placed[key]
                for name in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                    t.ClearField(name)
                t.data_location = onnx.TensorProto.EXTERNAL
                del t.external_data[:]
                for k, v in (("location", dest.name), ("offset", str(offset)), ("length", str(length))):
                    entry = t.external_data.add()
                    entry.key, entry.value = k, v
            rewritten.append((path, model.SerializeToString()))
    for path, body in rewritten:  # the shared file is in place: now the graphs that point into it
        with atomic_path(path, suffix=".onnx") as g:
            g.write_bytes(body)
    return stats

"""Model sources: where a network comes from before edgeskip finds its skippable blocks.

``--model`` takes one of

- ``edgeskip:resnet20`` (any ``resnet<6n+2>``): the built-in CIFAR ResNet (``--depth`` is the shortcut);
- ``torchvision:<name>``: a torchvision classification model (``resnet18``, ``mobilenet_v2``, ...);
- ``timm:<name>``: a timm model (``resnet18``, ``resnet26d``, ...), created with ``pretrained=False``;
- ``package.module:factory``: the user's own; ``factory`` is called with ``num_classes=`` and ``in_channels=``
  where its signature accepts them, and bare where it accepts neither.

Pretrained weights never come from the network: ``--init-weights FILE`` (a state dict saved with ``torch.save``
or a ``.safetensors`` file) is loaded into the model before its blocks are wrapped.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeskip.errors import EdgeskipError

SOURCES = ("edgeskip", "torchvision", "timm")
_BUILTIN = re.compile(r"resnet(\d+)$")
_keep: list[Any] = []  # the torchvision op library defined by import_torchvision (kept alive)


def parse_model(spec: str) -> tuple[str, str]:
    """``"torchvision:resnet18"`` -> ``("torchvision", "resnet18")``; a user factory -> ``("module", "pkg.mod:fn")``."""
    source, sep, name = spec.partition(":")
    if not sep or not source or not name:
        raise EdgeskipError(
            f"--model must be SOURCE:NAME (edgeskip:resnet20, torchvision:resnet18, timm:resnet18 or "
            f"package.module:factory), got {spec!r}"
        )
    if source in SOURCES:
        return source, name
    if not re.fullmatch(r"[A-Za-z_][\w.]*", source) or not name.isidentifier():
        raise EdgeskipError(
            f"unknown model source {source!r} in {spec!r}: use one of {', '.join(SOURCES)} or package.module:factory"
        )
    return "module", spec


def builtin_depth(spec: str) -> int | None:
    """Depth of an ``edgeskip:resnet<d>`` spec, None for any other source."""
    source, name = parse_model(spec)
    if source != "edgeskip":
        return None
    m = _BUILTIN.match(name)
    if not m:
        raise EdgeskipError(f"unknown built-in model {name!r}: edgeskip builds resnet<6n+2> (resnet20, resnet56, ...)")
    return int(m.group(1))


def import_torchvision() -> Any:
    """Import torchvision beside a CPU-only torch.

    PyPI's torchvision wheels are CUDA builds: beside the CPU torch edgeskip pins, their operator library does not
    load, and torchvision 0.28's import then fails registering a fake kernel for ``torchvision::nms``
    (pytorch/vision#9085). The classification models edgeskip uses are pure PyTorch and need none of those
    operators, so where the library cannot load, the schemas of the two operators the import touches are defined
    (without kernels: calling ``torchvision.ops.nms`` still fails) and the import proceeds.
    """
    try:
        spec = importlib.util.find_spec("torchvision")
    except ValueError:
        spec = None
    if spec is None:
        raise EdgeskipError("torchvision models need torchvision: pip install 'edgeskip[design]'")
    if not _op_exists("nms"):
        so = next(Path(next(iter(spec.submodule_search_locations or []), ".")).glob("_C*.so"), None)
        try:
            if so is None:
                raise OSError("no operator library")
            torch.ops.load_library(str(so))
        except (OSError, RuntimeError):
            lib = torch.library.Library("torchvision", "FRAGMENT")
            for op in ("nms", "qnms"):
                lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _keep.append(lib)
    return importlib.import_module("torchvision")


def _op_exists(name: str) -> bool:
    try:
        return getattr(torch.ops.torchvision, name) is not None
    except (AttributeError, RuntimeError):
        return False


def _factory(source: str, name: str) -> Callable[..., Any]:
    if source == "torchvision":
        tv = import_torchvision()
        try:
            return tv.models.get_model_builder(name)
        except ValueError:
            raise EdgeskipError(f"unknown torchvision model {name!r}") from None
    if source == "timm":
        import_torchvision()  # timm imports torchvision
        try:
            import timm
        except ImportError:
            raise EdgeskipError("timm models need timm: pip install 'edgeskip[design]'") from None
        if not timm.is_model(name):
            raise EdgeskipError(f"unknown timm model {name!r}")
        return lambda **kw: timm.create_model(name, pretrained=False, **kw)
    mod_name, _, fn = name.partition(":")
    if importlib.util.find_spec("torchvision") is not None:
        import_torchvision()  # the user's module may import torchvision (or timm) itself
    try:
        mod = importlib.import_module(mod_name)
    except Exception as e:  # noqa: BLE001 - any failure importing the user's module is one message
        raise EdgeskipError(f"cannot import {mod_name!r} for --model {name}: {type(e).__name__}: {e}") from None
    f = getattr(mod, fn, None)
    if not callable(f):
        raise EdgeskipError(f"{mod_name} has no callable {fn!r} (--model {name})")
    return f


def _accepts(f: Callable[..., Any], arg: str) -> bool:
    try:
        params = inspect.signature(f).parameters
    except (TypeError, ValueError):
        return False
    return arg in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def create(spec: str, num_classes: int, in_channels: int, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """A freshly initialised network from a non-built-in source (see the module docstring)."""
    source, name = parse_model(spec)
    if source == "edgeskip":
        raise EdgeskipError("the built-in ResNet is built from its ResNetConfig, not through the model zoo")
    f = _factory(source, name)
    kw = dict(kwargs or {})
    if source == "timm":
        kw.update(num_classes=num_classes, in_chans=in_channels)
    elif source == "torchvision":
        kw["num_classes"] = num_classes
    else:
        if _accepts(f, "num_classes"):
            kw["num_classes"] = num_classes
        if _accepts(f, "in_channels"):
            kw["in_channels"] = in_channels
    try:
        model = f(**kw)
    except EdgeskipError:
        raise
    except Exception as e:  # noqa: BLE001 - a factory can raise anything; the user needs one line
        raise EdgeskipError(
            f"--model {spec}: the factory raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    if not isinstance(model, nn.Module):
        raise EdgeskipError(f"--model {spec}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    if source == "torchvision" and in_channels != 3:
        _first_conv_input(model, in_channels, spec)
    return model


def _first_conv_input(model: nn.Module, channels: int, spec: str) -> None:
    """Give a torchvision model's first convolution ``channels`` inputs (as timm's ``in_chans`` does)."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            parent, _, attr = name.rpartition(".")
            new = nn.Conv2d(
                channels,
                m.out_channels,
                m.kernel_size,
                m.stride,
                m.padding,
                m.dilation,
                m.groups,
                m.bias is not None,
                m.padding_mode,
            )
            setattr(model.get_submodule(parent) if parent else model, attr, new)
            return
    raise EdgeskipError(f"--model {spec} has no convolution to take {channels}-channel images")


def load_weights(model: nn.Module, path: str | Path) -> tuple[int, list[str]]:
    """Load a local state dict into ``model``: entries whose name and shape match are loaded, the rest (typically a
    classifier for another class count) are left initialised; returns (loaded, skipped names). Never unpickles."""
    p = Path(path)
    if not p.is_file():
        raise EdgeskipError(f"--init-weights {p} does not exist")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
                state = state["state_dict"]
    except Exception as e:  # noqa: BLE001 - junk files raise many types
        raise EdgeskipError(f"--init-weights {p} is not a readable state dict ({type(e).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EdgeskipError(f"--init-weights {p} is not a state dict of tensors")
    own = model.state_dict()
    ok = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(ok) < len(own) / 2:
        raise EdgeskipError(
            f"--init-weights {p} matches {len(ok)} of the model's {len(own)} tensors by name and "
            f"shape: weights of another model?"
        )
    model.load_state_dict(ok, strict=False)
    return len(ok), sorted(set(own) - set(ok))

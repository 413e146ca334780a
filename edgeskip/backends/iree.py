"""IREE runtime (``iree-base-runtime``): compiled modules over one shared weight archive.

Every function of the module(s) is bound in one ``VmContext`` with one ``ParameterIndex`` over the archive:
switching configs calls another function; weights are never reloaded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeskip.errors import EdgeskipError

PARAM_SCOPE = "model"


def parameter_index(path: str | os.PathLike):
    """An ``iree.runtime.ParameterIndex`` over the archive at ``path``."""
    import iree.runtime as rt

    idx = rt.ParameterIndex()
    idx.load(str(path))
    return idx


class SharedIreeExecutor:
    """All config modules in one VmContext over one ParameterIndex: ``run(k, image)``.

    With ``functions``, ``modules`` must be a single (merged) module and the invokers are its functions
    in that order.
    """

    def __init__(
        self,
        weights: str | os.PathLike,
        modules: Sequence[str | os.PathLike],
        driver: str = "local-sync",
        function: str = "main_graph",
        functions: Sequence[str] | None = None,
        scope: str = PARAM_SCOPE,
    ) -> None:
        import iree.runtime as rt

        self.config = rt.Config(driver)
        inst = self.config.vm_instance
        self.index = parameter_index(Path(weights))
        params = rt.create_io_parameters_module(inst, self.index.create_provider(scope=scope))
        hal = rt.create_hal_module(inst, self.config.device)
        self.vm_modules = [rt.VmModule.mmap(inst, str(p)) for p in modules]
        self.context = rt.VmContext(inst, modules=[hal, params, *self.vm_modules])
        self.invokers = []
        wanted = (
            [(m, function) for m in self.vm_modules]
            if functions is None
            else [(self.vm_modules[0], f) for f in functions]
        )
        for m, name in wanted:
            fn = m.lookup_function(name)
            if fn is None:
                raise EdgeskipError(f"module {m.name} has no function {name}")
            self.invokers.append(rt.FunctionInvoker(self.context, self.config.device, fn))

    def __len__(self) -> int:
        return len(self.invokers)

    def run(self, k: int, *args: Any) -> np.ndarray:
        """First result of function ``k`` on host memory."""
        out = self.invokers[k](*args)
        return np.asarray((out[0] if isinstance(out, (tuple, list)) else out).to_host())

    def run_all(self, k: int, *args: Any) -> list[np.ndarray]:
        """Every result of function ``k`` on host memory."""
        out = self.invokers[k](*args)
        return [np.asarray(o.to_host()) for o in (out if isinstance(out, (tuple, list)) else [out])]


class IreeModule:
    """One .vmfb loaded into its own context (no parameter archive); ``module(*arrays)`` calls its entry."""

    def __init__(self, path: str | os.PathLike, driver: str = "local-sync", function: str = "main_graph") -> None:
        import iree.runtime as rt

        self.config = rt.Config(driver)
        self.ctx = rt.SystemContext(config=self.config)
        self.vm_module = rt.VmModule.mmap(self.config.vm_instance, str(path))
        self.ctx.add_vm_module(self.vm_module)
        self.fn = self.ctx.modules[self.vm_module.name][function]

    def __call__(self, *args: Any) -> np.ndarray:
        return np.asarray(self.fn(*args).to_host())


class IreeSkipNet:
    """A learned-gate module (SkipNet or DFS) over its weight archive: ``run(image) -> (logits, decisions)``
    (SkipNet: executed, bool; DFS: the option chosen per block)."""

    def __init__(
        self,
        weights: str | os.PathLike,
        vmfb: str | os.PathLike,
        driver: str = "local-sync",
        function: str = "main_graph",
    ) -> None:
        self.ex = SharedIreeExecutor(weights, [vmfb], driver=driver, function=function)

    def run(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, decisions = self.ex.run_all(0, image)
        return logits, decisions

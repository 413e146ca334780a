"""Run compiled IREE modules on this host (iree-base-runtime)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np


class IreeModule:
    """One .vmfb loaded into its own context; ``module(*arrays)`` calls its entry function."""

    def __init__(self, path: str | os.PathLike, driver: str = "local-sync", function: str = "main_graph") -> None:
        import iree.runtime as rt

        self.config = rt.Config(driver)
        self.ctx = rt.SystemContext(config=self.config)
        self.vm_module = rt.VmModule.mmap(self.config.vm_instance, str(path))
        self.ctx.add_vm_module(self.vm_module)
        self.fn = self.ctx.modules[self.vm_module.name][function]

    def __call__(self, *args: Any) -> np.ndarray:
        return np.asarray(self.fn(*args).to_host())

"""IREE runtime (``iree-base-runtime``): compiled modules over one shared weight archive.

Every function of the module(s) is bound in one ``VmContext`` with one ``ParameterIndex`` over the archive:
switching configs calls another function; weights are never reloaded.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeskip.errors import EdgeskipError

PARAM_SCOPE = "model"
# A module compiled with a raised per-dispatch stack limit (edgeskip.export.iree_compile retries with one where
# IREE's default, 32 KiB, refuses a model) records it in its target's flags; prepare_stack makes room for it.
STACK_LIMIT_FLAG = "--iree-llvmcpu-stack-allocation-limit"
DEFAULT_STACK_LIMIT = 32 * 1024
TASK_WORKER_STACK = 128 * 1024  # IREE's --task_worker_stack_size default


def stack_limit(flags: Sequence[str]) -> int:
    """The per-dispatch stack limit a module was compiled with (IREE's default where the flags do not raise it)."""
    given = [f.split("=", 1)[1] for f in flags if f.startswith(STACK_LIMIT_FLAG + "=")]
    return int(given[-1]) if given and given[-1].isdigit() else DEFAULT_STACK_LIMIT


# IREE's caching allocator, bounded (at most 8 free blocks, 16 MiB): a call's transient buffers (two of ~230 KB on
# CIFAR ResNet-20) are reused instead of allocated and freed per call by the heap. Measured on the runtime's path
# (AVX-512 host): 2% off at full depth, 4% with every block skipped (bench/README section 14.4).
ALLOCATOR = "caching:device_local=*;16mib;8"
_DEVICES: dict[str, Any] = {}
_DEVICES_LOCK = threading.Lock()


def _device(driver: str) -> Any:
    """One HAL device per driver in this process, with :data:`ALLOCATOR` (as ``iree.runtime.Config(driver)``
    keeps one device per driver, with the plain allocator)."""
    import iree.runtime as rt

    with _DEVICES_LOCK:
        dev = _DEVICES.get(driver)
        if dev is None:
            dev = _DEVICES[driver] = rt.get_driver(driver).create_default_device(allocators=[ALLOCATOR])
    return dev


def prepare_stack(flags: Sequence[str], driver: str) -> None:
    """Room for the dispatches of a module compiled with ``flags``, before its device is created: twice the limit.

    ``local-task`` runs dispatches on IREE's worker threads (128 KiB stacks by default, which a 145 KiB dispatch
    overflows: a segfault, measured), so their ``--task_worker_stack_size`` is raised (a process-wide flag).
    ``local-sync`` runs them on the calling thread: glibc gives the main thread and every Python thread
    ``ulimit -s`` (8 MiB by default); a smaller one is a one-line error."""
    limit = stack_limit(flags)
    if limit <= DEFAULT_STACK_LIMIT:
        return
    need = 2 * limit
    if driver.startswith("local-task"):
        import iree.runtime as rt

        rt.flags.parse_flags(f"--task_worker_stack_size={max(need, TASK_WORKER_STACK)}")
        return
    import resource
    import threading

    soft = resource.getrlimit(resource.RLIMIT_STACK)[0]
    size = threading.stack_size()
    if (soft != resource.RLIM_INFINITY and soft < need) or 0 < size < need:
        have = size if 0 < size < need else soft
        raise EdgeskipError(
            f"this module's dispatches need {limit} bytes of stack (it was compiled with {STACK_LIMIT_FLAG}="
            f"{limit}); this thread's stack is {have} bytes: raise it to at least {need} (ulimit -s {need // 1024})"
        )


def _abi(fn: Any) -> dict:
    """A VM function's ``iree.abi`` reflection ({"a": args, "r": results}); {} when it has none."""
    import json

    text = fn.reflection.get("iree.abi")
    return json.loads(text) if text else {}


def parameter_index(path: str | os.PathLike):
    """An ``iree.runtime.ParameterIndex`` over the archive at ``path``."""
    import iree.runtime as rt

    idx = rt.ParameterIndex()
    idx.load(str(path))
    return idx


@functools.cache
def _dtypes() -> dict[int, np.dtype]:
    """HAL element type -> numpy dtype, for the results the bundles' functions return."""
    from iree.runtime import HalElementType as E

    pairs = [(E.FLOAT_32, np.float32), (E.FLOAT_16, np.float16), (E.FLOAT_64, np.float64), (E.BOOL_8, np.bool_)]
    pairs += [(E.INT_8, np.int8), (E.SINT_8, np.int8), (E.UINT_8, np.uint8), (E.INT_32, np.int32)]
    pairs += [(E.SINT_32, np.int32), (E.INT_64, np.int64), (E.SINT_64, np.int64)]
    return {int(e): np.dtype(d) for e, d in pairs}


class SharedIreeExecutor:
    """All config modules in one VmContext over one ParameterIndex: ``run(k, image)``.

    With ``functions``, ``modules`` must be a single (merged) module and ``run(k)`` calls its k-th function
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

        self.config = rt.Config(device=_device(driver))
        inst = self.config.vm_instance
        self.index = parameter_index(Path(weights))
        params = rt.create_io_parameters_module(inst, self.index.create_provider(scope=scope))
        hal = rt.create_hal_module(inst, self.config.device)
        self.vm_modules = [rt.VmModule.mmap(inst, str(p)) for p in modules]
        self.context = rt.VmContext(inst, modules=[hal, params, *self.vm_modules])
        self.functions = []
        wanted = (
            [(m, function) for m in self.vm_modules]
            if functions is None
            else [(self.vm_modules[0], f) for f in functions]
        )
        for m, name in wanted:
            fn = m.lookup_function(name)
            if fn is None:
                raise EdgeskipError(f"module {m.name} has no function {name}")
            self.functions.append(fn)
        self._arity = [max(1, len(_abi(fn).get("r", []))) for fn in self.functions]
        self._rt, self._types = rt, _dtypes()
        self._device = self.config.device
        self._allocate = self._device.allocator.allocate_buffer_copy
        self._memory, self._usage = rt.MemoryType.DEVICE_LOCAL, rt.BufferUsage.DEFAULT  # as FunctionInvoker

    def __len__(self) -> int:
        return len(self.functions)

    def run(self, k: int, *args: np.ndarray) -> np.ndarray:
        """First result of function ``k`` on host memory."""
        return self.run_all(k, *args)[0]

    def run_all(self, k: int, *args: np.ndarray) -> list[np.ndarray]:
        """Every result of function ``k`` on host memory.

        The VM's own invocation, not ``FunctionInvoker``: one buffer copy per input, the function called
        directly, each result read through a host mapping (bench/README section 14: 18 us less per call here)."""
        rt = self._rt
        inputs = rt.VmVariantList(len(args))
        for a in args:
            a = np.ascontiguousarray(a)
            element = rt.array_interop.map_dtype_to_element_type(a.dtype)
            view = self._allocate(self._memory, self._usage, self._device, a, element)
            inputs.push_ref(view)
        results = rt.VmVariantList(self._arity[k])
        self.context.invoke(self.functions[k], inputs, results)
        out = []
        for i in range(results.size):
            view = results.get_as_object(i, rt.HalBufferView)
            dtype = self._types.get(int(view.element_type))
            if dtype is None:
                raise EdgeskipError(f"function {k} returns an unsupported element type {view.element_type}")
            out.append(np.array(view.map().asarray(view.shape, dtype)))  # a copy: the device buffer is released
        return out


class IreeModule:
    """One .vmfb loaded into its own context (no parameter archive); ``module(*arrays)`` calls its entry."""

    def __init__(self, path: str | os.PathLike, driver: str = "local-sync", function: str = "main_graph") -> None:
        import iree.runtime as rt

        self.config = rt.Config(device=_device(driver))
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

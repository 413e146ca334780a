"""Choices of the runtime's options, declared once (the CLI's click.Choice lists and the library share them)."""

BACKENDS = ("auto", "iree", "onnxruntime")
EVENT_LOOPS = ("asyncio", "uvloop")
DRIVERS = ("local-sync", "local-task")  # IREE HAL drivers for the llvm-cpu modules bundles hold
POLICIES = ("paper", "rate", "mix")  # adaptation policies (edgeskip.runtime.policies); --config N is the fixed one
PATTERNS = ("paper", "poisson", "onoff", "ramp", "trace")  # arrival patterns of `edgeskip bench` (bench.workload)

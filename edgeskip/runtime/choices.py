"""Choices of the runtime's options, declared once (the CLI's click.Choice lists and the library share them)."""

BACKENDS = ("auto", "iree", "onnxruntime")
EVENT_LOOPS = ("asyncio", "uvloop")
DRIVERS = ("local-sync", "local-task")  # IREE HAL drivers for the llvm-cpu modules bundles hold

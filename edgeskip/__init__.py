"""edgeskip: runtime-adjustable depth for CNNs on edge boards.

Pipeline (one subpackage per stage): ``data`` -> ``models`` -> ``train`` -> ``pareto``.
"""

__version__ = "0.1.0"

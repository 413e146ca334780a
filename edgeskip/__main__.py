"""``python -m edgeskip`` (and ``torchrun -m edgeskip``) runs the command-line interface."""

from edgeskip.cli import main

main()

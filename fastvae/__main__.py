"""``python -m fastvae`` (and ``torchrun -m fastvae``): the ``fastvae`` command."""
import sys

from .cli import console

sys.exit(console())

"""``python -m mlxarm.lm``: the mlxarm-lm command line."""
import sys

from .cli import main

sys.exit(main())

"""``python -m quicksilver.cli``: the same command as the ``quicksilver`` script (torchrun uses it)."""
import sys

from . import main

sys.exit(main())

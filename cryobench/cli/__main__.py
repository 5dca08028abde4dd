"""``python -m cryobench.cli``: the command line."""
import sys

from cryobench.cli import main

sys.exit(main())

"""``python -m precompute``: the command line (``precompute.cli``)."""

import sys

from precompute.cli import main

sys.exit(main())

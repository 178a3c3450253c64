"""``python -m bench.cli``: the ``elbobench`` command."""

import sys

from bench.cli import main

sys.exit(main())

"""``python -m gdbpool``: the ``gdbpool`` command (see :func:`gdbpool.cli.main`)."""

import sys

from gdbpool.cli import main

sys.exit(main())

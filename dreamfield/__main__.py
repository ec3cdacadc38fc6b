"""``python -m dreamfield``: the same as the ``dreamfield`` command."""

import sys

from dreamfield.cli import main

sys.exit(main())

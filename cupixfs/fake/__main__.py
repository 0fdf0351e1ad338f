"""``python -m cupixfs.fake``: see :mod:`cupixfs.fake.cli`."""

import sys

from .cli import main

sys.exit(main())

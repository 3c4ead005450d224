"""``python -m nodeapp`` is the ``orderflow`` command."""

import sys

from nodeapp.cli import main

sys.exit(main())

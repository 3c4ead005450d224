"""``python -m nodeapp`` is the ``orderflow`` command."""

import sys

from nodeapp.cli.main import main

sys.exit(main())

"""``python -m api [api flags]``: what ``orderflow api`` runs."""

import sys

from nodeapp.cli.main import parse
from nodeapp.core.errors import OrderflowError
from nodeapp.core.logs import configure_logging


def main() -> int:
    argv = sys.argv[1:]
    if not argv or argv[0] != "api":
        argv = ["api", *argv]
    try:
        _, settings = parse(argv)
    except OrderflowError as exc:
        print(f"orderflow api: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    from api.server import serve

    serve(settings)
    return 0


sys.exit(main())

"""orderflow's HTTP edge: validates and submits orders, answers where they stand.

``create_app(settings)`` builds the Litestar app; ``api.server.serve`` runs it under uvicorn.
The domain lives in ``nodeapp``; this package only translates between HTTP and it.
"""

from api.app import create_app

__all__ = ["create_app"]

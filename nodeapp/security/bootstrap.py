"""The first admin token of a local cluster: ``orderflow up`` keeps one under its data dir.

DESIGN: ``up`` creates ``ORDERFLOW_ADMIN_TOKEN`` on first start, keeps it (mode 0600) and
prints it; later starts reuse it, so scripts and the operator keep working across restarts.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path
from typing import Final

from nodeapp.core.errors import OrderflowError
from nodeapp.security.tokens import SECRET_BYTES

ADMIN_TOKEN_FILE: Final = "admin-token"
ADMIN_TOKEN_PREFIX: Final = "of_admin_"  # recognisable like every token; never parsed


def new_admin_token() -> str:
    """A fresh value for ``ORDERFLOW_ADMIN_TOKEN`` (256 random bits)."""
    return ADMIN_TOKEN_PREFIX + secrets.token_urlsafe(SECRET_BYTES)


def keep_admin_token(data_dir: Path) -> tuple[str, bool]:
    """``(token, created)``: the token kept in ``data_dir``, or a new one written there, readable
    by its owner only. A kept file others can read is refused rather than trusted."""
    path = data_dir / ADMIN_TOKEN_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            raise OrderflowError(f"{path} is readable by others: chmod 600 or delete it") from None
        token = path.read_text(encoding="utf-8").strip()
        if not token:
            raise OrderflowError(f"{path} is empty; delete it to make a new admin token") from None
        return token, False
    token = new_admin_token()
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(token + "\n")
    return token, True

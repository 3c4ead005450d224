"""Secrets that ``orderflow up`` generates once and keeps under its data folder.

A restart of ``up`` must keep them: a payment verdict or a notification signed before the
restart is verified after it, and a webhook receiver configured with the notification secret
keeps working. Each secret is a file of its own, mode 0600 in a folder of mode 0700, written
whole (a temporary file renamed into place) so a crash never leaves half a secret. Values are
never printed or logged; paths may be.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Final

log = logging.getLogger("orderflow.up")

SECRET_BYTES: Final = 32  # 256 bits of randomness per secret


def new_secret() -> str:
    """Random, URL-safe text."""
    return secrets.token_urlsafe(SECRET_BYTES)


def kept_secret(folder: Path, name: str, generate: Callable[[], str] = new_secret) -> str:
    """The secret kept in ``folder/name``, made by ``generate`` on first use.
    ``OSError`` if the folder cannot be written."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / name
    try:
        value = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        value = ""
    if value:
        _owner_only(path)
        return value
    value = generate()
    write_private(path, value + "\n")
    log.info("generated %s (kept in %s)", name, path, extra={"event": "up.secret_generated"})
    return value


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole (staged, then renamed), mode 0600 from the start."""
    staging = path.with_name(path.name + ".new")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        os.fchmod(out.fileno(), 0o600)  # a leftover staging file may have had another mode
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(staging, path)


def _owner_only(path: Path) -> None:
    """A kept secret readable by others (copied by hand, say) is made private again."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        path.chmod(0o600)
        log.warning(
            "%s was readable by others (mode %o); now 0600", path, mode,
            extra={"event": "up.secret_mode_fixed"},
        )  # fmt: skip

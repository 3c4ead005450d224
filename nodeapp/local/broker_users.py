"""The broker's three users (api, node, admin) and their passwords, for a local nats-server.

``nats-auth.conf`` (packaged beside this module, included by ``nats.conf``) defines the users
and what each may do; their passwords reach nats-server as environment variables, and each
process gets its own user in ``NATS_URL`` (ADR 0015). ``orderflow up`` keeps generated passwords
under its data folder (``kept``); the test harness and the loopback cluster bring theirs.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
from pathlib import Path
from typing import Final, Literal

import msgspec

from nodeapp.core.brokerurl import credentials, redacted, with_user
from nodeapp.core.errors import OrderflowError
from nodeapp.core.settings import Settings
from nodeapp.local.secret_files import kept_secret, write_private

Role = Literal["api", "node", "admin"]
ROLES: Final[tuple[Role, ...]] = ("api", "node", "admin")
# A file beside this module (not a resource copied elsewhere): nats.conf includes it by path.
AUTH_CONFIG: Final = Path(__file__).with_name("nats-auth.conf")
PASSWORD_ENV: Final[dict[Role, str]] = {
    role: f"ORDERFLOW_NATS_{role.upper()}_PASSWORD" for role in ROLES
}
# nats-server reads a variable's value as config: a letter first, then letters and digits, keeps
# it a string (``123`` would be a number, ``true`` a boolean, ``-x`` a parse error).
PASSWORD_PATTERN: Final = re.compile(r"[A-Za-z][A-Za-z0-9]{15,}")
CONTEXT_FILE: Final = "nats-admin-context.json"  # for `nats --context <this file>`


def new_password() -> str:
    """192 random bits as ``p`` + 48 hex digits: a string to nats-server, safe in a URL."""
    return "p" + secrets.token_hex(24)


class BrokerUsers(msgspec.Struct, frozen=True):
    """The password of each role; ``repr`` never shows one."""

    passwords: dict[str, str]

    def __repr__(self) -> str:
        return f"BrokerUsers(roles={sorted(self.passwords)})"

    @classmethod
    def generate(cls) -> BrokerUsers:
        return cls({role: new_password() for role in ROLES})

    @classmethod
    def kept(cls, folder: Path) -> BrokerUsers:
        """The passwords kept in ``folder/nats-<role>`` (mode 0600), made on first use.

        ``OSError`` if the folder cannot be written; ``ValueError`` naming the file whose
        password nats-server could not take (edited by hand)."""
        passwords: dict[str, str] = {}
        for role in ROLES:
            password = kept_secret(folder, f"nats-{role}", new_password)
            if not PASSWORD_PATTERN.fullmatch(password):
                raise ValueError(
                    f"{folder / f'nats-{role}'}: a broker password must be a letter then at least "
                    "15 letters or digits"
                )
            passwords[role] = password
        return cls(passwords)

    def server_env(self) -> dict[str, str]:
        """The variables ``nats-auth.conf`` reads, for nats-server's environment."""
        return {PASSWORD_ENV[role]: self.passwords[role] for role in ROLES}

    def url(self, role: Role, nats_url: str) -> str:
        """``nats_url`` (any credentials in it dropped) as ``role``'s user."""
        return with_user(nats_url, role, self.passwords[role])

    def settings(self, settings: Settings, role: Role) -> Settings:
        """``settings`` acting as ``role`` on the same servers."""
        return msgspec.structs.replace(settings, nats_url=self.url(role, settings.nats_url))

    def write_context(self, folder: Path, nats_url: str) -> Path:
        """A ``nats`` CLI context for the admin user (``nats --context <path> stream ls``),
        mode 0600 beside the passwords; the file holds the password, the banner only its path."""
        path = folder / CONTEXT_FILE
        context = {
            "description": f"orderflow admin on {redacted(nats_url)}",
            "url": ",".join(credentials(nats_url).servers),
            "user": "admin",
            "password": self.passwords["admin"],
        }
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(path, json.dumps(context, indent=2))
        return path


def local_users(folder: Path, url: str) -> BrokerUsers:
    """``orderflow up``'s users: passwords kept in ``folder`` (made on first start) and the
    admin's ``nats`` CLI context for ``url`` beside them; ``OrderflowError`` saying why not."""
    try:
        users = BrokerUsers.kept(folder)
        users.write_context(folder, url)
    except OSError as exc:
        why = f"cannot keep the broker users under {folder}: {exc.strerror}"
        raise OrderflowError(why) from None
    except ValueError as exc:
        raise OrderflowError(str(exc)) from None
    return users


def admin_lines(folder: Path, url: str) -> str:
    """The banner's lines for acting as admin, with the password read from its file by the
    shell, never printed: the ``nats`` CLI (its context file) and ``orderflow`` commands that
    talk to the broker (``NATS_URL``)."""
    context = shlex.quote(str(folder / CONTEXT_FILE))
    password = shlex.quote(str(folder / "nats-admin"))
    netloc = url.split("://", 1)[-1]
    return (
        f"  nats     nats --context {context} stream ls  (the nats CLI as admin)\n"
        f'  admin    export NATS_URL="nats://admin:$(cat {password})@{netloc}"'
        "  (orderflow token, catalog load, inspect)"
    )


def server_environment(users: BrokerUsers | None) -> dict[str, str] | None:
    """nats-server's environment: ours plus the passwords (None: ours unchanged)."""
    return None if users is None else {**os.environ, **users.server_env()}

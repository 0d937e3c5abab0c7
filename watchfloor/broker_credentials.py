"""Mosquitto password-file entries, written in Python (no ``mosquitto_passwd`` needed): the
services' accounts on their listener (cameras' logins are dynamic: services/device_accounts.py).

Mosquitto 2 reads ``username:$7$<iterations>$<base64 salt>$<base64 hash>``, where the hash is
PBKDF2-HMAC-SHA512 of the password over the 12 raw salt bytes, 64 bytes long (the format of
``mosquitto_passwd`` in 2.0; checked against it in tests/test_security_broker.py). Device
secrets are 256 random bits, so the iteration count guards nothing that brute force could
reach; Mosquitto's own default (101) keeps each connect cheap when a fleet reconnects at once.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from services.device_accounts import mosquitto_password

__all__ = ["mosquitto_hash", "set_password"]

_USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


def mosquitto_hash(password: str, *, salt: bytes | None = None, iterations: int | None = None) -> str:
    """The ``$7$`` hash Mosquitto 2 verifies ``password`` against (the dynamic-security
    plugin's stored password, written as a password-file entry)."""
    stored = mosquitto_password(password, salt=salt, iterations=iterations)
    return f"$7${stored['iterations']}${stored['salt']}${stored['password']}"


def _read(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _write(path: Path, lines: list[str]) -> None:
    """Replace the file in one rename, so a broker reloading it never reads half of it.

    A new file is readable by its owner only (it holds password hashes); an existing file
    keeps its mode and owner's choice of permissions.
    """
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write("".join(f"{line}\n" for line in lines))
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def set_password(path: Path, *, username: str, password: str) -> None:
    """Add ``username`` to the password file, or replace its entry. Reload the broker after."""
    if not _USERNAME.match(username):
        raise ValueError(f"not a valid broker username: {username!r}")
    entry = f"{username}:{mosquitto_hash(password)}"
    lines = [line for line in _read(path) if line.split(":", 1)[0] != username]
    _write(path, [*lines, entry])

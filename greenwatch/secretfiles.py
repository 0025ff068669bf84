"""Reading passwords and tokens from files (e.g. systemd ``LoadCredential=``), never from argv."""

from __future__ import annotations

import stat
from pathlib import Path

__all__ = ["SecretFileError", "read_secret", "check_owner_only"]


class SecretFileError(ValueError):
    """A secret file that is missing, unreadable or readable by other users."""


def read_secret(path: str) -> str:
    """Read a password or token from a file that only its owner may read."""
    p = Path(path)
    try:
        st = p.stat()
        text = p.read_text().strip()
    except OSError as exc:
        raise SecretFileError(f"cannot read secret file {p}: {exc.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretFileError(f"secret file {p} is readable by other users; run: chmod 600 {p}")
    return text


def check_owner_only(path: str) -> None:
    """Refuse a file that holds a secret (e.g. a TLS private key) if users other than its owner may read it."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as exc:
        raise SecretFileError(f"cannot read secret file {p}: {exc.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretFileError(f"secret file {p} is readable by other users; run: chmod 600 {p}")

"""Credentials the platform generates for itself, and keeping credentials out of what is shown.

A generated credential (the embedded Redis's password, the Prefect server's auth string) lives
in `<state>/secrets/<name>`: the folder is 0700 and the file 0600, linked into place whole so
two processes starting at once agree on one value. A user who sets the credential in maquette.yaml
or a `MAQUETTE_*` variable never gets a generated one.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from pathlib import Path

from maquette.config import Settings
from maquette.data.shared_files import private_state, replace_whole
from maquette.errors import ConfigError

SECRETS_DIR = "secrets"
REDACTED = "***"
# A URL in a text: scheme:// and everything up to the next whitespace (a password may hold
# quotes or brackets, so nothing else ends it).
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://\S+")
# redis-py also takes the password as a query parameter: redis://host/0?password=...
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&\s]*")


def secrets_dir(settings: Settings) -> Path:
    """`<state>/secrets`, created private (0700) if missing."""
    state = private_state(settings)
    folder = state / SECRETS_DIR
    folder.mkdir(exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    return folder


def generated_secret(settings: Settings, name: str, nbytes: int = 32) -> str:
    """The credential `name` of this project: read from `<state>/secrets/<name>`, or generated
    there on first use (URL-safe, `nbytes` random bytes). The file must stay private."""
    path = secrets_dir(settings) / name
    if path.exists():
        return _read_private(path)
    # Written in full to a private temp file, then linked into place: a link fails if the
    # name exists, so two processes starting at once agree on the first one's value, and
    # neither ever reads a half-written file.
    value = secrets.token_urlsafe(nbytes)
    temp = path.with_name(f".{name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(value + "\n")
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temp, path)
        except FileExistsError:
            return _read_private(path)
    finally:
        temp.unlink(missing_ok=True)
    return value


def _read_private(path: Path) -> str:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{path} holds a credential but others can read it (mode {mode:o}).",
            f"Run `chmod 600 {path}` (and check who read it), then retry.",
        )
    value = path.read_text().strip()
    if not value:
        raise ConfigError(
            f"{path} is empty.", "Delete it to have a new credential generated, then retry."
        )
    return value


def redact(text: str) -> str:
    """`text` with the credentials of every URL in it replaced by ***: a user and password
    before the host, and a `password=` query parameter."""
    return _URL.sub(lambda m: _without(m.group(0), REDACTED), text)


def without_credentials(url: str) -> str:
    """`url` with no user or password (an address to show or store)."""
    return _without(url, None)


def _without(url: str, mark: str | None) -> str:
    """The URL's userinfo (everything up to its last @: a password may hold unencoded / ? # @
    ) or quotes) replaced by `mark` or dropped, and a password= parameter hidden. When in doubt
    more is hidden, never less: an @ in a path hides what comes before it."""
    scheme, _, rest = url.partition("://")
    at = rest.rfind("@")
    if at >= 0:
        rest = f"{mark}@{rest[at + 1 :]}" if mark else rest[at + 1 :]
    hidden = _QUERY_PASSWORD.sub(lambda m: m.group(1) + (mark or ""), rest)
    return f"{scheme}://{hidden}"


def write_private(path: Path, text: str) -> None:
    """Replace `path` with `text` at once (a reader never sees half of it), readable by this
    user only."""
    replace_whole(path, text, 0o600)

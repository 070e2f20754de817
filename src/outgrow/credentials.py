"""Where the CLI/SDK find the control plane: ``$XDG_CONFIG_HOME/outgrow/credentials.json``
(``{"url", "token"}``, mode 0600), overridden by ``OUTGROW_URL`` / ``OUTGROW_TOKEN``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from outgrow.errors import AuthError


@dataclass(frozen=True)
class Credentials:
    url: str
    token: str


def credentials_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "outgrow" / "credentials.json"


def save(creds: Credentials, path: Path | None = None) -> Path:
    path = path or credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": creds.url, "token": creds.token}, f)
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return path


def load(path: Path | None = None) -> Credentials:
    url, token = os.environ.get("OUTGROW_URL"), os.environ.get("OUTGROW_TOKEN")
    if url and token:
        return Credentials(url.rstrip("/"), token)
    path = path or credentials_path()
    try:
        data = json.loads(path.read_text())
        return Credentials((url or data["url"]).rstrip("/"), token or data["token"])
    except FileNotFoundError:
        raise AuthError(
            f"not logged in: no {path}; run `outgrow login URL` or set OUTGROW_URL and "
            "OUTGROW_TOKEN"
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise AuthError(f"{path} is not a valid credentials file: {exc}") from exc

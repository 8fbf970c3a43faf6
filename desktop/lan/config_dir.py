"""The app's private config folder, and the JSON files kept in it.

`config_dir()` is `$EARSHOT_CONFIG_DIR` when set (tests, portable installs), else
`platformdirs.user_config_path("earshot")`; it is created on demand with mode 0700.

`read_private_json()` / `write_private_json()` are the file rules shared by the paired-server
pins and the fallback token file: written atomically (a temp file made by `os.open(..., 0o600)`
in the same folder, then `os.replace`), so a reader in another process (the CLI, the running
app) sees the old file or the new one, never half of one; a file found readable by others is
tightened back to 0600; an unreadable or corrupt file is logged and read as empty, never raised.
No Qt here: the CLI uses this too. Callers serialise their own read-modify-write cycles.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import stat
from pathlib import Path
from typing import Any

import platformdirs

log = logging.getLogger(__name__)

ENV_VAR = "EARSHOT_CONFIG_DIR"


def config_dir() -> Path:
    """The folder for Earshot's own config files, created (0700) if missing."""
    override = os.environ.get(ENV_VAR)
    path = Path(override).expanduser() if override else platformdirs.user_config_path("earshot")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def read_private_json(path: Path) -> dict[str, Any]:
    """The JSON object in `path`; {} when the file is missing, unreadable or corrupt (logged).

    A file readable or writable by group/others is re-tightened to 0600 (logged)."""
    try:
        if os.name == "posix":
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                log.warning("%s had permissions %o: tightening to 600", path, mode)
                path.chmod(0o600)
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as e:
        log.warning("cannot read %s (%s): treating it as empty", path, e)
        return {}
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        log.warning("%s is corrupt (%s): treating it as empty", path, e)
        return {}
    if not isinstance(data, dict):
        log.warning("%s is corrupt (not a JSON object): treating it as empty", path)
        return {}
    return data


def write_private_json(path: Path, data: dict[str, Any]) -> None:
    """Replace `path` atomically with `data` as JSON, mode 0600; its folder is created 0700.

    Raises OSError when the file cannot be written (the old file is then left as it was)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(json.dumps(data, indent=2, sort_keys=True).encode("utf-8") + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

"""File helpers every layer uses: JSON written atomically, a file's SHA-256, and the
permissions plain open / mkdir would give a file made by mkstemp / mkdtemp."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile


def sha256_file(path: str) -> str:
    """The SHA-256 of a file's bytes, as 64 hex digits (read in 4 MB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def normal_mode(path: str, mode: int) -> None:
    """mkdtemp / mkstemp create 0700 / 0600; give what plain open / mkdir would (umask)."""
    os.chmod(path, mode & ~umask())


def write_json_atomic(path: str, obj) -> None:
    """Write JSON to a temporary file beside `path`, then rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False)
        normal_mode(tmp, 0o666)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise

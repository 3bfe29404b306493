"""An export's checksums.json: the SHA-256 of every file the export wrote, so that a flipped
byte (a bad disk, a truncated copy, an edit) is an error at load rather than a model that
silently scores differently. Written by every save; checked at load when present (exports
made before it have none) unless the caller opts out (`from_pretrained(..., verify=False)`).

    {"algorithm": "sha256", "files": {"config.json": "<64 hex digits>", ...}}
"""
from __future__ import annotations

import json
import os
import re
import stat

from recsys.data.files import sha256_file

NAME = "checksums.json"
_HEX = re.compile(r"[0-9a-f]{64}")
_MAX_BYTES = 1 << 16


class ChecksumError(ValueError):
    """A file of an export does not match its checksums.json; the message names the file."""


def write_checksums(folder: str, names) -> None:
    """checksums.json in `folder` for the files `names` (those present)."""
    files = {n: sha256_file(os.path.join(folder, n)) for n in sorted(names)
             if n != NAME and os.path.isfile(os.path.join(folder, n))}
    with open(os.path.join(folder, NAME), "w", encoding="utf-8") as f:
        json.dump({"algorithm": "sha256", "files": files}, f, indent=1)


def verify_checksums(folder: str, owned) -> int:
    """Check every file checksums.json lists (names from `owned` only: it can point nowhere
    else) and that every owned file present is listed. Returns the number checked; 0 when the
    export has no checksums.json. ChecksumError, one line naming the file, otherwise."""
    path = os.path.join(folder, NAME)
    if not os.path.lexists(path):
        return 0
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_BYTES:
            raise ChecksumError(f"{path} is not a regular file of at most {_MAX_BYTES:,} bytes")
        with open(path, "rb") as f:
            obj = json.loads(f.read(_MAX_BYTES + 1).decode("utf-8"))
    except (OSError, ValueError) as e:
        raise ChecksumError(f"{path} cannot be read as JSON: {str(e).splitlines()[0]}") from None
    files = obj.get("files") if isinstance(obj, dict) else None
    if not (isinstance(obj, dict) and obj.get("algorithm") == "sha256" and isinstance(files, dict)
            and all(isinstance(k, str) and isinstance(v, str) and _HEX.fullmatch(v) for k, v in files.items())):
        raise ChecksumError(f"{path} must be {{\"algorithm\": \"sha256\", \"files\": {{name: 64 hex digits}}}}")
    stray = sorted(set(files) - set(owned) - {NAME})
    if stray:
        raise ChecksumError(f"{path} lists {stray[0]!r}, which is not a file an export writes")
    unlisted = sorted(n for n in owned if n != NAME and n not in files and os.path.lexists(os.path.join(folder, n)))
    if unlisted:
        raise ChecksumError(f"{os.path.join(folder, unlisted[0])} is not in {NAME}: it was added after the "
                            f"export was saved (remove it, or delete {NAME} to load without checksums)")
    for name, want in sorted(files.items()):
        file = os.path.join(folder, name)
        if not os.path.isfile(file):
            raise ChecksumError(f"export file missing: {file} (listed in {NAME})")
        if sha256_file(file) != want:
            raise ChecksumError(f"{file} does not match its SHA-256 in {NAME}: the file changed after the export "
                                f"was saved (a bad copy or an edit; delete {NAME} to load an edited export)")
    return len(files)

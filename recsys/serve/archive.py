"""An export as one zip file: `save_pretrained(file_object)` writes the export's files into a zip
(stored, not compressed: safetensors barely compress), `from_pretrained(zip file or file object)`
reads one back. Nothing in an archive is trusted: only the flat names an export writes
(export.OWN_FILES), each once, at most `max_bytes` in all, extracted into a temporary directory
that the usual loader then checks file by file (recsys/serve/export.py, checksums.json).
"""
from __future__ import annotations

import os
import zipfile

from recsys.serve.export import OWN_FILES, ExportError

MAX_ARCHIVE_BYTES = 1 << 36        # 64 GiB extracted at most (an export of 1M x 100k is ~0.5 GB)
_BLOCK = 1 << 22


def is_archive(source) -> bool:
    """A file object, or the path of a regular file that is a zip (an export directory is not)."""
    if hasattr(source, "read"):
        return True
    return isinstance(source, (str, os.PathLike)) and os.path.isfile(source) and zipfile.is_zipfile(source)


def write_archive(export_dir: str, target) -> None:
    """The export files of `export_dir` (its own files only) into a zip written to `target`."""
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as z:
        for name in sorted(os.listdir(export_dir)):
            if name in OWN_FILES:
                z.write(os.path.join(export_dir, name), arcname=name)


def extract_archive(source, dest: str, max_bytes: int = MAX_ARCHIVE_BYTES) -> None:
    """The members of the zip `source` into the directory `dest`, or ExportError (one line)."""
    where = source if isinstance(source, (str, os.PathLike)) else f"the {type(source).__name__} given"
    try:
        z = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ExportError(f"{where} is not a zip archive of an export: {e}") from None
    with z:
        names = [i.filename for i in z.infolist()]
        for info in z.infolist():
            if info.filename not in OWN_FILES or info.is_dir():
                raise ExportError(f"{where}: member {info.filename!r} is not a file an export writes "
                                  f"(an archive holds only {sorted(OWN_FILES)}, flat)")
            if names.count(info.filename) > 1:
                raise ExportError(f"{where}: member {info.filename!r} appears more than once")
        total = 0
        for info in z.infolist():
            try:
                with z.open(info) as src, open(os.path.join(dest, info.filename), "wb") as out:
                    while block := src.read(_BLOCK):
                        total += len(block)
                        if total > max_bytes:
                            raise ExportError(f"{where}: more than {max_bytes:,} bytes once extracted")
                        out.write(block)
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as e:
                raise ExportError(f"{where}: member {info.filename!r} cannot be read: {e}") from None

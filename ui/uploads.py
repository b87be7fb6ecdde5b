"""Keeping uploaded files under <artefact root>/uploads/, named by content so a rerun reuses them."""
from __future__ import annotations

import hashlib
import io
import re
import shutil
import zipfile
from pathlib import Path, PurePosixPath

from kdcore.checks import archive_problem


class UploadError(ValueError):
    """An upload that cannot be used, in words."""


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def save_checkpoint(data: bytes, filename: str, uploads: Path) -> Path:
    """Writes an uploaded checkpoint to uploads/<hash>-<name>; checking it is the caller's job."""
    path = uploads / f"{_digest(data)}-{Path(filename).name}"
    if not path.is_file():
        uploads.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path


def shown_name(message: str, path) -> str:
    """A message about an uploaded file with the name the user chose, not the stored <hash>-<name>."""
    stored = Path(path).name
    return message.replace(stored, re.sub(r"^[0-9a-f]{16}-", "", stored))


def extract_zip(data: bytes, filename: str, uploads: Path) -> Path:
    """Extracts an uploaded zip of class folders into uploads/<hash>-<stem>/ and returns the image folder.

    Members that would land outside the folder (absolute paths, ..) are refused.
    A zip holding one top folder returns that folder.
    """
    target = uploads / f"{_digest(data)}-{Path(filename).stem}"
    if not target.is_dir():
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
        except zipfile.BadZipFile:
            raise UploadError(f"{filename} is not a zip archive") from None
        with archive:
            names = [m for m in archive.namelist() if not m.startswith("__MACOSX/")]
            for name in names:
                parts = PurePosixPath(name).parts
                if name.startswith("/") or ".." in parts:
                    raise UploadError(f"{filename} holds a path outside its folder ({name}); refused")
            too_big = archive_problem(archive, filename)  # from the directory, before a byte is written
            if too_big:
                raise UploadError(too_big)
            tmp = target.with_name(target.name + ".tmp")
            tmp.mkdir(parents=True, exist_ok=True)
            try:
                archive.extractall(tmp, members=names)
            except (zipfile.BadZipFile, OSError, EOFError) as err:  # e.g. a member past its declared size
                shutil.rmtree(tmp, ignore_errors=True)
                raise UploadError(f"{filename} could not be extracted: {err}") from None
            tmp.replace(target)
    children = [p for p in target.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    if len(children) == 1 and children[0].is_dir() and not (target / "train").is_dir():
        inner = [p for p in children[0].iterdir() if p.is_dir()]
        if inner:  # zip of one top folder holding the class folders
            return children[0]
    return target

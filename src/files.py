"""Atomic, contained writes: an output directory appears whole or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from archsmith.errors import ArchsmithError


def check_out_dir(out: str | Path, overwrite: bool) -> Path:
    """Refuse an existing --out unless overwrite; call before doing any work."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ArchsmithError("out", f"{out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ArchsmithError("out", f"{out} already exists; pass --overwrite to replace its files")
    return out


Content = bytes | str | Callable[[Path], None]  # a callable writes the file at the path it is given


def write_files(out: str | Path, files: dict[str, Content], overwrite: bool = False) -> list[Path]:
    """Write `files` (name -> content) into `out` atomically.

    A new directory is filled under a temporary name beside it and renamed into place; with
    `overwrite`, each file in an existing directory is replaced by an atomic rename. Names are
    plain file names: no separators, no '..'.
    """
    out = check_out_dir(out, overwrite)
    for name in files:
        if Path(name).name != name or name in ("", ".", ".."):
            raise ArchsmithError("out", f"refusing to write {name!r}: file names may not contain directories")
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700; the final directory gets the usual mode
        try:
            for name, content in files.items():
                _write(tmp / name, content)
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    else:
        for name, content in files.items():
            fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", dir=out)
            os.close(fd)
            try:
                _write(Path(tmp_name), content)
                os.replace(tmp_name, out / name)
            except BaseException:
                Path(tmp_name).unlink(missing_ok=True)
                raise
    return [out / name for name in files]


def _write(path: Path, content: Content) -> None:
    if callable(content):
        content(path)
        return
    data = content.encode("utf-8") if isinstance(content, str) else content
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())

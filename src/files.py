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
    try:
        exists = out.exists()
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise ArchsmithError("out", f"cannot use {str(out)[:80]!r}: {exc.strerror or exc}") from None
    if exists and not out.is_dir():
        raise ArchsmithError("out", f"{out} exists and is not a directory")
    if exists and any(out.iterdir()) and not overwrite:
        raise ArchsmithError("out", f"{out} already exists; pass --overwrite to replace its files")
    return out


def inside(root: str | Path, relative: str, field: str) -> Path:
    """`root / relative`, refused unless it stays inside `root` (no absolute paths, no '..' or symlinks out)."""
    if not isinstance(relative, str) or not relative.strip() or "\x00" in relative:
        raise ArchsmithError(field, "must be a non-empty path relative to the workspace root")
    if Path(relative).is_absolute() or relative.startswith("~"):
        raise ArchsmithError(field, f"must be relative to the workspace root, got the absolute path {relative!r}")
    base = Path(root).resolve()
    try:
        path = (base / relative).resolve()  # follows symlinks, so a link pointing out is caught here
    except (OSError, RuntimeError) as exc:  # a symlink loop, a name the file system refuses
        raise ArchsmithError(field, f"cannot use {relative[:80]!r}: {exc}") from None
    if path != base and not path.is_relative_to(base):
        raise ArchsmithError(field, f"{relative!r} leaves the workspace root {base}")
    return path


Content = bytes | str | Callable[[Path], None]  # a callable writes the file at the path it is given


def write_files(out: str | Path, files: dict[str, Content], overwrite: bool = False) -> list[Path]:
    """Write `files` (name -> content) into `out` atomically.

    A new directory is filled under a temporary name beside it and renamed into place; with
    `overwrite`, each file in an existing directory is replaced by an atomic rename. Names are
    plain file names: no separators, no '..'.
    """
    try:
        return _write_files(check_out_dir(out, overwrite), files)
    except OSError as exc:  # a file where a directory belongs, a name too long, a full disk, no permission
        raise ArchsmithError("out", f"cannot write into {out}: {exc.strerror or exc}") from None


def write_file(path: str | Path, content: Content, overwrite: bool = False, field: str = "out") -> Path:
    """Write one file atomically; an existing file is kept unless `overwrite`."""
    path = Path(path)
    try:
        exists = path.exists() or path.is_symlink()
    except OSError as exc:
        raise ArchsmithError(field, f"cannot use {str(path)[:80]!r}: {exc.strerror or exc}") from None
    if exists and not overwrite:
        raise ArchsmithError(field, f"{path} exists; pass overwrite to replace it")
    return write_files(path.parent, {path.name: content}, overwrite=True)[0]


def _write_files(out: Path, files: dict[str, Content]) -> list[Path]:
    for name in files:
        if Path(name).name != name or name in ("", ".", ".."):
            raise ArchsmithError("out", f"refusing to write {name!r}: file names may not contain directories")
        if (out / name).is_dir():
            raise ArchsmithError("out", f"{out / name} is a directory")
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

"""The workspace boundary and atomic writes: every file archsmith reads or writes goes through here.

A path is walked one component at a time with directory file descriptors (`openat` style) and
`O_NOFOLLOW`, so each symlink is read and resolved at the moment it is crossed. Inside
`workspace(root)` (the MCP server sets it for every tool call) the walk starts at the root, and a
symlink or `..` that leads out of it is refused, for files found inside a directory too. Outside it
(the library, the CLI) the walk starts at `/` and symlinks are followed as the operating system would.

Writes never touch the target before the new content is complete:

- a new directory is filled under a hidden temporary name in its real parent and renamed into place;
- with `overwrite`, the new set is written beside the old one, the old directory's other files are
  carried over (hard links: nothing copied, nothing of the user's lost), the two directories are
  exchanged in one step (Linux `renameat2(RENAME_EXCHANGE)`, macOS `renameatx_np(RENAME_SWAP)`) and
  the old one is removed;
- one file (`write_file`) is written in a hidden temporary directory and renamed over the target.

Before the final rename the temporary directory is checked to be the one created, holding the
expected regular files, in a parent still inside the root. A kill between any two steps leaves the
old set or the new set whole under the target's name; what else remains is a hidden
`.NAME.archsmith-PID-XXXXXXXX` directory that the next write into the same directory removes.
New files get the usual mode (0666 less the umask).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fnmatch
import os
import re
import secrets
import shutil
import stat
import threading
from contextvars import ContextVar
from pathlib import Path
from typing import Callable, Iterable, Iterator

from archsmith.errors import ArchsmithError

Content = bytes | str | Callable[[Path], None]  # a callable writes the file at the path it is given

MAX_SYMLINKS = 40  # symlinks crossed on one path before giving up, as Linux does (ELOOP)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)  # never through a symlink; not inherited by children
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW  # a real directory, or the open fails
_TEMP = re.compile(r"\..*\.archsmith-(\d+)-[0-9a-f]{8}", re.S)  # hidden temporaries of writes (pid, random)
_root: ContextVar[Path | None] = ContextVar("archsmith_workspace_root", default=None)
_in_flight: set[str] = set()  # temporaries this process is writing now (names are unique: pid + random)
_in_flight_lock = threading.Lock()


# ---- the boundary ------------------------------------------------------------------------------

@contextlib.contextmanager
def workspace(root: str | Path | None) -> Iterator[Path | None]:
    """Within this block every path read or written must lie under `root` (None: no boundary)."""
    token = _root.set(Path(root).resolve() if root is not None else None)
    try:
        yield _root.get()
    finally:
        _root.reset(token)


def inside(root: str | Path, relative: str, field: str) -> Path:
    """`root / relative` resolved, refused unless it stays inside `root`.

    `relative` is taken from the root, or is an absolute path inside it (Claude Code passes those).
    This early check gives the caller a clear error; the walk at open time is what enforces the boundary.
    """
    if not isinstance(relative, str) or not relative.strip() or "\x00" in relative:
        raise ArchsmithError(field, "must be a non-empty path inside the workspace root")
    if relative.startswith("~"):
        raise ArchsmithError(field, f"must be a path inside the workspace root; '~' is not expanded, got {relative[:80]!r}")
    base = Path(root).resolve()
    try:
        path = (base / relative).resolve()  # an absolute `relative` replaces `base`; symlinks are followed here
    except (OSError, RuntimeError) as exc:  # a symlink loop, a name the file system refuses
        raise ArchsmithError(field, f"cannot use {relative[:80]!r}: {exc}") from None
    if path != base and not path.is_relative_to(base):
        raise ArchsmithError(field, f"{relative[:80]!r} leaves the workspace root {base}")
    return path


def _start(path: Path, field: str) -> tuple[Path, list[str], bool]:
    """(where the walk starts, the components after it, whether that start is a boundary)."""
    root = _root.get()
    if root is None:
        full = Path(os.getcwd(), path)  # an absolute path replaces the working directory
        return Path(full.anchor), list(full.parts[1:]), False
    full = root / path
    if not full.is_relative_to(root):
        raise ArchsmithError(field, f"{_shown(path)} leaves the workspace root {root}")
    return root, list(full.relative_to(root).parts), True


_FD_PATH = re.compile(r"/(?:proc/self/fd|dev/fd)/(\d+)(?:/(.*))?", re.S)  # what `fd_path` returns, and paths below it


def _held_start(fd: int, rest: str, path: Path, field: str) -> tuple[Path, list[str], bool]:
    """The walk of a path below a held directory: it starts at that directory, which must lie inside the root."""
    real = _real_path(fd)
    try:
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
    except OSError:
        is_dir = False
    if not is_dir:
        raise ArchsmithError(field, f"{path} names no open directory")
    root = _root.get()
    if root is not None and (real is None or not Path(real).is_relative_to(root)):
        raise ArchsmithError(field, f"a directory held open now lies outside the workspace root {root}; nothing was written")
    return Path(real or f"/dev/fd/{fd}"), [p for p in rest.split("/") if p], True


def _shown(path: Path) -> str:
    """`path` for a message: from the workspace root when it lies inside it, cut to 120 characters."""
    root = _root.get()
    if root is not None and path.is_absolute() and path.is_relative_to(root):
        path = path.relative_to(root)
    return repr(str(path)[:120])


def _readlink(name: str, dir_fd: int) -> str | None:
    """The target of the symlink `name`, or None if it is something else or nothing."""
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # not a symlink
            return None
        raise


@contextlib.contextmanager
def _located(path: str | Path, field: str, make_dirs: bool = False) -> Iterator[tuple[int, str, Path]]:
    """Walk to the last component of `path`, resolving every symlink on the way (the last one too) when it is met.

    Yields (fd of the real directory holding the last component, its name, its real path); the last
    component may not exist. Each directory is opened with O_NOFOLLOW relative to the one before, so a
    component swapped for a symlink after it was crossed changes nothing and one swapped before is seen.
    A missing directory raises FileNotFoundError (or is created with `make_dirs`); other OS errors, and
    OS errors of the with-block, become ArchsmithError(field).
    """
    path = Path(path)
    held = _FD_PATH.fullmatch(str(path))
    if held:  # a directory held open (`fd_path`): the walk starts at it and may not leave it
        start, pending, bounded = _held_start(int(held.group(1)), held.group(2) or "", path, field)
    else:
        start, pending, bounded = _start(path, field)
    fds: list[int] = []
    names: list[str] = []  # real components below `start`, each a directory
    links = 0
    try:
        fds.append(os.dup(int(held.group(1))) if held else os.open(start, _DIR_FLAGS))
        while True:
            while pending and pending[0] in ("", "."):
                pending.pop(0)
            if not pending:  # the path ends at a directory already entered ("d/.", "d/x/..")
                if not names:
                    raise ArchsmithError(field, f"must name something below {'the workspace root' if bounded else start}, got {_shown(path)}")
                os.close(fds.pop())
                last = names.pop()
                yield fds[-1], last, start.joinpath(*names, last)
                return
            part = pending.pop(0)
            if part == "..":
                if names:
                    os.close(fds.pop())
                    names.pop()
                elif bounded:
                    raise ArchsmithError(field, f"{_shown(path)} leaves the workspace root {start}")
                continue
            target = _readlink(part, fds[-1])
            if target is not None:  # a symlink: follow it now, and only inside the boundary
                links += 1
                if links > MAX_SYMLINKS:
                    raise ArchsmithError(field, f"{_shown(path)}: more than {MAX_SYMLINKS} symlinks on the way")
                if os.path.isabs(target):
                    if not Path(target).is_relative_to(start):
                        link = "/".join([*names, part])
                        raise ArchsmithError(field, f"{_shown(path)} leaves the workspace root {start} through the symlink {link} -> {target}")
                    while len(fds) > 1:
                        os.close(fds.pop())
                    names.clear()
                    target = str(Path(target).relative_to(start))
                pending = target.split("/") + pending
                continue
            if not pending:
                yield fds[-1], part, start.joinpath(*names, part)
                return
            try:
                fd = os.open(part, _DIR_FLAGS, dir_fd=fds[-1])
            except FileNotFoundError:
                if not make_dirs:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o777, dir_fd=fds[-1])
                fd = os.open(part, _DIR_FLAGS, dir_fd=fds[-1])
            fds.append(fd)
            names.append(part)
    except FileNotFoundError:
        raise
    except OSError as exc:  # a name too long, a file where a directory belongs, no permission, a full disk
        raise ArchsmithError(field, f"cannot use {_shown(path)}: {exc.strerror or exc}") from None
    finally:
        for fd in fds:
            os.close(fd)


def fd_path(fd: int) -> str:
    """A path that opens the file (or enters the directory) `fd` refers to, for libraries that take paths."""
    return f"/proc/self/fd/{fd}" if os.path.isdir("/proc/self/fd") else f"/dev/fd/{fd}"


def _real_path(fd: int) -> str | None:
    """Where `fd` lies now, when the system can tell (Linux)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


# ---- reading -----------------------------------------------------------------------------------

def kind(path: str | Path, field: str) -> str | None:
    """'file', 'dir', 'other' or None (nothing there), with symlinks resolved inside the boundary."""
    try:
        with _located(path, field) as (parent, name, _):
            mode = os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return None
    return "dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "other"


def open_file(path: str | Path, field: str):
    """The file at `path`, opened for binary reading through the boundary (a context manager)."""
    try:
        with _located(path, field) as (parent, name, _):
            return os.fdopen(os.open(name, os.O_RDONLY | _NOFOLLOW, dir_fd=parent), "rb")
    except FileNotFoundError:
        raise ArchsmithError(field, f"no such file: {path}") from None


def read_bytes(path: str | Path, field: str) -> bytes:
    with open_file(path, field) as fh:
        try:
            return fh.read()
        except IsADirectoryError:
            raise ArchsmithError(field, f"{path} is a directory, not a file") from None


def read_text(path: str | Path, field: str) -> str:
    try:
        return read_bytes(path, field).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ArchsmithError(field, f"{path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None


# ---- writing -----------------------------------------------------------------------------------

def check_out_dir(out: str | Path, overwrite: bool, field: str = "out") -> Path:
    """Refuse an existing non-empty output directory unless `overwrite`; call before doing any work."""
    out = Path(out)
    try:
        with _located(out, field) as (parent, name, _):
            entries = _entries(parent, name, field, out)
    except FileNotFoundError:
        return out
    if entries and not overwrite:
        raise ArchsmithError(field, f"{out} already exists; pass overwrite (--overwrite) to replace its files")
    return out


def write_files(out: str | Path, files: dict[str, Content], overwrite: bool = False, field: str = "out",
                stale: Iterable[str] = ()) -> list[Path]:
    """Write `files` (name -> content) as the directory `out`, all at once.

    A new directory is filled under a hidden name beside it and renamed into place. With `overwrite`,
    an existing directory is replaced by exchanging it with the new one; its files that the new set
    does not name are carried over, except those matching a `stale` glob (e.g. weight shards of an
    earlier save). Names are plain file names: no separators, no '..'.
    """
    out = Path(out)
    for name in files:
        if not isinstance(name, str) or Path(name).name != name or name in (".", "..") or "\x00" in name:
            raise ArchsmithError(field, f"refusing to write {name!r}: file names may not contain directories")
    try:
        with _located(out, field, make_dirs=True) as (parent, name, real):
            _replace_dir(parent, name, real, files, overwrite, field, out, tuple(stale))
    except FileNotFoundError as exc:  # a directory on the way was removed while we walked it
        raise ArchsmithError(field, f"cannot write into {out}: {exc.strerror}") from None
    return [out / name for name in files]


def write_file(path: str | Path, content: Content, overwrite: bool = False, field: str = "out") -> Path:
    """Write one file atomically (in a hidden temporary directory, then renamed); an existing file is kept unless `overwrite`."""
    path = Path(path)
    try:
        with _located(path, field, make_dirs=True) as (parent, name, real):
            _clean_stale(parent)
            try:
                mode = os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode
            except FileNotFoundError:
                mode = None
            if mode is not None and stat.S_ISDIR(mode):
                raise ArchsmithError(field, f"{path} is a directory")
            if mode is not None and not overwrite:
                raise ArchsmithError(field, f"{path} exists; pass overwrite to replace it")
            with _temp_dir(parent, name, real.parent) as (tmp, tmp_fd, tmp_path):
                _write(tmp_fd, name, content, tmp_path)
                _verify(parent, tmp, tmp_fd, [name], field, path)
                if overwrite:
                    os.rename(name, name, src_dir_fd=tmp_fd, dst_dir_fd=parent)
                else:
                    _place(tmp_fd, name, parent, name, field, path)
    except FileNotFoundError as exc:
        raise ArchsmithError(field, f"cannot write {path}: {exc.strerror}") from None
    return path


def _entries(parent: int, name: str, field: str, out: Path) -> list[str] | None:
    """The names in directory `name`, None if nothing is there."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise ArchsmithError(field, f"{out} exists and is not a directory") from None
    try:
        return os.listdir(fd)
    finally:
        os.close(fd)


def _replace_dir(parent: int, name: str, real: Path, files: dict[str, Content], overwrite: bool, field: str,
                 out: Path, stale: tuple[str, ...]) -> None:
    _clean_stale(parent)
    old = _entries(parent, name, field, out)
    if old and not overwrite:
        raise ArchsmithError(field, f"{out} already exists; pass overwrite (--overwrite) to replace its files")
    if old is not None and Path(os.getcwd()).is_relative_to(real):
        raise ArchsmithError(field, f"{out} holds the current directory, which replacing it would remove; write into a subdirectory")
    if old:
        with _opened_dir(parent, name) as old_fd:
            for file in set(files) & set(old):
                if stat.S_ISDIR(os.stat(file, dir_fd=old_fd, follow_symlinks=False).st_mode):
                    raise ArchsmithError(field, f"{out / file} is a directory")
    with _temp_dir(parent, name, real.parent) as (tmp, tmp_fd, tmp_path):
        for file, content in files.items():
            _write(tmp_fd, file, content, tmp_path)
        if old is not None:
            keep = lambda n: n not in files and not any(fnmatch.fnmatch(n, p) for p in stale)  # noqa: E731
            with _opened_dir(parent, name) as old_fd:
                _link_tree(old_fd, tmp_fd, keep)
        _verify(parent, tmp, tmp_fd, files, field, out)
        if old is None:
            _place(parent, tmp, parent, name, field, out)
        else:
            _exchange(parent, tmp, name)
    # leaving _temp_dir removes `tmp`: after the exchange it holds the old directory


@contextlib.contextmanager
def _opened_dir(parent: int, name: str) -> Iterator[int]:
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def _temp_dir(parent: int, name: str, parent_path: Path) -> Iterator[tuple[str, int, Path]]:
    """A new hidden directory in `parent`: (its name, an fd on it, a path to it for path-taking writers); removed on exit.

    The path is /proc/self/fd/N where there is one (the directory held, wherever it is now); elsewhere the
    real path found by the walk, and `_verify` catches a writer that was sent elsewhere.
    """
    tmp = f".{name[:64]}.archsmith-{os.getpid()}-{secrets.token_hex(4)}"
    with _in_flight_lock:
        _in_flight.add(tmp)
    try:
        os.mkdir(tmp, 0o777, dir_fd=parent)  # the umask applies, as to any new directory
        try:
            with _opened_dir(parent, tmp) as fd:
                path = Path(fd_path(fd)) if os.path.isdir("/proc/self/fd") else parent_path / tmp
                yield tmp, fd, path
        finally:
            remove_entry(parent, tmp)
    finally:
        with _in_flight_lock:
            _in_flight.discard(tmp)


def _write(dir_fd: int, name: str, content: Content, dir_path: Path) -> None:
    if callable(content):
        content(dir_path / name)
        usual_modes(dir_fd, name)  # writers such as safetensors create their files 0600
        return
    data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o666, dir_fd=dir_fd)  # the umask applies
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def usual_modes(dir_fd: int, name: str = ".", mode: int | None = None) -> None:
    """Give the file `name` of directory `dir_fd` (a directory: every regular file below it) the mode a new file
    gets here, 0666 less the umask (writers such as safetensors create theirs 0600)."""
    if mode is None:  # what the umask makes of 0666, read by making a file (the umask cannot be read without a race)
        probe = f".archsmith-mode-{os.getpid()}-{secrets.token_hex(4)}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o666, dir_fd=dir_fd)
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        os.close(fd)
        os.unlink(probe, dir_fd=dir_fd)
    try:
        fd = os.open(name, os.O_RDONLY | _NOFOLLOW, dir_fd=dir_fd)
    except OSError:  # gone, or a symlink: left as it is
        return
    try:
        kind_ = os.fstat(fd).st_mode
        if stat.S_ISREG(kind_):
            os.fchmod(fd, mode)
        elif stat.S_ISDIR(kind_):
            for entry in os.listdir(fd):
                usual_modes(fd, entry, mode)
    finally:
        os.close(fd)


def _verify(parent: int, tmp: str, tmp_fd: int, names: Iterable[str], field: str, out: Path) -> None:
    """Before the rename: `tmp` is still the directory we made, it holds each expected regular file, its parent is in the root."""
    held, now = os.fstat(tmp_fd), os.stat(tmp, dir_fd=parent, follow_symlinks=False)
    if (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino):
        raise ArchsmithError(field, f"the temporary directory for {out} was replaced while writing; nothing was written")
    for name in names:
        try:
            mode = os.stat(name, dir_fd=tmp_fd, follow_symlinks=False).st_mode
        except FileNotFoundError:
            raise ArchsmithError(field, f"the writer of {name} wrote nothing; nothing was written") from None
        if not stat.S_ISREG(mode):
            raise ArchsmithError(field, f"{name} was not written as a regular file; nothing was written")
    root, real = _root.get(), _real_path(parent)
    if root is not None and real is not None and not Path(real).is_relative_to(root):
        raise ArchsmithError(field, f"{out} was moved out of the workspace root while writing; nothing was written")


def _link_tree(src: int, dst: int, keep: Callable[[str], bool] = lambda name: True) -> None:
    """Hard-link every entry of directory `src` that `keep` accepts into `dst` (directories recreated, symlinks copied)."""
    with os.scandir(src) as entries:
        todo = [entry for entry in entries if keep(entry.name) and not _TEMP.fullmatch(entry.name)]
    for entry in todo:
        mode = entry.stat(follow_symlinks=False).st_mode
        if stat.S_ISDIR(mode):
            os.mkdir(entry.name, 0o700, dir_fd=dst)
            with _opened_dir(src, entry.name) as inner_src, _opened_dir(dst, entry.name) as inner_dst:
                os.fchmod(inner_dst, stat.S_IMODE(mode))
                _link_tree(inner_src, inner_dst)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(entry.name, dir_fd=src), entry.name, dir_fd=dst)
        else:
            try:
                os.link(entry.name, entry.name, src_dir_fd=src, dst_dir_fd=dst, follow_symlinks=False)
            except OSError:  # a file system without hard links: copy
                with os.fdopen(os.open(entry.name, os.O_RDONLY | _NOFOLLOW, dir_fd=src), "rb") as fin, \
                        os.fdopen(os.open(entry.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, stat.S_IMODE(mode), dir_fd=dst), "wb") as fout:
                    shutil.copyfileobj(fin, fout)


def remove_entry(parent: int, name: str) -> None:
    """Remove `name` (a tree, a file or a symlink) from directory `parent`, never following a symlink."""
    try:
        mode = os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(name, dir_fd=parent, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=parent)


def _clean_stale(parent: int) -> None:
    """Remove the temporaries of writes into `parent` that were interrupted (their process is gone)."""
    for name in os.listdir(parent):
        match = _TEMP.fullmatch(name)
        if match is None:
            continue
        pid = int(match.group(1))
        with _in_flight_lock:
            if name in _in_flight:
                continue
        if pid != os.getpid() and _alive(pid):
            continue
        remove_entry(parent, name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


# ---- renames that exchange or refuse to replace ----------------------------------------------------

_LIBC = ctypes.CDLL(None, use_errno=True) if os.name == "posix" else None
# (function, flag to exchange, flag to refuse replacing): Linux renameat2, macOS renameatx_np
_RENAME2 = next(((getattr(_LIBC, fn), exchange, noreplace) for fn, exchange, noreplace in
                 (("renameat2", 2, 1), ("renameatx_np", 2, 4)) if _LIBC is not None and hasattr(_LIBC, fn)), None)
if _RENAME2 is not None:
    _RENAME2[0].argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]


def _rename2(src_dir: int, src: str, dst_dir: int, dst: str, exchange: bool) -> bool:
    """Exchange `src` and `dst`, or rename without replacing; False where the system or file system cannot."""
    if _RENAME2 is None:
        return False
    fn, exchange_flag, noreplace_flag = _RENAME2
    if fn(src_dir, os.fsencode(src), dst_dir, os.fsencode(dst), exchange_flag if exchange else noreplace_flag) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), dst)


def _exchange(parent: int, new: str, old: str) -> None:
    """Swap the directories `new` and `old` in one step, so `old`'s name shows the new set and `new`'s the old one."""
    if _rename2(parent, new, parent, old, exchange=True):
        return
    aside = f".{old[:64]}.archsmith-{os.getpid()}-{secrets.token_hex(4)}"  # no atomic exchange: `old` is absent a moment
    os.rename(old, aside, src_dir_fd=parent, dst_dir_fd=parent)
    os.rename(new, old, src_dir_fd=parent, dst_dir_fd=parent)
    os.rename(aside, new, src_dir_fd=parent, dst_dir_fd=parent)


def _place(src_dir: int, src: str, dst_dir: int, dst: str, field: str, out: Path) -> None:
    """Rename `src` to `dst`, refusing to replace anything that appeared there meanwhile."""
    try:
        if not _rename2(src_dir, src, dst_dir, dst, exchange=False):
            os.rename(src, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir)  # replaces at most an empty directory
    except (FileExistsError, OSError) as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        raise ArchsmithError(field, f"{out} appeared while writing; it was left as it is") from None


# ---- a directory held for a long job -------------------------------------------------------------

class HeldDir:
    """A directory opened once and held for a whole job (a training run).

    Every path below it is walked from the held descriptor one component at a time and never through a symlink
    (a symlink where a file or directory of the job should be is refused), so swapping one of its directories for
    a symlink cannot send a write, rename or delete elsewhere. `check()` (called before each write) makes sure the
    directory is still the one at its path: one renamed away or replaced by a symlink stops the job with one line.
    Path-taking libraries (torch.save, safetensors, save_pretrained, torch.distributed.checkpoint) get
    `fd_path(fd)` of a directory opened here, which names the held directory wherever it is.
    """

    def __init__(self, path: str | Path, field: str = "out", create: bool = True):
        self.path, self.field = Path(path), field
        try:
            with _located(self.path, field, make_dirs=create) as (parent, name, real):
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, 0o777, dir_fd=parent)
                self.fd = self._open_dir(parent, name, self.path)
                self.real = real
        except FileNotFoundError:
            raise ArchsmithError(field, f"no such directory: {self.path}") from None
        st = os.fstat(self.fd)
        self.identity = (st.st_dev, st.st_ino)

    def sub(self, relative: str | Path, create: bool = True) -> "HeldDir":
        """The directory `relative` below this one, held on its own; its `check` includes this one's."""
        held = object.__new__(HeldDir)
        with self.dir(relative, create=create) as fd:
            held.fd = os.dup(fd)
        held.path, held.field, held.real = self.path / relative, self.field, self.real / relative
        st = os.fstat(held.fd)
        held.identity, held._parent, held._relative = (st.st_dev, st.st_ino), self, Path(relative)
        return held

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "HeldDir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open_dir(self, parent: int, name: str, shown: Path) -> int:
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            raise
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                raise ArchsmithError(self.field, f"{_shown(shown)} is a symlink or not a directory; refusing to follow it") from None
            raise ArchsmithError(self.field, f"cannot use {_shown(shown)}: {exc.strerror or exc}") from None

    _parent: "HeldDir | None" = None  # set by `sub`: held below another held directory
    _relative: Path = Path(".")

    def check(self) -> None:
        """Raise ArchsmithError unless the held directory is still the one at its path."""
        try:
            if self._parent is not None:
                with self._parent.dir(self._relative.parent) as parent:
                    st = os.stat(self._relative.name, dir_fd=parent, follow_symlinks=False)
            else:
                with _located(self.path, self.field) as (parent, name, _):
                    st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except (FileNotFoundError, ArchsmithError):
            st = None
        if st is None or not stat.S_ISDIR(st.st_mode) or (st.st_dev, st.st_ino) != self.identity:
            raise ArchsmithError(self.field, f"{_shown(self.path)} was moved or replaced during the run; stopping "
                                             "(nothing is written outside it)")

    @contextlib.contextmanager
    def dir(self, relative: str | Path = ".", create: bool = False) -> Iterator[int]:
        """An fd on the directory `relative` below the held one (created with `create`), walked without symlinks."""
        self.check()
        fd = os.dup(self.fd)
        try:
            for part in Path(relative).parts:
                if part in ("", "."):
                    continue
                if part == ".." or "/" in part:
                    raise ArchsmithError(self.field, f"{relative} leaves the run directory")
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o777, dir_fd=fd)
                try:
                    inner = self._open_dir(fd, part, self.path / relative)
                except FileNotFoundError:
                    raise ArchsmithError(self.field, f"no such directory: {_shown(self.path / relative)}") from None
                os.close(fd)
                fd = inner
            yield fd
        finally:
            os.close(fd)

    def exists(self, relative: str | Path) -> str | None:
        """'file', 'dir', 'link', 'other' or None for `relative` (never followed)."""
        relative = Path(relative)
        try:
            with self.dir(relative.parent) as parent:
                mode = os.stat(relative.name, dir_fd=parent, follow_symlinks=False).st_mode
        except (FileNotFoundError, ArchsmithError):
            return None
        return ("dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else
                "link" if stat.S_ISLNK(mode) else "other")

    def open(self, relative: str | Path, mode: str = "rb", encoding: str | None = None):
        """A file below the held directory, opened without following symlinks ("rb", "r", "a", "ab")."""
        relative = Path(relative)
        flags = os.O_RDONLY if mode.startswith("r") else os.O_WRONLY | os.O_CREAT | os.O_APPEND
        with self.dir(relative.parent, create=not mode.startswith("r")) as parent:
            try:
                fd = os.open(relative.name, flags | _NOFOLLOW, 0o666, dir_fd=parent)
            except FileNotFoundError:
                raise ArchsmithError(self.field, f"no such file: {_shown(self.path / relative)}") from None
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise ArchsmithError(self.field, f"{_shown(self.path / relative)} is a symlink; refusing to follow it") from None
                raise ArchsmithError(self.field, f"cannot open {_shown(self.path / relative)}: {exc.strerror}") from None
        return os.fdopen(fd, mode, encoding=encoding)

    def write(self, relative: str | Path, content: Content) -> Path:
        """Replace the file `relative` atomically (a hidden temporary beside it, fsynced, renamed over it)."""
        relative = Path(relative)
        with self.dir(relative.parent, create=True) as parent:
            tmp = f".{relative.name[:64]}.archsmith-{os.getpid()}-{secrets.token_hex(4)}"
            try:
                if callable(content):
                    content(Path(fd_path(parent)) / tmp)
                    usual_modes(parent, tmp)
                else:
                    _write(parent, tmp, content, Path(fd_path(parent)))
                if not stat.S_ISREG(os.stat(tmp, dir_fd=parent, follow_symlinks=False).st_mode):
                    raise ArchsmithError(self.field, f"{relative} was not written as a regular file")
                self.check()
                os.rename(tmp, relative.name, src_dir_fd=parent, dst_dir_fd=parent)
            finally:
                remove_entry(parent, tmp)
        return self.path / relative

    def listdir(self, relative: str | Path = ".") -> list[tuple[str, str]]:
        """(name, 'file' | 'dir' | 'link' | 'other') of the entries of `relative`; [] when it does not exist."""
        try:
            with self.dir(relative) as fd, os.scandir(fd) as entries:
                out = []
                for entry in entries:
                    mode = entry.stat(follow_symlinks=False).st_mode
                    out.append((entry.name, "dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else
                                "link" if stat.S_ISLNK(mode) else "other"))
                return sorted(out)
        except ArchsmithError:
            if self.exists(relative) is None:
                return []
            raise

    def remove(self, relative: str | Path) -> None:
        """Remove `relative` (a tree, a file or a symlink itself) without following any symlink."""
        relative = Path(relative)
        with self.dir(relative.parent) as parent:
            remove_entry(parent, relative.name)

    def rename(self, src: str | Path, dst: str | Path) -> None:
        """Rename `src` to `dst` (both below the held directory), replacing a file or an empty directory at `dst`."""
        src, dst = Path(src), Path(dst)
        with self.dir(src.parent) as a, self.dir(dst.parent, create=True) as b:
            self.check()
            os.rename(src.name, dst.name, src_dir_fd=a, dst_dir_fd=b)
            os.fsync(b)

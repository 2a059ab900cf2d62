"""Where a daemon's API listens: the socket path of a database file, and making it safe.

*socket path*: one per database file, derived from the file's resolved path:
``$XDG_RUNTIME_DIR/greenmon/<hash>.sock``, else ``/tmp/greenmon-$UID/<hash>.sock``, so
``--db`` always reaches the daemon of that file and daemons on different files coexist.
``--socket`` or ``$GREENMON_SOCKET`` override it (on both sides).  The socket is mode 0600
in a 0700 directory: only its owner may talk to the daemon, so it needs no token.
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
from pathlib import Path

from greenmon.api.errors import ApiError


def runtime_dir() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "greenmon"
    return Path(f"/tmp/greenmon-{os.getuid()}")


def socket_path_for(db_path: str | Path) -> Path:
    """The socket of the daemon holding ``db_path``: a hash of its resolved path.

    A hash keeps the path short (a Unix socket path has ~107 bytes) whatever the
    database's path, and the same file reached by two relative paths gets one socket.
    """
    digest = hashlib.sha256(str(Path(db_path).resolve()).encode()).hexdigest()[:16]
    return runtime_dir() / f"{digest}.sock"


def resolve_socket_path(path: str | Path | None = None, db_path: str | Path | None = None) -> Path:
    """An explicit path, else ``$GREENMON_SOCKET``, else the socket of ``db_path``."""
    if path is not None:
        return Path(path)
    env = os.environ.get("GREENMON_SOCKET")
    if env:
        return Path(env)
    if db_path is None:
        raise ApiError("No database given to find its daemon's socket.")
    return socket_path_for(db_path)


def prepare_socket_path(path: Path) -> None:
    """Make the socket's directory (0700) and clear a stale socket of ours.

    Refuses, with a reason, a path owned by another user or one where a daemon listens.
    """
    directory = path.parent
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True)
    info = directory.stat()
    if info.st_uid != os.getuid():
        raise ApiError(
            f"{directory} belongs to another user (uid {info.st_uid}); greenmon will not put "
            "its socket there. Set XDG_RUNTIME_DIR or pass another socket path."
        )
    # Only tighten a directory greenmon owns by name; never a shared one like $HOME.
    if stat.S_IMODE(info.st_mode) & 0o077 and directory.name in (
        "greenmon",
        f"greenmon-{os.getuid()}",
    ):
        directory.chmod(0o700)
    try:
        existing = path.lstat()
    except FileNotFoundError:
        return
    if existing.st_uid != os.getuid():
        raise ApiError(
            f"{path} exists and belongs to another user (uid {existing.st_uid}); greenmon "
            "will not remove or reuse it. Pass another socket path."
        )
    if not stat.S_ISSOCK(existing.st_mode):
        raise ApiError(f"{path} exists and is not a socket; remove it or pass another path.")
    if socket_is_live(path):
        raise ApiError(
            f"Another greenmon daemon already serves {path} (GREENMON_SOCKET or --socket "
            "names the same path for two databases). Give each daemon its own socket, or "
            "leave both unset: each database file then gets its own."
        )
    path.unlink()


def socket_is_live(path: Path, timeout_s: float = 1.0) -> bool:
    """True when something accepts connections on the Unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout_s)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def bind_unix_socket(path: Path) -> socket.socket:
    """Bind with umask 0177 so the socket is 0600 from its first instant, not after chmod."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(64)
    sock.setblocking(False)
    return sock

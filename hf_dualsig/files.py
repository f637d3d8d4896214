"""Atomic file writes: a crash leaves either the old file or the new one, never half of one."""

import os


def write_atomically(path: str, write) -> str:
    """Call `write(tmp_path)`, then rename the file to `path`; returns `path`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    write(tmp)
    os.replace(tmp, path)
    return path


def write_text(path: str, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)


class OutputLock:
    """Hold `<folder>/.hf_dualsig.lock` (our pid) while a run writes into `folder`; a second live run is refused with
    a ValueError naming its pid. A lock left by a dead process is taken over; only the lock we created is removed."""

    NAME = ".hf_dualsig.lock"

    def __init__(self, folder: str):
        self.path = os.path.join(folder, self.NAME)
        self.held = False

    def __enter__(self) -> "OutputLock":
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                other = _lock_owner(self.path)
                if other is not None and pid_alive(other):
                    raise ValueError(
                        f"another run (pid {other}) is writing into {os.path.dirname(self.path)}; wait for it, or "
                        "choose another --output_dir."
                    ) from None
                os.remove(self.path)  # left by a run that died
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(str(os.getpid()))
            self.held = True
            return self
        raise ValueError(f"could not take the lock {self.path}; remove it if no run is using the folder.")

    def __exit__(self, *exc) -> None:
        if self.held and _lock_owner(self.path) == os.getpid():
            os.remove(self.path)
        self.held = False


def _lock_owner(path: str) -> int | None:
    try:
        with open(path) as handle:
            return int(handle.read().strip() or 0) or None
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def safe_join(root: str, relative: str, what: str = "path") -> str:
    """`root/relative` for a path read from a data file, refusing (ValueError naming it) any that would leave
    `root`: absolute paths, `..` components, or symlinks pointing outside."""
    if not relative or os.path.isabs(relative) or ".." in relative.replace("\\", "/").split("/"):
        raise ValueError(f"{what} {relative!r} is not a relative path inside {root}; refusing to use it.")
    path = os.path.join(root, relative)
    real_root = os.path.realpath(root)
    if not os.path.realpath(path).startswith(real_root + os.sep):
        raise ValueError(f"{what} {relative!r} resolves outside {root}; refusing to use it.")
    return path


def check_writable(folder: str, what: str = "folder") -> None:
    """A ValueError, before any work, when `folder` (or the nearest existing folder above it) cannot be written."""
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {folder}: {existing} is not a writable folder.")

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

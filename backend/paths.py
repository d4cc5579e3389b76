"""Output locations checked before any work: a path under a file or in an unwritable folder is refused at once.

Every command that writes (generate, finetune, sweep, report) calls one of these first, so a bad ``--out``
costs nothing and leaves nothing behind; the message names the flag, the path and what is allowed.
"""

from __future__ import annotations

import os
from pathlib import Path


def _assets_dir() -> Path:
    """The embedded models and evaluators: ``$SPEEDLAB_ASSETS``, else the wheel's ``backend/assets`` (an installed
    package, see setup.py), else the source tree's ``assets/``."""
    if os.environ.get("SPEEDLAB_ASSETS"):
        return Path(os.environ["SPEEDLAB_ASSETS"]).expanduser().resolve()
    package = Path(__file__).resolve().parent
    return package / "assets" if (package / "assets").is_dir() else package.parent / "assets"


ASSETS = _assets_dir()


class OutputError(ValueError):
    """An output location that cannot be written; the message names the flag and the path."""


def _existing_ancestor(path: Path) -> Path:
    """The nearest existing path above ``path`` (a file there means ``path`` cannot be made)."""
    for parent in path.parents:
        if parent.exists():
            return parent
    return Path(".")


def check_writable_parent(path: str | Path, flag: str = "--out") -> Path:
    """``path``'s folder exists or can be made, and is writable."""
    path = Path(path)
    anchor = _existing_ancestor(path)
    if not anchor.is_dir():
        raise OutputError(f"{flag} {str(path)!r}: {str(anchor)!r} is a file, not a folder; allowed: a path in a "
                          "writable folder")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {str(path)!r}: folder {str(anchor)!r} is not writable; allowed: a path in a "
                          "writable folder")
    return path


def check_out_file(path: str | Path, flag: str = "--out", suffixes: tuple[str, ...] = ()) -> Path:
    """A file to (re)write: not a folder, an allowed suffix, in a writable folder."""
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise OutputError(f"{flag} {str(path)!r} must end in {' or '.join(suffixes)}")
    if path.is_dir():
        raise OutputError(f"{flag} {str(path)!r} is a folder; allowed: a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{flag} {str(path)!r} exists and is not writable")
    return check_writable_parent(path, flag)


def check_out_dir(path: str | Path, flag: str = "--out", must_be_new: bool = False) -> Path:
    """A folder to write into (made if missing): not a file, writable; ``must_be_new`` refuses an existing one."""
    path = Path(path)
    if path.exists():
        if must_be_new:
            raise OutputError(f"{flag} {str(path)!r} already exists; allowed: a new folder")
        if not path.is_dir():
            raise OutputError(f"{flag} {str(path)!r} exists and is not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputError(f"{flag} {str(path)!r}: folder is not writable")
        return path
    return check_writable_parent(path, flag)

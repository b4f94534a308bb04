"""benchmarks/RESULTS.md: each benchmark owns one `## ` section and replaces only that one."""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

from benchmarks.checks import check, ready_to_publish

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def publish(section: str, lines: list[str], *, write: bool = True) -> None:
    """Print a benchmark's section and, unless `write` is false (--no-write), put it in RESULTS.md."""
    text = "\n".join(lines)
    print(text)
    if write:
        write_section(section, text)


def write_section(section: str, text: str, path: Path = RESULTS) -> None:
    """Replace `section` (its heading line up to the next `## `) or append it, leaving every other
    section as it is on disk now; written to a temp file and renamed, so a reader never sees half.

    Only once this process has checked its answers and none was wrong (benchmarks.checks). Benchmarks
    that end together take turns (a lock on the file's folder, so no lock file is left behind): the
    second reads what the first wrote, so neither section is lost; the section is read back once written."""
    ready_to_publish(str(path))
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        _replace(section, text, path)
        check(section in path.read_text(), f"{path} lacks the section {section!r} just written")
    finally:
        os.close(folder)  # and with it the lock
    print(f"wrote {section!r} to {path}", file=sys.stderr, flush=True)


def _replace(section: str, text: str, path: Path) -> None:
    current = path.read_text() if path.exists() else "# Benchmark results\n"
    if section in current:
        head, rest = current.split(section, 1)
        nxt = rest.find("\n## ")
        tail = rest[nxt + 1:] if nxt >= 0 else ""
        new = head + text.rstrip() + "\n" + ("\n" + tail if tail else "")
    else:
        new = current.rstrip() + "\n\n" + text.rstrip() + "\n"
    tmp = path.with_suffix(f".md.{os.getpid()}.tmp")
    tmp.write_text(new)
    tmp.replace(path)

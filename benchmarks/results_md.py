"""benchmarks/RESULTS.md: each benchmark owns one `## ` section and replaces only that one."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def publish(section: str, lines: list[str], *, write: bool = True) -> None:
    """Print a benchmark's section and, unless `write` is false (--no-write), put it in RESULTS.md."""
    text = "\n".join(lines)
    print(text)
    if write:
        write_section(section, text)


def write_section(section: str, text: str, path: Path = RESULTS) -> None:
    """Replace `section` (its heading line up to the next `## `) or append it, leaving every other
    section as it is on disk now; written to a temp file and renamed, so a reader never sees half."""
    current = path.read_text() if path.exists() else "# Benchmark results\n"
    if section in current:
        head, rest = current.split(section, 1)
        nxt = rest.find("\n## ")
        tail = rest[nxt + 1:] if nxt >= 0 else ""
        new = head + text.rstrip() + "\n" + ("\n" + tail if tail else "")
    else:
        new = current.rstrip() + "\n\n" + text.rstrip() + "\n"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(new)
    tmp.replace(path)

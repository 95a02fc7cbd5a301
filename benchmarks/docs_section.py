"""Write one benchmark's section into docs/benchmarks.md, between its own markers."""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def write_section(name: str, body: str) -> str:
    """Replace (or append) the section `name` with `body`; returns the section written."""
    begin, end = markers(name)
    section = f"{begin}\n{body.strip()}\n{end}"
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n\nEach section is written by the benchmark it names.\n"
    if begin in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    DOC.write_text(text)
    return section

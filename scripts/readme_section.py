"""Regenerate one generated section of README.md in place.

Generated sections sit between ``<!-- BEGIN: name -->`` and ``<!-- END: name -->`` markers, so that every
results table in the README is written by a script in the repository and never by hand.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def update_readme_section(name: str, markdown: str, readme: str | os.PathLike = README) -> None:
    """Replace the body of section ``name`` in ``readme`` with ``markdown`` (atomic write)."""
    path = Path(readme)
    text = path.read_text()
    begin, end = f"<!-- BEGIN: {name} -->", f"<!-- END: {name} -->"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), flags=re.S)
    if not pattern.search(text):
        raise ValueError(f"README section {name!r} not found: add the lines {begin!r} and {end!r} to {path} first")
    new = pattern.sub(lambda _: f"{begin}\n{markdown.strip()}\n{end}", text)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".readme.")
    with os.fdopen(fd, "w") as fh:
        fh.write(new)
    os.replace(tmp, path)

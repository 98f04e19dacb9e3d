"""Regenerate one generated section of README.md in place.

Generated sections sit between ``<!-- BEGIN: name -->`` and ``<!-- END: name -->`` markers, so that every
results table in the README is written by a script in the repository and never by hand. Scripts call
:func:`update_readme_section` with the Markdown that a library report function returned; the library itself never
touches repository files.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from lml_sampler._io import atomic_write

README = Path("README.md")
IMAGES = Path("docs") / "images"


def update_readme_section(name: str, markdown: str, readme: str | os.PathLike = README) -> None:
    """Replace the body of section ``name`` in ``readme`` (default: ``README.md`` of the current directory, the
    repository root) with ``markdown``, atomically."""
    path = Path(readme)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the README scripts from the repository root")
    text = path.read_text()
    begin, end = f"<!-- BEGIN: {name} -->", f"<!-- END: {name} -->"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), flags=re.S)
    if not pattern.search(text):
        raise ValueError(f"README section {name!r} not found: add the lines {begin!r} and {end!r} to {path} first")
    atomic_write(path, pattern.sub(lambda _: f"{begin}\n{markdown.strip()}\n{end}", text))


def publish_image(source: str | os.PathLike, name: str) -> str:
    """Copy a plot into ``docs/images/`` and return the README-relative path to link it with."""
    IMAGES.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, IMAGES / name)
    return (IMAGES / name).as_posix()

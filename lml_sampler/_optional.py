"""Optional dependencies, imported on first use: a missing or broken one is an ``ImportError`` that says what to
install, and never breaks the import of the package itself.

"Broken" matters: the PyPI torchvision wheel installs on a CPU-only torch but fails on import with
``RuntimeError: operator torchvision::nms does not exist`` (it is compiled against the CUDA torch), and libraries that
import it (torch-fidelity, torchmetrics) then fail the same way.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingExtra", "import_optional", "TORCH_STACK_HINT"]

#: How to get a torch / torchvision pair that import together.
TORCH_STACK_HINT = ("torchvision must be built for the installed torch: on a GPU machine the default wheels of both "
                    "match; on a CPU-only torch install torchvision from the same index, pip install torchvision "
                    "--index-url https://download.pytorch.org/whl/cpu")


class MissingExtra(ImportError):
    """An optional dependency is absent or does not import; the message says how to get a working one."""


def import_optional(module: str, needed_for: str, install: str) -> ModuleType:
    """``importlib.import_module(module)``, or :class:`MissingExtra` naming what it is ``needed_for`` and how to
    ``install`` it, for an absent module (``ImportError``) and for one that fails while importing (any exception,
    e.g. the ``RuntimeError`` of a torchvision built for another torch)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(f"{needed_for} needs {module}: {install}") from exc
    except Exception as exc:  # noqa: BLE001 - any failure inside a third-party import means "not usable here"
        raise MissingExtra(f"{needed_for} needs {module}, which is installed but does not import "
                           f"({type(exc).__name__}: {exc}); {TORCH_STACK_HINT}") from exc

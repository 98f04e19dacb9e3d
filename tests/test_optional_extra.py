"""A broken optional Inception stack (a torchvision built for another torch): Inception FID says how to get a working
stack, and the eval package does not import the libraries that a broken torchvision takes down with it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lml_sampler._optional import MissingExtra, import_optional

NMS = "operator torchvision::nms does not exist"


def _broken_stack(root) -> str:
    """A site folder with the failure of the PyPI torchvision wheel on a CPU-only torch: installed (metadata present,
    so torchmetrics takes its torchvision code path) but raising RuntimeError on import, and a torch-fidelity that
    imports it."""
    (root / "torchvision").mkdir()
    (root / "torchvision" / "__init__.py").write_text(f"raise RuntimeError({NMS!r})\n")
    (root / "torchvision-0.99.0.dist-info").mkdir()
    (root / "torchvision-0.99.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: torchvision\n"
                                                                   "Version: 0.99.0\n")
    (root / "torch_fidelity").mkdir()
    (root / "torch_fidelity" / "__init__.py").write_text("import torchvision\n")
    (root / "torch_fidelity" / "feature_extractor_inceptionv3.py").write_text("")
    return str(root)


def test_import_optional_turns_a_runtime_error_into_a_missing_extra_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(_broken_stack(tmp_path))
    for name in [m for m in sys.modules if m.split(".")[0] in ("torchvision", "torch_fidelity")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(MissingExtra, match="torchvision::nms does not exist.*download.pytorch.org/whl/cpu"):
        import_optional("torch_fidelity.feature_extractor_inceptionv3", "standard Inception FID", "pip install x")
    from lml_sampler.eval import InceptionV3Features

    with pytest.raises(MissingExtra, match=r"digits-features.*RuntimeError: operator torchvision::nms"):
        InceptionV3Features()
    with pytest.raises(MissingExtra, match="X needs no_such_module_here: pip install it"):
        import_optional("no_such_module_here", "X", "pip install it")


def test_the_eval_package_imports_neither_torchmetrics_nor_torchvision():
    # torchmetrics fails to import wherever a broken torchvision is installed (it imports torchvision whenever its
    # metadata is present), so the eval package loads it only where FeatureStatistics is used
    script = ("import sys, lml_sampler, lml_sampler.eval, lml_sampler.eval.cli; "
              "print(sorted(m for m in ('torchmetrics', 'torchvision', 'torch_fidelity') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stdout + run.stderr[-2000:]

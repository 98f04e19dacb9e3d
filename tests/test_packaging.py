"""The distribution installs one import package, `lml_sampler`, in a wheel and in an editable install, and the
repository keeps to its layout rules (no sys.path edits, no loading repository files by path, cited docs exist)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PY_FILES = [p for p in REPO.rglob("*.py") if not any(part.startswith(".") or part in ("runs", "build") for part in
                                                     p.relative_to(REPO).parts)]


def _run(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the source tree (setuptools writes build/ into the tree it builds)."""
    out = tmp_path_factory.mktemp("wheel")
    source = out / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".*", "runs", "build", "checkpoints", "*.egg-info",
                                                                 "__pycache__"))
    proc = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                 str(source)], cwd=out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = out.glob("lml_sampler-*.whl")
    return path


@pytest.mark.slow
def test_wheel_has_one_top_level_package_and_the_weights(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"lml_sampler"}
    assert "lml_sampler/eval/cli.py" in names and "lml_sampler/pipelines/reconstruct.py" in names
    assert "lml_sampler/models/weights/digits/unet/diffusion_pytorch_model.safetensors" in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "lml-eval = lml_sampler.eval.cli:main" in entry_points
    assert "lml-reconstruct = lml_sampler.pipelines.reconstruct:main" in entry_points


@pytest.mark.slow
def test_wheel_install_imports_from_outside_the_repository(wheel, tmp_path):
    site = tmp_path / "site"
    proc = _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    code = ("import lml_sampler, lml_sampler.eval, lml_sampler.pipelines; "
            "from lml_sampler.models import load_pipeline; load_pipeline('digits'); "
            "print(lml_sampler.__file__); print(lml_sampler.eval.__file__); print(lml_sampler.pipelines.__file__)")
    proc = _run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(site)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    for line in proc.stdout.split():
        assert Path(line).is_relative_to(site), line  # the wheel's copy, not the checkout


def test_generic_names_are_not_importable_outside_the_repository(tmp_path):
    for name in ("eval", "pipelines"):
        proc = _run([sys.executable, "-c", f"import {name}"], cwd=tmp_path)
        assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr, name


def test_installed_package_maps_eval_and_pipelines_to_the_repository_folders(tmp_path):
    """The environment the tests run in (an editable install in CI) resolves the subpackages to eval/ and
    pipelines/ both from outside the repository and from its root."""
    code = "import lml_sampler.eval as e, lml_sampler.pipelines as p; print(e.__file__); print(p.__file__)"
    for cwd in (tmp_path, REPO):
        proc = _run([sys.executable, "-c", code], cwd=cwd)
        assert proc.returncode == 0, proc.stderr[-2000:]
        eval_file, pipelines_file = map(Path, proc.stdout.split())
        assert eval_file.parent.name == "eval" and pipelines_file.parent.name == "pipelines"


def test_no_python_file_edits_sys_path_or_loads_files_as_modules():
    edits = re.compile(r"sys\.path\s*(\.(insert|append|extend)|=|\[)")
    offenders = [str(p.relative_to(REPO)) for p in PY_FILES if p.name != Path(__file__).name
                 and edits.search(p.read_text())]
    assert offenders == []
    library = [p for p in PY_FILES if p.relative_to(REPO).parts[0] in ("lml_sampler", "eval", "pipelines")]
    assert [str(p) for p in library if "spec_from_file_location" in p.read_text()] == []


def test_every_document_the_code_cites_is_in_the_repository():
    cited = {m for p in PY_FILES for m in re.findall(r"docs/[\w.-]+\.md", p.read_text())}
    assert cited, "the code cites its method notes"
    assert sorted(c for c in cited if not (REPO / c).is_file()) == []
    # no citations of notes that are not in the repository (e.g. a bare "lml.md §3")
    bare = re.compile(r"(?<![/\w-])(lml|dds|fid|benchmarks|diffusers-contract)\.md")
    assert [str(p.relative_to(REPO)) for p in PY_FILES if p.name != Path(__file__).name
            and bare.search(p.read_text())] == []

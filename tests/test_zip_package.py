"""requirements/zip_package.py: the image ships the kubernetes package as a zip of bytecode
(issue 19 §2). Imports work from the zip, tracebacks name the installed files and lines, the
generated directories lose their docstrings and nothing else does, and the zip is the same
whenever it is built."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SPEC = importlib.util.spec_from_file_location(
    "zip_package", REPO / "requirements" / "zip_package.py"
)
assert SPEC and SPEC.loader
zip_package = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(zip_package)


def make_package(site: Path) -> None:
    pkg = site / "pkg"
    (pkg / "generated").mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""The package."""\nfrom pkg.generated.model import Model\n')
    (pkg / "generated" / "__init__.py").write_text("")
    (pkg / "generated" / "model.py").write_text(
        'class Model:\n    """A generated model."""\n\n    def fail(self):\n'
        '        raise ValueError("from the model")\n'
    )
    (pkg / "loader.py").write_text('"""Kept docstring."""\n\ndef load():\n    return 42\n')
    (pkg / "py.typed").write_text("")
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "stale.cpython-311.pyc").write_bytes(b"stale")


def run_python(site: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-S", "-c", f"import site; site.addsitedir({str(site)!r})\n{code}"],
        capture_output=True,
        text=True,
        cwd=site.parent,
        timeout=60,
    )


@pytest.fixture
def zipped(tmp_path: Path) -> Path:
    site = tmp_path / "site-packages"
    make_package(site)
    zip_package.zip_package(site, "pkg", ["generated"])
    return site


def test_the_package_becomes_a_zip_of_bytecode_on_sys_path_via_a_pth_file(zipped: Path) -> None:
    assert sorted(p.name for p in zipped.iterdir()) == ["pkg.pth", "pkg.zip"]
    assert (zipped / "pkg.pth").read_text() == "pkg.zip\n"
    names = zipfile.ZipFile(zipped / "pkg.zip").namelist()
    assert sorted(names) == [
        "pkg/__init__.pyc",
        "pkg/generated/__init__.pyc",
        "pkg/generated/model.pyc",
        "pkg/loader.pyc",
        "pkg/py.typed",
    ]
    result = run_python(
        zipped,
        "import pkg, pkg.loader\n"
        "print(pkg.loader.load(), pkg.__doc__, pkg.loader.__doc__, pkg.Model.__doc__)\n"
        "print(pkg.__file__)",
    )
    assert result.returncode == 0, result.stderr
    first, path = result.stdout.splitlines()
    assert first == "42 The package. Kept docstring. None"  # only generated/ lost its docstrings
    assert path.endswith("pkg.zip/pkg/__init__.pyc")


def test_a_traceback_names_the_installed_file_and_line(zipped: Path) -> None:
    result = run_python(zipped, "import pkg\npkg.Model().fail()")
    assert result.returncode == 1
    assert f'File "{zipped}/pkg/generated/model.py", line 5, in fail' in result.stderr
    assert "ValueError: from the model" in result.stderr


def test_the_zip_is_the_same_whenever_it_is_built(tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    built = []
    for _ in range(2):
        shutil.rmtree(site, ignore_errors=True)
        make_package(site)
        for path in site.rglob("*"):
            os.utime(path, (len(built) * 1e6, len(built) * 1e6))  # other file times each build
        built.append(zip_package.zip_package(site, "pkg", ["generated"]).read_bytes())
    assert built[0] == built[1]
    infos = zipfile.ZipFile(site / "pkg.zip").infolist()
    assert {i.date_time for i in infos} == {zip_package.FIXED_TIME}


def test_a_directory_that_is_not_an_installed_package_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="not an installed package"):
        zip_package.zip_package(tmp_path, "missing", [])

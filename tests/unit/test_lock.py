"""The lock (requirements/*.txt, written by `make lock`) must agree with pyproject.toml, and
the environment the tests run in must be the one it describes.

Read offline from the files: every range in pyproject.toml has a pin inside it in each set that
needs it, nothing is pinned for a requirement pyproject.toml no longer has, every pin carries
hashes (so pip installs in hash-checking mode and refuses anything else), and each installed
distribution is at its pinned version.
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK_DIR = ROOT / "requirements"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Each lock file and the optional-dependency sets it covers.
SETS = {"runtime": (), "embedded": ("embedded",), "dev": ("embedded", "dev")}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+?)(?: ; (.+?))?(?: \\)?$")


@dataclass
class Pin:
    name: str
    version: Version
    marker: Marker | None
    hashes: int = 0
    via: list[str] = field(default_factory=list)

    def applies_here(self) -> bool:
        return self.marker is None or self.marker.evaluate()


def read_lock(path: Path) -> list[Pin]:
    pins: list[Pin] = []
    for line in path.read_text().splitlines():
        if match := _PIN.match(line):
            name, version, marker = match.groups()
            pins.append(Pin(canonicalize_name(name), Version(version),
                            Marker(marker) if marker else None))
        elif pins and "--hash=sha256:" in line:
            pins[-1].hashes += 1
        elif pins and line.strip().startswith("#") and line.strip() not in ("#", "# via"):
            pins[-1].via.append(line.strip().removeprefix("# via").strip(" #"))
    return pins


def requirements(extras: tuple[str, ...]) -> list[Requirement]:
    listed = list(PYPROJECT["project"]["dependencies"])
    for extra in extras:
        listed += PYPROJECT["project"]["optional-dependencies"][extra]
    return [Requirement(line) for line in listed]


@pytest.mark.parametrize("lock", SETS)
def test_every_requirement_of_pyproject_is_pinned_inside_its_range(lock: str) -> None:
    pins = read_lock(LOCK_DIR / f"{lock}.txt")
    for requirement in requirements(SETS[lock]):
        name = canonicalize_name(requirement.name)
        versions = [p.version for p in pins if p.name == name]
        assert versions, f"{name} is in pyproject.toml but not in requirements/{lock}.txt: make lock"
        outside = [v for v in versions if v not in requirement.specifier]
        assert not outside, (f"requirements/{lock}.txt pins {name} {outside}, outside "
                             f"pyproject.toml's {requirement.specifier}: make lock")


@pytest.mark.parametrize("lock", SETS)
def test_nothing_is_pinned_for_a_requirement_pyproject_no_longer_has(lock: str) -> None:
    direct = {canonicalize_name(r.name) for r in requirements(SETS[lock])}
    for pin in read_lock(LOCK_DIR / f"{lock}.txt"):
        if any("pyproject.toml" in via for via in pin.via):
            assert pin.name in direct, (f"requirements/{lock}.txt pins {pin.name} for "
                                        "pyproject.toml, which no longer asks for it: make lock")


@pytest.mark.parametrize("lock", [*SETS, "build"])
def test_every_pin_carries_hashes(lock: str) -> None:
    pins = read_lock(LOCK_DIR / f"{lock}.txt")
    assert pins
    assert not [p.name for p in pins if p.hashes == 0]


def test_the_smaller_sets_agree_with_the_dev_set() -> None:
    """`make lock` resolves the dev set first and constrains the others by it: a runtime image
    runs exactly the versions the tests ran."""
    dev = {(p.name, p.version) for p in read_lock(LOCK_DIR / "dev.txt")}
    for lock in ("runtime", "embedded"):
        for pin in read_lock(LOCK_DIR / f"{lock}.txt"):
            assert (pin.name, pin.version) in dev, (lock, pin.name, str(pin.version))


def test_the_build_tools_of_pyproject_are_locked() -> None:
    pins = {p.name: p.version for p in read_lock(LOCK_DIR / "build.txt")}
    for line in PYPROJECT["build-system"]["requires"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins and pins[name] in requirement.specifier, name


def test_this_environment_is_the_locked_one() -> None:
    """The tests run in an environment made from requirements/dev.txt (make venv-dev)."""
    wrong = {}
    for pin in read_lock(LOCK_DIR / "dev.txt"):
        if not pin.applies_here():
            continue
        try:
            installed = Version(importlib.metadata.version(pin.name))
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed != pin.version:
            wrong[pin.name] = (str(installed), str(pin.version))
    assert not wrong, f"installed vs locked: {wrong}; run: make venv-dev"


def test_a_range_that_excludes_its_pin_is_caught() -> None:
    pins = read_lock(LOCK_DIR / "runtime.txt")
    asyncpg = next(p for p in pins if p.name == "asyncpg")
    assert asyncpg.version in Requirement("asyncpg>=0.30").specifier
    assert asyncpg.version not in Requirement(f"asyncpg>{asyncpg.version}").specifier

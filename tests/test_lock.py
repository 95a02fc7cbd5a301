"""The set-up installs a tested, locked set of versions (constraints.txt): every dependency pyproject.toml names is
pinned there within its range, and the environment the suite runs in is that set (ARCHSMITH_UNLOCKED=1 marks a run
on purpose against newer versions, as docs/dependencies.md describes for moving the lock forward)."""

from __future__ import annotations

import tomllib
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from conftest import LOCK, ROOT, UNLOCKED, installed, locked

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
NOT_LOCKED = {"archsmith", "pip", "setuptools", "wheel"}  # the project itself and the installer
REQUIREMENTS = [r for r in map(Requirement, PROJECT["dependencies"] + sum(PROJECT["optional-dependencies"].values(), []))
                if canonicalize_name(r.name) not in NOT_LOCKED]  # every extra; "archsmith[students]" names one of them


def test_every_dependency_is_pinned_within_its_range():
    pins = locked()
    lines = [line for line in LOCK.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert all("==" in line and line.count("==") == 1 for line in lines), "pins only: name==version"
    assert len(lines) == len(pins), "each distribution once"
    for req in REQUIREMENTS:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in constraints.txt"
        assert req.specifier.contains(Version(pins[name]), prereleases=True), f"{req.name}=={pins[name]} outside {req.specifier}"


@pytest.mark.skipif(UNLOCKED, reason="ARCHSMITH_UNLOCKED=1: a run against newer versions on purpose")
def test_the_environment_is_the_lock():
    """What a fresh clone's set-up installed: every distribution pinned, at its pinned version (a local label such as
    torch's +cpu aside), and nothing unpinned besides the project and the installer."""
    pins = locked()
    found = installed()
    differ = {n: (v, pins[n]) for n, v in found.items() if n in pins and Version(v).public != pins[n]}
    assert not differ, f"installed (version, lock): {differ}"
    unpinned = set(found) - set(pins) - NOT_LOCKED
    assert not unpinned, f"installed but not locked: {sorted(unpinned)}"

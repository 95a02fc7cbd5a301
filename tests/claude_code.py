"""Claude Code itself, driven headless and offline, for the plugin tests.

`claude_cli()` installs the pinned `@anthropic-ai/claude-code` from npm into `.cache/cc` (once; npm's cache makes
it a few seconds) and returns the `claude` executable. Every run gets a temporary HOME and talks to no service:
`ANTHROPIC_BASE_URL` points at `tests/fake_anthropic.py` and telemetry, updates and other traffic are off.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VERSION = "2.1.197"  # the Claude Code these tests were written against; bump deliberately
CACHE = ROOT / ".cache" / "cc"
MARKETPLACE = "archsmith-test"  # the name of the marketplace the tests add
QUIET = {"DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
         "DISABLE_ERROR_REPORTING": "1"}


def claude_cli() -> Path:
    """The `claude` executable of the pinned version; the test is skipped when npm is not on PATH."""
    claude = CACHE / "node_modules" / ".bin" / "claude"
    if claude.exists() and VERSION in subprocess.run([claude, "--version"], capture_output=True, text=True).stdout:
        return claude
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not on PATH: cannot install Claude Code to test the plugin with it")
    CACHE.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([npm, "install", "--prefix", str(CACHE), "--no-audit", "--no-fund", "--loglevel", "error",
                           f"@anthropic-ai/claude-code@{VERSION}"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"npm install @anthropic-ai/claude-code@{VERSION} failed:\n{done.stderr[-2000:]}"
    return claude


def environment(home: Path, **extra: str) -> dict[str, str]:
    """A clean environment for Claude Code: temporary HOME, no service reached, pip's own settings passed through."""
    return {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8", **QUIET,
            **{k: v for k, v in os.environ.items() if k.startswith("PIP_")}, **extra}


def with_api(env: dict[str, str], url: str) -> dict[str, str]:
    """`env` pointed at the fake Anthropic API at `url`."""
    return {**env, "ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": "sk-ant-test-key"}


def run(claude: Path, args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    done = subprocess.run([str(claude), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"claude {' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def plugin_git_repo(tmp: Path) -> str:
    """A bare git repository holding the plugin as it is in this working tree (ignored files left out); its URL."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: cannot build the plugin's git repository")
    work = tmp / "plugin-src"
    for name in filter(None, listed.stdout.split("\0")):
        source = ROOT / name
        if source.is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, work / name)
    git = ["git", "-c", "user.name=archsmith tests", "-c", "user.email=tests@archsmith.invalid", "-c", "init.defaultBranch=main"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "plugin under test"]):
        subprocess.run([*git, *command], cwd=work, check=True, capture_output=True)
    bare = tmp / "archsmith.git"
    subprocess.run([*git, "clone", "-q", "--bare", str(work), str(bare)], check=True, capture_output=True)
    return bare.as_uri()


def git_marketplace(tmp: Path, url: str) -> Path:
    """A marketplace whose archsmith entry is the git repository at `url`, as users install it."""
    market = tmp / "marketplace"
    (market / ".claude-plugin").mkdir(parents=True)
    (market / ".claude-plugin" / "marketplace.json").write_text(json.dumps({
        "name": MARKETPLACE, "owner": {"name": "archsmith tests"},
        "plugins": [{"name": "archsmith", "source": {"source": "url", "url": url},
                     "description": "archsmith, installed from its git repository"}]}))
    return market


def install_from_git(claude: Path, tmp: Path, env: dict[str, str]) -> Path:
    """`claude plugin marketplace add` + `claude plugin install`; returns the plugin's copy in Claude Code's cache."""
    market = git_marketplace(tmp, plugin_git_repo(tmp))
    run(claude, ["plugin", "marketplace", "add", str(market)], env, tmp)
    run(claude, ["plugin", "install", f"archsmith@{MARKETPLACE}"], env, tmp)
    installed = json.loads((Path(env["HOME"]) / ".claude" / "plugins" / "installed_plugins.json").read_text())
    (entry,) = installed["plugins"][f"archsmith@{MARKETPLACE}"]
    return Path(entry["installPath"])


def data_dir(home: Path) -> Path:
    """${CLAUDE_PLUGIN_DATA} of the plugin installed by `install_from_git`."""
    return home / ".claude" / "plugins" / "data" / f"archsmith-{MARKETPLACE}"


def headless(claude: Path, prompt: str, env: dict[str, str], cwd: Path, allowed: list[str], timeout: float = 120,
             extra: list[str] = ()) -> list[dict]:
    """`claude -p` with stream-json output: the events, in order."""
    done = run(claude, ["-p", prompt, "--output-format", "stream-json", "--verbose", "--no-session-persistence",
                        "--allowedTools", ",".join(allowed), *extra], env, cwd, timeout)
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def init_event(events: list[dict]) -> dict:
    return next(e for e in events if e.get("type") == "system" and e.get("subtype") == "init")

"""The plugin as users install it: from a git marketplace entry into Claude Code's cache, with no .venv there.

hooks/bootstrap.py gives it a Python environment in ${CLAUDE_PLUGIN_DATA}. The tests drive the real pieces: the
bootstrap as Claude Code starts it, a real MCP client over stdio, Claude Code itself (npm) against the fake
Anthropic API in tests/fake_anthropic.py, and (slow) the real `pip install` into the plugin's data directory.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters, types

import claude_code
from fake_anthropic import FakeAnthropic, reply, tool_use

from archsmith.catalog import reference_config
from archsmith.estimate import count_params
from archsmith.hfconfig import spec_from_hf
from archsmith.mcp_server.tools import TOOLS

ROOT = Path(__file__).resolve().parents[1]
BOOTSTRAP = ROOT / "hooks" / "bootstrap.py"
PREFIX = "mcp__plugin_archsmith_archsmith__"
ESTIMATE, STATUS = PREFIX + "estimate_config", PREFIX + "setup_status"
ESTIMATE_ID = "toolu_estimate"  # the id of the scripted estimate_config call
LLAMA = reference_config("meta-llama__Llama-3.2-1B")


def load_bootstrap():
    spec = importlib.util.spec_from_file_location("archsmith_bootstrap", BOOTSTRAP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def plugin_copy(tmp: Path) -> Path:
    """The files the bootstrap reads, in a directory of their own (an installed plugin minus the rest)."""
    root = tmp / "plugin"
    for name in ("hooks/bootstrap.py", "hooks/tools.json", ".claude-plugin/plugin.json", "pyproject.toml", "constraints.txt"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, root / name)
    return root


def bootstrap_env(root: Path, data: Path, **extra: str) -> dict[str, str]:
    """What Claude Code gives the hook and the server, with this interpreter as the Python to install with."""
    return {"PATH": os.environ["PATH"], "HOME": str(data.parent), "CLAUDE_PLUGIN_ROOT": str(root),
            "CLAUDE_PLUGIN_DATA": str(data), "ARCHSMITH_PYTHON": sys.executable, **extra}


def seed_ready_environment(root: Path, data: Path, monkeypatch) -> Path:
    """Mark envs/<stamp> as installed, its server being this venv's: what a finished `pip install` leaves."""
    monkeypatch.setenv("ARCHSMITH_PYTHON", sys.executable)
    boot = load_bootstrap()
    env = data / "envs" / boot.stamp(root, *boot.find_python())
    (env / "bin").mkdir(parents=True)
    for name in ("archsmith-mcp", "archsmith"):
        (env / "bin" / name).symlink_to(Path(sys.executable).parent / name)
    (env / "bin" / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (env / "bin" / "python").chmod(0o755)
    (env / "archsmith-ready.json").write_text("{}")
    return env


def estimate_total(result_text: str) -> int:
    return json.loads(result_text)["params"]["total"]


def text_of(block: dict) -> str:
    content = block["content"]
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)


def results_by_id(body: dict) -> dict[str, dict]:
    """Every tool result of the conversation so far, by tool_use id."""
    return {block["tool_use_id"]: block for message in body["messages"] if isinstance(message["content"], list)
            for block in message["content"] if block.get("type") == "tool_result"}


def model_that_calls(calls: list[tuple[str, str, dict]], answer: str):
    """A scripted model: makes `calls` ((id, tool, input)) in order, each once its tool is listed, and then answers.
    Until a tool is listed it waits, as a model would: archsmith's setup_status while the plugin installs, else
    Claude Code's WaitForMcpServers (MCP servers connect in the background; a loaded machine can be slow)."""

    def step(body: dict):
        listed, done = {t["name"] for t in body["tools"]}, results_by_id(body)
        pending = [call for call in calls if call[0] not in done]
        if not pending:
            return reply(answer)
        id_, tool, arguments = pending[0]
        if tool in listed:
            return reply(tool_use(tool, arguments, id=id_))
        if STATUS in listed:
            return reply(tool_use(STATUS, {"wait_seconds": 50}))
        return reply(tool_use("WaitForMcpServers", {}))

    return step


# ---- the bootstrap on its own -------------------------------------------------------------------------------------

def test_stamp_changes_with_version_dependencies_or_python_and_nothing_else(tmp_path):
    boot = load_bootstrap()
    a, b = plugin_copy(tmp_path / "a"), plugin_copy(tmp_path / "b")
    python = ("/usr/bin/python3.11", (3, 11, 7))
    assert boot.stamp(a, *python) == boot.stamp(b, *python)  # a new cache path alone re-installs nothing
    assert boot.stamp(a, "/usr/bin/python3.12", (3, 12, 1)) != boot.stamp(a, *python)
    manifest = json.loads((b / ".claude-plugin" / "plugin.json").read_text())
    (b / ".claude-plugin" / "plugin.json").write_text(json.dumps({**manifest, "version": "9.9.9"}))
    assert boot.stamp(b, *python) != boot.stamp(a, *python)
    (b / ".claude-plugin" / "plugin.json").write_text(json.dumps(manifest))
    pyproject = (b / "pyproject.toml").read_text()
    (b / "pyproject.toml").write_text(pyproject.replace('"jinja2>=3.1",', '"jinja2>=3.1.4",'))
    assert boot.stamp(b, *python) != boot.stamp(a, *python)
    (b / "pyproject.toml").write_text(pyproject)
    lock = (b / "constraints.txt").read_text()
    (b / "constraints.txt").write_text(re.sub(r"(?m)^transformers==.*$", "transformers==5.99.0", lock))
    assert boot.stamp(b, *python) != boot.stamp(a, *python)  # moving the lock re-installs


def test_too_old_python_fails_in_one_line_naming_what_to_do(tmp_path):
    root, data = plugin_copy(tmp_path), tmp_path / "data"
    old = tmp_path / "python3.9"
    old.write_text("#!/bin/sh\necho 3 9 18\n")  # answers the version question as a Python 3.9 would
    old.chmod(0o755)
    done = subprocess.run([sys.executable, str(root / "hooks" / "bootstrap.py"), "hook"], capture_output=True, text=True,
                          env=bootstrap_env(root, data, ARCHSMITH_PYTHON=str(old)), timeout=60)
    assert done.returncode == 0, done.stderr  # a hook that fails must not break the session
    output = json.loads(done.stdout)
    line = output["systemMessage"]
    assert "\n" not in line and "failed: archsmith needs Python >= 3.11" in line and "3.9.18" in line
    assert "ARCHSMITH_PYTHON" in line and str(data / "install.log") in line
    assert "not available" in output["hookSpecificOutput"]["additionalContext"]
    assert not any((data / "envs").glob("*/archsmith-ready.json"))


def test_pip_failure_is_reported_with_pips_own_error_and_pip_settings_are_honoured(tmp_path):
    root, data = plugin_copy(tmp_path), tmp_path / "data"
    for name in ("README.md", "src", "mcp_server", "templates"):  # what `pip install` builds from
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy2)(ROOT / name, root / name)
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    env = bootstrap_env(root, data, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(empty), PIP_CONFIG_FILE=os.devnull)
    done = subprocess.run([sys.executable, str(root / "hooks" / "bootstrap.py"), "hook"], capture_output=True, text=True,
                          env=env, timeout=300)
    line = json.loads(done.stdout)["systemMessage"]
    assert "installing its Python environment failed: pip install failed (exit 1): ERROR:" in line, line
    assert "setuptools" in line  # no index (PIP_NO_INDEX from the environment): the build backend is not found
    status = subprocess.run([sys.executable, str(root / "hooks" / "bootstrap.py"), "status"], capture_output=True,
                            text=True, env=env, timeout=60)
    assert status.returncode == 1 and status.stdout.strip() == line


def test_checkout_venv_is_used_without_installing(tmp_path):
    root, data = plugin_copy(tmp_path), tmp_path / "data"
    (root / ".venv" / "bin").mkdir(parents=True)
    (root / ".venv" / "bin" / "archsmith-mcp").symlink_to(Path(sys.executable).parent / "archsmith-mcp")
    server = StdioServerParameters(command=sys.executable, args=[str(root / "hooks" / "bootstrap.py"), "serve"],
                                   env=bootstrap_env(root, data, ARCHSMITH_WORKSPACE=str(tmp_path)))

    async def main():
        async with Client(server) as client:
            assert {t.name for t in (await client.list_tools()).tools} == {fn.__name__ for fn in TOOLS}

    anyio.run(main)
    assert not (data / "envs").exists() and not (data / "install.log").exists()


def test_the_tool_list_offered_during_the_install_is_the_servers_own():
    """hooks/tools.json is what the real server lists; a renamed tool or a changed signature makes it stale."""
    spec = importlib.util.spec_from_file_location("tool_list", ROOT / "scripts" / "tool_list.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    shipped = json.loads((ROOT / "hooks" / "tools.json").read_text())["tools"]
    assert shipped == script.tool_list(), "hooks/tools.json is stale: run `.venv/bin/python scripts/tool_list.py`"
    assert [t["name"] for t in shipped] == [t["name"] for t in load_bootstrap().listed_tools()]


def test_server_connects_during_the_install_and_hands_over_when_it_is_done(tmp_path, monkeypatch):
    """Claude Code gives a server 30 s to answer; an install takes minutes. The stand-in answers at once, with the
    real tools listed; a call made during the install is answered by the real server once it is done."""
    root, data = plugin_copy(tmp_path), tmp_path / "data"
    data.mkdir()
    lock = open(data / "install.lock", "a+")
    fcntl.flock(lock, fcntl.LOCK_EX)  # an install is running (so the bootstrap starts none of its own)
    server = StdioServerParameters(command=sys.executable, args=[str(root / "hooks" / "bootstrap.py"), "serve"],
                                   env=bootstrap_env(root, data, ARCHSMITH_WORKSPACE=str(tmp_path)))
    expected = count_params(spec_from_hf(LLAMA))["total"]

    async def main():
        changed = anyio.Event()

        async def on_message(message) -> None:
            if isinstance(message, types.ToolListChangedNotification):
                changed.set()

        async with Client(server, message_handler=on_message) as client:
            names = {fn.__name__ for fn in TOOLS}
            assert {t.name for t in (await client.list_tools()).tools} == names | {"setup_status"}
            now = await client.call_tool("setup_status", {"wait_seconds": 0})
            assert not now.is_error and "installing its Python environment" in now.content[0].text
            early: dict = {}

            async def call_early() -> None:
                early["result"] = await client.call_tool("estimate_config", {"config": LLAMA})

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(call_early)
                await client.call_tool("setup_status", {"wait_seconds": 1})  # the early call is held by now
                assert "result" not in early  # it waits for the install
                seed_ready_environment(root, data, monkeypatch)  # the install finishes ...
                lock.close()  # ... and releases its lock
                with anyio.fail_after(60):
                    waited = await client.call_tool("setup_status", {"wait_seconds": 50})
                    assert "ready" in waited.content[0].text
                    await changed.wait()
            assert not early["result"].is_error and early["result"].structured_content["params"]["total"] == expected
            assert {t.name for t in (await client.list_tools()).tools} == names
            result = await client.call_tool("estimate_config", {"config": LLAMA})
            assert not result.is_error and result.structured_content["params"]["total"] == expected
            resources = await client.list_resources()
            assert "archsmith://gpus" in {str(r.uri) for r in resources.resources}

    anyio.run(main)


# ---- Claude Code: validate, install from git, connect, call a tool --------------------------------------------------

@pytest.fixture(scope="module")
def claude() -> Path:
    return claude_code.claude_cli()


def test_claude_plugin_validate_passes_strictly(claude, tmp_path):
    env = claude_code.environment(tmp_path)
    for target in (ROOT / ".claude-plugin" / "plugin.json", ROOT):  # the plugin, then the marketplace
        done = claude_code.run(claude, ["plugin", "validate", "--strict", str(target)], env, tmp_path)
        assert "Validation passed" in done.stdout and "warning" not in done.stdout.lower(), done.stdout


def agent_tools() -> set[str]:
    from test_plugin import AGENTS, front_matter, tool_list

    return {tool for path in AGENTS for tool in tool_list(front_matter(path)[0])}


def test_git_marketplace_install_connects_and_a_tool_answers(claude, tmp_path, monkeypatch):
    home, work = tmp_path / "home", tmp_path / "project"
    home.mkdir(), work.mkdir()
    env = claude_code.environment(home, ARCHSMITH_PYTHON=sys.executable)
    cached = claude_code.install_from_git(claude, tmp_path, env)
    assert (cached / "hooks" / "bootstrap.py").is_file() and not (cached / ".venv").exists()
    seed_ready_environment(ROOT, claude_code.data_dir(home), monkeypatch)  # as a finished install leaves it

    listed = claude_code.run(claude, ["mcp", "list"], env, work)
    line = next(l for l in listed.stdout.splitlines() if l.startswith("plugin:archsmith:archsmith"))
    assert "✔ Connected" in line and str(cached / "hooks" / "bootstrap.py") in line

    expected = count_params(spec_from_hf(LLAMA))["total"]  # equal to transformers' own count (test_params)
    (work / "llama.json").write_text(json.dumps(LLAMA))
    cli = "archsmith estimate llama.json --json"  # bin/archsmith, on the Bash tool's PATH
    model = model_that_calls([("toolu_mcp", ESTIMATE, {"config": LLAMA}),
                              ("toolu_cli", "Bash", {"command": cli, "description": "the same through the CLI"})],
                             "Llama-3.2-1B: see the tool results.")
    with FakeAnthropic([model] * 20) as api:
        events = claude_code.headless(claude, "How many parameters has Llama-3.2-1B?", claude_code.with_api(env, api.url),
                                      work, [ESTIMATE, f"Bash({cli})", "WaitForMcpServers"])
    init = claude_code.init_event(events)
    assert {f"archsmith:{p.stem}" for p in (ROOT / "agents").glob("*.md")} <= set(init["agents"])
    missing = {t for t in agent_tools() if not t.startswith("mcp__")} - set(init["tools"])
    assert not missing, f"agents ask for tools this Claude Code does not offer: {sorted(missing)}"
    offered = next(m for m in api.messages() if ESTIMATE in {t["name"] for t in m["tools"]})
    assert {t["name"] for t in offered["tools"] if t["name"].startswith(PREFIX)} == {PREFIX + fn.__name__ for fn in TOOLS}
    done = results_by_id(api.messages()[-1])
    assert not done["toolu_mcp"].get("is_error") and estimate_total(text_of(done["toolu_mcp"])) == expected
    assert not done["toolu_cli"].get("is_error") and estimate_total(text_of(done["toolu_cli"])) == expected
    assert events[-1]["type"] == "result" and events[-1]["subtype"] == "success"


@pytest.mark.slow
def test_fresh_home_installs_the_environment_with_pip_and_answers(claude, tmp_path):
    """No .venv anywhere: the first session's hook runs `pip install` into ${CLAUDE_PLUGIN_DATA} (minutes)."""
    home, work = tmp_path / "home", tmp_path / "project"
    home.mkdir(), work.mkdir()
    constraint = tmp_path / "constraints.txt"
    constraint.write_text("torch==2.13.0\n")  # the CPU wheel on these machines; an unpinned torch pulls CUDA
    env = claude_code.environment(home, PIP_CONSTRAINT=str(constraint))
    claude_code.install_from_git(claude, tmp_path, env)
    data = claude_code.data_dir(home)
    expected = count_params(spec_from_hf(LLAMA))["total"]

    started = time.time()
    model = model_that_calls([(ESTIMATE_ID, ESTIMATE, {"config": LLAMA})], "done")
    with FakeAnthropic([model] * 30) as api:
        events = claude_code.headless(claude, "How many parameters has Llama-3.2-1B?", claude_code.with_api(env, api.url),
                                      work, [ESTIMATE, STATUS, "WaitForMcpServers"], timeout=900)
    first_session = time.time() - started
    api_calls = api.messages()
    offers = [{t["name"] for t in m["tools"] if t["name"].startswith(PREFIX)} for m in api_calls]
    tools = {PREFIX + fn.__name__ for fn in TOOLS}
    assert all(tools <= offer <= tools | {STATUS} for offer in offers)  # the tools, from this session's first request
    hook = next(e for e in events if e.get("subtype") == "hook_response")
    assert "Python environment ready" in json.loads(hook["stdout"])["systemMessage"]
    result = results_by_id(api.messages()[-1])[ESTIMATE_ID]
    assert not result.get("is_error") and estimate_total(text_of(result)) == expected
    assert events[-1]["subtype"] == "success" and events[-1]["result"] == "done"
    (env_dir,) = [p.parent for p in (data / "envs").glob("*/archsmith-ready.json")]
    torch_version = subprocess.run([str(env_dir / "bin" / "python"), "-c", "import torch; print(torch.__version__)"],
                                   capture_output=True, text=True).stdout.strip()
    assert torch_version == "2.13.0+cpu"  # PIP_CONSTRAINT from the environment was honoured
    locked = re.search(r"(?m)^transformers==(\S+)$", (ROOT / "constraints.txt").read_text()).group(1)
    installed = subprocess.run([str(env_dir / "bin" / "python"), "-c", "import transformers; print(transformers.__version__)"],
                               capture_output=True, text=True).stdout.strip()
    assert installed == locked  # the plugin installs the locked versions

    log_size = (data / "install.log").stat().st_size
    listed = claude_code.run(claude, ["mcp", "list"], env, work)
    assert "✔ Connected" in next(l for l in listed.stdout.splitlines() if l.startswith("plugin:archsmith:archsmith"))
    with FakeAnthropic([reply("again")]) as api:
        again = claude_code.headless(claude, "hi", claude_code.with_api(env, api.url), work, [ESTIMATE])
    assert not [e for e in again if e.get("subtype") == "hook_response" and e.get("stdout", "").strip()]  # silent
    assert (data / "install.log").stat().st_size == log_size  # same stamp: nothing re-installed
    print(f"first session with the install: {first_session:.0f} s, {len(api_calls)} API calls, "
          f"setup_status offered in {sum(STATUS in o for o in offers)} of them")
    shutil.rmtree(data / "envs")  # about 1.8 GB

"""Plugin lint: the manifest, .mcp.json, agents and skills parse and name only tools that exist."""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from archsmith.mcp_server.tools import TOOLS

ROOT = Path(__file__).resolve().parents[1]
SERVER = "archsmith"  # the key in .mcp.json
MCP_TOOLS = {f"mcp__plugin_archsmith_{SERVER}__{fn.__name__}" for fn in TOOLS}
# The built-in tools of Claude Code 2.1 (its init event, checked in test_plugin_install.py): no Grep, Glob, TodoWrite
# or MultiEdit any more; an agent that names a tool Claude Code lacks loses it silently.
CLAUDE_CODE_TOOLS = {"Task", "Bash", "CronCreate", "CronDelete", "CronList", "Edit", "EnterWorktree", "ExitWorktree",
                     "ListMcpResourcesTool", "NotebookEdit", "Read", "ReadMcpResourceDirTool", "ReadMcpResourceTool",
                     "ReportFindings", "ScheduleWakeup", "SendMessage", "Skill", "TaskCreate", "TaskGet", "TaskList",
                     "TaskOutput", "TaskStop", "TaskUpdate", "WebFetch", "WebSearch", "Workflow", "Write"}
AGENTS = sorted((ROOT / "agents").glob("*.md"))  # Claude Code loads every .md here as an agent
SKILLS = sorted((ROOT / "skills").glob("*/SKILL.md"))
ROLES = {"model-architect", "network-architect", "llm-architect", "ml-architecture-designer"}


def front_matter(path: Path) -> tuple[dict, str]:
    text = path.read_text(encoding="utf-8")
    match = re.match(r"---\n(.*?)\n---\n(.*)", text, re.S)
    assert match, f"{path.name}: no YAML front matter"
    meta = yaml.safe_load(match.group(1))
    assert isinstance(meta, dict), f"{path.name}: front matter is not a mapping"
    return meta, match.group(2)


def test_manifest_has_the_fields_claude_code_reads():
    manifest = json.loads((ROOT / ".claude-plugin" / "plugin.json").read_text())
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert manifest["name"] == "archsmith" and manifest["version"] == version
    assert manifest["description"] and manifest["author"]["name"] and manifest["license"] == "Apache-2.0"
    assert isinstance(manifest["keywords"], list) and all(isinstance(k, str) for k in manifest["keywords"])
    market = json.loads((ROOT / ".claude-plugin" / "marketplace.json").read_text())
    assert market["plugins"][0]["name"] == "archsmith" and (ROOT / market["plugins"][0]["source"] / ".claude-plugin").is_dir()


def test_mcp_json_and_the_session_hook_run_the_bootstrap():
    """Installed from a marketplace the plugin has no .venv: both entry points go through hooks/bootstrap.py."""
    entry = json.loads((ROOT / ".mcp.json").read_text())["mcpServers"][SERVER]
    assert entry["command"] == "python3" and entry["args"] == ["${CLAUDE_PLUGIN_ROOT}/hooks/bootstrap.py", "serve"]
    (group,) = json.loads((ROOT / "hooks" / "hooks.json").read_text())["hooks"]["SessionStart"]
    (hook,) = group["hooks"]
    assert hook["command"] == 'python3 "${CLAUDE_PLUGIN_ROOT}/hooks/bootstrap.py" hook' and hook["statusMessage"]
    source = (ROOT / "hooks" / "bootstrap.py").read_text()
    wait = int(re.search(r"^HOOK_WAIT_S = (\d+)", source, re.M).group(1))
    assert wait < hook["timeout"], "the hook must report before Claude Code cancels it"


def test_the_four_roles_exist():
    assert {p.stem for p in AGENTS} == ROLES
    assert {"model-architect", "tokenizer-trainer"} <= {p.parent.name for p in SKILLS}


def tool_list(meta: dict) -> list[str]:
    """An agent's `tools:` front matter (a comma-separated string or a YAML list)."""
    tools = meta["tools"]
    return [t.strip() for t in tools.split(",")] if isinstance(tools, str) else list(tools)


@pytest.mark.parametrize("path", AGENTS, ids=lambda p: p.stem)
def test_agent_front_matter_and_tools(path):
    meta, body = front_matter(path)
    assert meta["name"] == path.stem
    assert "<example>" in meta["description"] and "</example>" in meta["description"]
    tools = tool_list(meta)
    unknown = [t for t in tools if t not in CLAUDE_CODE_TOOLS | MCP_TOOLS]
    assert not unknown, f"{path.name} names tools that do not exist: {unknown}"
    assert any(t in MCP_TOOLS for t in tools), f"{path.name} uses none of our MCP tools"
    mentioned = set(re.findall(r"mcp__plugin_archsmith_\w+__\w+", path.read_text()))
    assert mentioned <= MCP_TOOLS, f"{path.name} mentions tools that do not exist: {sorted(mentioned - MCP_TOOLS)}"
    assert len(body.strip().splitlines()) >= 20


@pytest.mark.parametrize("path", SKILLS, ids=lambda p: p.parent.name)
def test_skill_front_matter_and_references(path):
    meta, body = front_matter(path)
    assert meta["name"] == path.parent.name and isinstance(meta["description"], str) and meta["description"].strip()
    mentioned = set(re.findall(r"mcp__plugin_archsmith_\w+__\w+", path.read_text()))
    assert mentioned <= MCP_TOOLS, f"{path} mentions tools that do not exist: {sorted(mentioned - MCP_TOOLS)}"
    for ref in re.findall(r"(references/[\w./-]+\.md)", body):
        assert (path.parent / ref).is_file(), f"{path} links to a missing {ref}"


# Paths that exist in archsmith's repository but not in the user's project, where agents and skills run.
REPO_PATH = re.compile(r"(?<![\w/.}-])(?:\.\./|\./)?(?:src|tests|benchmarks|skills|agents|mcp_server|templates|docs|hooks|"
                       r"\.venv|\.claude-plugin|shared)/[\w./*{}-]*|\bDESIGN\.md\b")
WORDS = AGENTS + sorted(p for p in (ROOT / "skills").glob("*/**/*") if p.suffix in (".md", ".py"))


@pytest.mark.parametrize("path", WORDS, ids=lambda p: str(p.relative_to(ROOT)))
def test_words_name_tools_and_plugin_files_not_repository_paths(path):
    text = path.read_text(encoding="utf-8")
    assert not REPO_PATH.findall(text), f"{path.relative_to(ROOT)} points into the repository: {REPO_PATH.findall(text)}"
    for ref in re.findall(r"\$\{CLAUDE_PLUGIN_ROOT\}/([\w./-]+\w)", text):
        assert (ROOT / ref).exists(), f"{path.relative_to(ROOT)} names a plugin file that does not exist: {ref}"


def test_the_grep_catches_what_it_should():
    caught = ["Follow `skills/model-architect/SKILL.md`", "edit src/network.py", "run .venv/bin/pytest",
              "see ../docs/architecture.md", "read DESIGN.md"]
    allowed = ["${CLAUDE_PLUGIN_ROOT}/skills/x/SKILL.md", "read `references/components.md`", "write to runs/1b",
               "the Hub repo's README.md", "archsmith.network"]
    assert all(REPO_PATH.search(t) for t in caught) and not any(REPO_PATH.search(t) for t in allowed)


def test_docs_point_at_the_architecture_document_in_the_repository():
    assert (ROOT / "docs" / "architecture.md").is_file()
    for doc in (ROOT / ".claude" / "CLAUDE.md", ROOT / "skills" / "README.md"):
        text = doc.read_text(encoding="utf-8")
        assert "docs/architecture.md" in text and "DESIGN.md" not in text and "shared/" not in text


def test_architecture_documents_modules_commands_and_tools_that_exist():
    table = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8").split("## Where each capability lives")[1]
    rows = [line.split("|")[2:5] for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    commands = {named or fn for named, fn in re.findall(r'@app\.command\((?:"(\w+)")?\)\ndef (\w+)\(', (ROOT / "src" / "cli.py").read_text())}
    tools = {fn.__name__ for fn in TOOLS}
    assert rows and commands
    for engine, cli, mcp in rows:
        plain = lambda cell: re.findall(r"`(\w+)`", re.sub(r"\(.*?\)", "", cell))  # noqa: E731 (notes in brackets)
        assert all((ROOT / "src" / f"{m}.py").is_file() or (ROOT / "src" / m / "__init__.py").is_file() for m in plain(engine)), engine
        assert set(plain(cli)) <= commands, cli
        assert set(plain(mcp)) <= tools, mcp


def test_plugin_executables_run_the_environments_programs():
    for name, program in (("archsmith", "archsmith"), ("archsmith-python", "python")):
        script = ROOT / "bin" / name
        assert os.access(script, os.X_OK), f"bin/{name} is not executable"
        assert f'hooks/bootstrap.py" run {program} "$@"' in script.read_text()


@pytest.mark.parametrize("path", sorted((ROOT / "skills").glob("*/scripts/*.py")), ids=lambda p: p.parent.parent.name)
def test_skill_scripts_run_as_shipped(path, tmp_path, monkeypatch):
    import runpy

    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(path), run_name="__main__")


# ---- every role has the hands its words need ------------------------------------------------------------------------

TOOL_NAMES = {fn.__name__ for fn in TOOLS}
SKILL_FILES = {p.parent.name: p for p in SKILLS}


def skills_named(text: str) -> set[str]:
    """Skills a text tells the model to follow: `archsmith:NAME`, or "the NAME skill" / "the A and B skills"."""
    named = set(re.findall(r"archsmith:([\w-]+)", text))
    for phrase in re.findall(r"((?:`?[\w:-]+`?,?\s+(?:and|or)\s+)*`?[\w:-]+`?)\s+skills?\b", text):
        named |= {word.split(":")[-1] for word in re.findall(r"[\w:-]+", phrase)}
    return named & set(SKILL_FILES)


def sentences(text: str) -> list[str]:
    """A Markdown text's sentences: indented lines continue the item above them; table rows stand alone."""
    items = re.sub(r"\n[ \t]+(?=\S)", " ", text).splitlines()
    return [s for item in items for s in re.split(r"(?<=\.)\s+(?=[A-Z`*(])", item)]


def tools_named(text: str, role: str) -> set[str]:
    """MCP tools a text names as its own: a sentence that names another role (a hand-off, "llm-architect's
    write_design") names that role's tools."""
    others = ROLES - {role}
    return {tool for sentence in sentences(text) if not any(other in sentence for other in others)
            for tool in TOOL_NAMES & set(re.findall(r"\b[a-z][a-z_]+\b", sentence))}


@pytest.mark.parametrize("path", AGENTS, ids=lambda p: p.stem)
def test_every_role_has_the_tools_its_words_and_skills_call(path):
    meta, body = front_matter(path)
    tools = set(tool_list(meta))
    own = {t.rsplit("__", 1)[-1] for t in tools if t in MCP_TOOLS}
    skills = skills_named(body)
    assert not skills or "Skill" in tools, f"{path.name} follows {sorted(skills)} but cannot load a skill: no Skill tool"
    missing = tools_named(body, path.stem) - own
    assert not missing, f"{path.name} calls {sorted(missing)} without them in its tools"
    for skill in skills:
        text = SKILL_FILES[skill].read_text(encoding="utf-8")
        missing = tools_named(text, path.stem) - own
        assert not missing, f"{path.name} follows the {skill} skill, which calls {sorted(missing)}: not in its tools"


def test_the_role_checks_read_what_they_should():
    assert skills_named("Follow the `archsmith:model-compression` skill") == {"model-compression"}
    assert skills_named("Follow the tokenizer-trainer and training-run skills.") == {"tokenizer-trainer", "training-run"}
    assert skills_named("the network-architect agent builds it") == set()
    assert tools_named("run `start_training`, then `training_status`", "network-architect") == {"start_training", "training_status"}
    assert tools_named("- To **llm-architect**: a design with\n  reports (`write_design`).", "network-architect") == set()
    assert tools_named("Hand it to llm-architect. Then `write_design`.", "network-architect") == {"write_design"}
    assert tools_named("the llm-architect's `write_design`", "llm-architect") == {"write_design"}
    meta, _ = front_matter(ROOT / "agents" / "network-architect.md")
    assert {f"mcp__plugin_archsmith_{SERVER}__{t}" for t in ("start_training", "training_status", "stop_training")} <= set(tool_list(meta))


def test_every_skill_is_followed_by_a_role():
    followed = {skill for path in AGENTS for skill in skills_named(front_matter(path)[1])}
    assert followed == set(SKILL_FILES), f"no role loads {sorted(set(SKILL_FILES) - followed)}"

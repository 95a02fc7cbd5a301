"""Plugin lint: the manifest, .mcp.json, agents and skills parse and name only tools that exist."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from archsmith.mcp_server.tools import TOOLS

ROOT = Path(__file__).resolve().parents[1]
SERVER = "archsmith"  # the key in .mcp.json
MCP_TOOLS = {f"mcp__plugin_archsmith_{SERVER}__{fn.__name__}" for fn in TOOLS}
CLAUDE_CODE_TOOLS = {"Read", "Write", "Edit", "MultiEdit", "Bash", "Grep", "Glob", "WebFetch", "WebSearch", "TodoWrite",
                     "NotebookEdit", "Task", "Skill"}
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


def test_mcp_json_starts_our_server_from_the_plugin_root():
    entry = json.loads((ROOT / ".mcp.json").read_text())["mcpServers"][SERVER]
    assert entry["command"].startswith("${CLAUDE_PLUGIN_ROOT}/") and entry["command"].endswith("/archsmith-mcp")
    assert (ROOT / entry["command"].replace("${CLAUDE_PLUGIN_ROOT}/", "")).parent.name == "bin"


def test_the_four_roles_exist():
    assert {p.stem for p in AGENTS} == ROLES
    assert {"model-architect", "tokenizer-trainer"} <= {p.parent.name for p in SKILLS}


@pytest.mark.parametrize("path", AGENTS, ids=lambda p: p.stem)
def test_agent_front_matter_and_tools(path):
    meta, body = front_matter(path)
    assert meta["name"] == path.stem
    assert "<example>" in meta["description"] and "</example>" in meta["description"]
    tools = [t.strip() for t in meta["tools"].split(",")] if isinstance(meta["tools"], str) else meta["tools"]
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

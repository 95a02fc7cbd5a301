"""The four roles as data: the plugin's agents/ROLE.md (YAML front matter + system prompt), read for the runner.

The files ship inside the package as `archsmith.agents`, so an installed runner reads the same definitions that
Claude Code loads from the plugin. A role's `tools:` names Claude Code tools and archsmith MCP tools
(`mcp__plugin_archsmith_archsmith__<tool>`); outside Claude Code only the MCP tools exist.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import yaml

from archsmith.errors import ArchsmithError

PACKAGE = "archsmith.agents"
MCP_PREFIX = "mcp__plugin_archsmith_archsmith__"  # how Claude Code names the plugin's MCP tools
# What Claude Code 2.1.197 sends for the front-matter model names; the same variables override them here.
MODEL_DEFAULTS = {"sonnet": "claude-sonnet-5", "opus": "claude-opus-4-8", "haiku": "claude-haiku-4-5-20251001"}
MODEL_ENV = {"sonnet": "ANTHROPIC_DEFAULT_SONNET_MODEL", "opus": "ANTHROPIC_DEFAULT_OPUS_MODEL",
             "haiku": "ANTHROPIC_DEFAULT_HAIKU_MODEL"}
INHERIT_ENV = "ANTHROPIC_MODEL"  # `model: inherit` at the top level: this, else the sonnet model


@dataclass(frozen=True)
class Role:
    """One role: `prompt` is the Markdown body after the front matter."""

    name: str
    description: str
    tools: tuple[str, ...]
    model: str
    prompt: str

    @property
    def mcp_tools(self) -> tuple[str, ...]:
        """The archsmith MCP tools the front matter allows, by their server names (`estimate_config`, ...)."""
        return tuple(t[len(MCP_PREFIX):] for t in self.tools if t.startswith(MCP_PREFIX))

    @property
    def summary(self) -> str:
        """The description without its `<example>` blocks: what the role is for."""
        return re.sub(r"\s*<example>.*?</example>", "", self.description, flags=re.S).strip()

    def section(self, heading: str) -> str:
        """The body of the first `## heading...` section ('' when the role has none)."""
        match = re.search(rf"^## {re.escape(heading)}[^\n]*\n(.*?)(?=^## |\Z)", self.prompt, re.M | re.S)
        return match.group(1).strip() if match else ""


def parse_role(text: str, source: str) -> Role:
    match = re.match(r"---\n(.*?)\n---\n(.*)", text, re.S)
    meta = yaml.safe_load(match.group(1)) if match else None
    if not isinstance(meta, dict) or not {"name", "description", "tools"} <= set(meta):
        raise ArchsmithError("role", f"{source} has no front matter with name, description and tools")
    tools = meta["tools"]
    tools = [t.strip() for t in tools.split(",")] if isinstance(tools, str) else list(tools)
    return Role(name=meta["name"], description=str(meta["description"]), tools=tuple(t for t in tools if t),
                model=str(meta.get("model") or "inherit"), prompt=match.group(2).strip())


@lru_cache(maxsize=None)
def roles() -> dict[str, Role]:
    """Every role shipped with archsmith, by name."""
    files = sorted(p for p in resources.files(PACKAGE).iterdir() if p.name.endswith(".md"))
    return {role.name: role for role in (parse_role(f.read_text(encoding="utf-8"), f.name) for f in files)}


def load_role(name: str) -> Role:
    known = roles()
    if name not in known:
        raise ArchsmithError("role", f"must be one of {', '.join(known)}; got {name!r}")
    return known[name]


def resolve_model(name: str, override: str | None = None, parent: str | None = None) -> str:
    """The model id to call: `override` (--model), else the front matter's name mapped to an id.

    `inherit` takes the parent's model (the coordinator's, in a team), else $ANTHROPIC_MODEL, else sonnet's id;
    `sonnet`, `opus` and `haiku` take $ANTHROPIC_DEFAULT_<NAME>_MODEL, else Claude Code's id; anything else is an id.
    """
    if override:
        return override
    if name == "inherit":
        return parent or os.environ.get(INHERIT_ENV) or resolve_model("sonnet")
    if name in MODEL_DEFAULTS:
        return os.environ.get(MODEL_ENV[name]) or MODEL_DEFAULTS[name]
    return name

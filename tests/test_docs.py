"""The shipped Markdown (README, docs, agents, skills) states only tool names and counts the code has.

A role that names a tool that does not exist, or a document that says 21 reference architectures when 40
ship, misleads the model that reads it and the user who checks it; these tests read every such statement
and compare it with the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from archsmith import families
from archsmith.mcp_server.tools import TOOLS

ROOT = Path(__file__).resolve().parents[1]
MARKDOWN = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "agents").glob("*.md"),
                   *(ROOT / "skills").rglob("*.md")])
TOOL_NAMES = {fn.__name__ for fn in TOOLS} | set(re.findall(r'"name": "(\w+)"', (ROOT / "hooks" / "bootstrap.py").read_text()))
# a backticked snake_case name that reads as a tool: one of the tools' verbs first and one of their nouns last
VERBS = {"analyze", "build", "compress", "compute", "design", "distill", "emit", "estimate", "evaluate", "export", "list",
         "plan", "search", "start", "stop", "train", "training", "write", "prove", "extend", "setup", "eval"}
NOUNS = {"architecture", "config", "design", "finetune", "gpus", "model", "models", "sizing", "status", "templates",
         "tokenizer", "training", "module", "quality"}
REFERENCE_CONFIGS = len(list((ROOT / "src" / "data" / "reference_architectures").glob("*.json")))
COUNTS = {  # a statement's pattern -> what the code has
    r"\b(\d+) reference architectures": REFERENCE_CONFIGS,
    r"\b(\d+) published configs": REFERENCE_CONFIGS,
    r"\b(\d+) model types": len(families.NAMES),
    r"\b(\d+) families": len(families.with_parity("both")),
}


def test_the_bootstrap_tool_is_found():
    assert "setup_status" in TOOL_NAMES and "estimate_config" in TOOL_NAMES


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_tool_named_exists(path):
    text = path.read_text(encoding="utf-8")
    named = set(re.findall(r"mcp__plugin_archsmith_archsmith__(\w+)", text))
    named |= {w for w in re.findall(r"`([a-z]+(?:_[a-z0-9]+)+)`", text)
              if w.split("_")[0] in VERBS and w.split("_")[-1] in NOUNS}
    assert not named - TOOL_NAMES, f"{path.name} names tools that do not exist: {sorted(named - TOOL_NAMES)}"


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_count_stated_is_the_codes(path):
    text = " ".join(path.read_text(encoding="utf-8").split())  # a statement may wrap across lines
    for pattern, actual in COUNTS.items():
        for stated in re.findall(pattern, text):
            assert int(stated) == actual, f"{path.name}: {pattern} says {stated}, the code has {actual}"


def test_no_document_calls_a_tool_missing_that_exists():
    """'X is not yet a tool' must not outlive X becoming one."""
    for path in MARKDOWN:
        text = " ".join(path.read_text(encoding="utf-8").split()).lower()
        for sentence in re.findall(r"[^.]*\bnot yet (?:a )?tools?\b[^.]*", text):
            assert not any(word in sentence for word in ("distill", "train", "export", "compress", "analy")), (path.name, sentence)

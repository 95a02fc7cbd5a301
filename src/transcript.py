"""Transcripts of runner runs: JSONL (one record a line, as `archsmith.runner` records them) and Markdown.

Records: `start` (role, model, task, tools offered), `reply` (step, text, tool calls with their arguments, stop
reason, usage), `tool_result` (step, tool, arguments, is_error, what came back), `end` (why it stopped, steps,
usage, cost). A directory gets `<role>.jsonl` and `<role>.md` per role (a role delegated twice has both runs in
its files) and `summary.md` / `summary.json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from archsmith.runner import RoleRun, TeamRun

RESULT_CHARS = 4000  # a tool result longer than this is cut in the Markdown (the JSONL keeps all of it)
STOPPED = {"end_turn": "finished its turn", "max_steps": "stopped at the step cap",
           "token_budget": "stopped at the token cap", "max_tokens": "reply cut at the per-reply token limit"}


def jsonl(runs: list[RoleRun]) -> str:
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for run in runs for record in run.records)


def _money(cost: float | None) -> str:
    return "unknown (no price for this model)" if cost is None else f"${cost:.4f}"


def _block(text: str) -> str:
    fence = "````" if "```" in text else "```"
    return f"{fence}\n{text}\n{fence}"


def markdown(runs: list[RoleRun]) -> str:
    """Which role called which tool with which arguments, and what came back, step by step."""
    lines: list[str] = []
    for number, run in enumerate(runs, 1):
        lines += [f"# {run.role}" + (f" (run {number})" if len(runs) > 1 else ""), "",
                  f"Model `{run.model}`. Task:", "", _block(run.task), ""]
        for record in run.records:
            if record["event"] == "start":
                lines += [f"Tools offered: {', '.join(f'`{t}`' for t in record['tools']) or 'none'}.", ""]
            elif record["event"] == "reply":
                usage = record["usage"]
                lines += [f"## Step {record['step']}", "", f"*{usage['input_tokens']:,} tokens in, "
                          f"{usage['output_tokens']:,} out; stop reason `{record['stop_reason']}`*", ""]
                if record["text"]:
                    lines += [record["text"], ""]
                for call in record["tool_calls"]:
                    lines += [f"**{run.role} → `{call['name']}`**", "", _block(json.dumps(call["input"], indent=2)), ""]
            elif record["event"] == "tool_result":
                content = record["content"]
                cut = f"\n… ({len(content) - RESULT_CHARS:,} more characters in the JSONL)" if len(content) > RESULT_CHARS else ""
                label = "error" if record["is_error"] else "result"
                lines += [f"**`{record['name']}` {label}:**", "", _block(content[:RESULT_CHARS] + cut), ""]
            elif record["event"] == "end":
                usage = record["usage"]
                lines += [f"**{run.role} {STOPPED.get(record['stopped'], 'stopped: ' + record['stopped'])}** after "
                          f"{record['steps']} steps: {usage['input_tokens']:,} tokens in, {usage['output_tokens']:,} out, "
                          f"cost {_money(record['cost_usd'])}.", ""]
    return "\n".join(lines)


def summary(result: RoleRun | TeamRun) -> str:
    """The final answer, then runs, steps, tokens and cost per role."""
    team = isinstance(result, TeamRun)
    rows = result.by_role()
    lines = [f"# {'Team' if team else result.role}: summary", "", "Task:", "", _block(result.task), "",
             "## Answer", "", result.text or "(no answer)", "", "## Usage and cost per role", "",
             "| role | runs | steps | input tokens | output tokens | cache tokens | cost |", "|---|---:|---:|---:|---:|---:|---:|"]
    for role, row in rows.items():
        usage = row["usage"]
        cache = usage.cache_creation_input_tokens + usage.cache_read_input_tokens
        lines.append(f"| {role} | {row['runs']} | {row['steps']} | {usage.input_tokens:,} | {usage.output_tokens:,} | "
                     f"{cache:,} | {_money(row['cost_usd'])} |")
    stopped = [run for run in ([result.coordinator, *result.runs] if team else [result]) if run.stopped != "end_turn"]
    if stopped:
        lines += ["", *(f"- {run.role} {STOPPED.get(run.stopped, 'stopped: ' + run.stopped)}." for run in stopped)]
    return "\n".join(lines) + "\n"


def files(result: RoleRun | TeamRun) -> dict[str, str]:
    """name -> content of every file of a run's transcript directory."""
    runs = [result.coordinator, *result.runs] if isinstance(result, TeamRun) else [result]
    by_role: dict[str, list[RoleRun]] = {}
    for run in runs:
        by_role.setdefault(run.role, []).append(run)
    written: dict[str, str] = {}
    for role, role_runs in by_role.items():
        written[f"{role}.jsonl"] = jsonl(role_runs)
        written[f"{role}.md"] = markdown(role_runs)
    written["summary.md"] = summary(result)
    written["summary.json"] = json.dumps(result.to_dict(), indent=2) + "\n"
    return written


def write(result: RoleRun | TeamRun, out: str | Path, overwrite: bool = False) -> list[Path]:
    """Write the transcript directory atomically (an existing one only with `overwrite`)."""
    from archsmith.files import write_files

    return write_files(out, files(result), overwrite)


def load(path: str | Path) -> list[dict[str, Any]]:
    """The records of a `<role>.jsonl` file."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]

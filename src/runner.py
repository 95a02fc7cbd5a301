"""The roles outside Claude Code: one role, or a team of the four, on the Anthropic API over archsmith's MCP tools.

`run_role("llm-architect", task)` reads the role from the plugin's agents/llm-architect.md, connects to the
archsmith MCP server in process (the official `mcp` Client over `build_server`: the tools and schemas Claude Code
sees, no second registry), offers the MCP tools the role's front matter allows, and runs the Messages API
tool-use loop with the SDK's own machinery: `client.beta.messages.tool_runner` (streaming) over tools from
`anthropic.lib.tools.mcp.async_mcp_tool`. A tool's error goes back to the model as an `is_error` result; the SDK
retries 429, 529 / 5xx and connection errors with backoff. What the SDK lacks is here: the step and token caps,
the role's model names, a team coordinator with a `delegate` tool, and the run's records (rendered by
`archsmith.transcript`) with token usage and cost per role.

`run_team(task)` gives a coordinator one tool, `delegate(role, task)`, which runs that role as above and returns
its answer; the coordinator follows the hand-offs the agent files describe and ends with a summary.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from archsmith.errors import ArchsmithError
from archsmith.roles import Role, load_role, resolve_model, roles

DEFAULT_STEPS = 20  # model replies per role before the runner stops it
DEFAULT_TOKENS = 500_000  # input + output tokens per run, a team's roles together: $1.50-7.50 at sonnet prices
REPLY_TOKENS = 8192  # max_tokens of one reply: room for a long answer, far below every model's limit
RETRIES = 4  # the SDK's retries of 429, 529 / 5xx and connection errors, with backoff that honours retry-after
KEY_ENV = "ANTHROPIC_API_KEY"

Listener = Callable[[str, str, Any], None]  # (role, "text" | "record", a text delta or a transcript record)


@dataclass
class Usage:
    """Tokens as the API counts them, summed over replies."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    def add(self, usage: Any) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + (getattr(usage, f.name, 0) or 0))

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    def cost(self, model: str) -> float | None:
        """USD at the model's prices (data/prices.yaml); None for a model without a price."""
        price = model_price(model)
        if price is None:
            return None
        return (self.input_tokens * price["input"] + self.output_tokens * price["output"]
                + self.cache_creation_input_tokens * price["cache_write"]
                + self.cache_read_input_tokens * price["cache_read"]) / 1e6


@lru_cache(maxsize=1)
def _prices() -> dict[str, dict[str, float]]:
    return yaml.safe_load(resources.files("archsmith.data").joinpath("prices.yaml").read_text(encoding="utf-8"))


def model_price(model: str) -> dict[str, float] | None:
    """USD per million tokens of `model`, trying the id without a date suffix too."""
    prices = _prices()
    return prices.get(model) or prices.get(model.rsplit("-", 1)[0] if model[-8:].isdigit() else model)


@dataclass
class RoleRun:
    """One role's run: its final answer, why it stopped, and every record of what it did."""

    role: str
    model: str
    task: str
    text: str = ""
    stopped: str = ""  # end_turn | max_steps (step cap) | token_budget (token cap) | the API's stop_reason
    steps: int = 0
    usage: Usage = field(default_factory=Usage)
    records: list[dict] = field(default_factory=list)

    @property
    def cost_usd(self) -> float | None:
        return self.usage.cost(self.model)

    def by_role(self) -> dict[str, dict[str, Any]]:
        """The same table as `TeamRun.by_role`, with this run's one row."""
        return {self.role: {"runs": 1, "steps": self.steps, "usage": self.usage, "cost_usd": self.cost_usd}}

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "model": self.model, "task": self.task, "text": self.text, "stopped": self.stopped,
                "steps": self.steps, "usage": asdict(self.usage), "cost_usd": self.cost_usd}


@dataclass
class TeamRun:
    """A team's run: the coordinator's (its text is the summary) and each delegated run, in order."""

    task: str
    coordinator: RoleRun
    runs: list[RoleRun] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.coordinator.text

    def by_role(self) -> dict[str, dict[str, Any]]:
        """Runs, steps, tokens and cost per role, the coordinator first."""
        table: dict[str, dict[str, Any]] = {}
        for run in [self.coordinator, *self.runs]:
            row = table.setdefault(run.role, {"runs": 0, "steps": 0, "usage": Usage(), "cost_usd": 0.0})
            row["runs"] += 1
            row["steps"] += run.steps
            row["usage"].add(run.usage)
            cost = run.cost_usd
            row["cost_usd"] = None if cost is None or row["cost_usd"] is None else row["cost_usd"] + cost
        return table

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "summary": self.text, "coordinator": self.coordinator.to_dict(),
                "runs": [run.to_dict() for run in self.runs],
                "by_role": {k: {**v, "usage": asdict(v["usage"])} for k, v in self.by_role().items()}}


@dataclass
class Session:
    """What the roles of one run share: the Anthropic client, the MCP client and its tools, the caps."""

    anthropic: Any
    mcp: Any
    listed: list[Any]  # the MCP server's tools
    root: Path  # the workspace root of the tools
    max_steps: int  # per role
    max_tokens: int  # for the whole run; checked after each reply
    listener: Listener | None = None
    tokens: int = 0  # used so far, by every role
    failed: Exception | None = None  # an API error inside a delegated run: it ends the team, not just that tool call

    def emit(self, role: str, kind: str, data: Any) -> None:
        if self.listener is not None:
            self.listener(role, kind, data)


RUNNER_PREAMBLE = """You are the {name} role of archsmith, running outside Claude Code through archsmith's agent runner
on the Anthropic API. Your only tools are the archsmith tools in this request (paths are relative to the
workspace root {root}). You cannot read or write other files, run commands or scripts, load skills or fetch web
pages here: where your instructions below say to, tell the user what to run instead. Quote only numbers that
your tools returned."""

COORDINATOR_PROMPT = """You coordinate archsmith's four model-architecture roles on the user's task. You have no
archsmith tools and compute no numbers yourself: give each sub-task to the role that owns it with the `delegate`
tool. A role sees only the task you write, never the user's request or the other roles' answers, so write a
self-contained task with every number, file path and constraint it needs, and pass a role's results on to the
next role as the hand-offs below say. Delegate one role at a time and read its answer before the next step. Finish
with a summary for the user that quotes the roles' numbers, says which role produced each, and names any files
they wrote.

The roles, what each owns, and how they hand work to each other:

{roles}"""


def role_system_prompt(role: Role, root: Path) -> str:
    return RUNNER_PREAMBLE.format(name=role.name, root=root) + "\n\n" + role.prompt


def coordinator_prompt() -> str:
    parts = []
    for role in roles().values():
        owns = role.section("What you own")
        parts.append(f"## {role.name}\n\n{role.summary}\n\n### What it owns\n\n{owns}\n\n"
                     f"### Its hand-offs\n\n{role.section('Hand-offs')}")
    return COORDINATOR_PROMPT.format(roles="\n\n".join(parts))


def _text(content: Any) -> str:
    """The text of message content blocks or tool-result content (a string or a list of blocks)."""
    if isinstance(content, str):
        return content
    parts = []
    for block in content or ():
        kind = block.get("type") if isinstance(block, dict) else getattr(block, "type", None)
        if kind == "text":
            parts.append(block["text"] if isinstance(block, dict) else block.text)
    return "".join(parts)


async def _loop(session: Session, name: str, model: str, system: str, task: str, tools: list[Any]) -> RoleRun:
    """The tool-use loop of one role: stream each reply, record it and its tool results, stop at a cap."""
    run = RoleRun(role=name, model=model, task=task)

    def record(entry: dict) -> None:
        run.records.append(entry)
        session.emit(name, "record", entry)

    record({"event": "start", "role": name, "model": model, "task": task, "tools": [t.name for t in tools]})
    runner = session.anthropic.beta.messages.tool_runner(
        model=model, max_tokens=REPLY_TOKENS, system=system, messages=[{"role": "user", "content": task}],
        tools=tools, max_iterations=session.max_steps, stream=True)
    message = None
    async for stream in runner:
        async for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                session.emit(name, "text", event.delta.text)
        message = await stream.get_final_message()
        run.steps += 1
        used = Usage()
        used.add(message.usage)
        run.usage.add(used)
        session.tokens += used.total
        calls = {b.id: b for b in message.content if b.type == "tool_use"}
        record({"event": "reply", "step": run.steps, "text": _text(message.content), "stop_reason": message.stop_reason,
                "tool_calls": [{"id": c.id, "name": c.name, "input": c.input} for c in calls.values()],
                "usage": asdict(used)})
        if calls and session.tokens >= session.max_tokens:
            run.stopped = "token_budget"
            await runner.close()
            break
        with warnings.catch_warnings():  # a call of a tool the role lacks is answered with an is_error result
            warnings.filterwarnings("ignore", message="Tool '.*' not found in tool runner")
            response = await runner.generate_tool_call_response() if calls else None
        if session.failed is not None:
            raise session.failed
        for result in (response or {}).get("content", ()):
            call = calls.get(result["tool_use_id"])
            record({"event": "tool_result", "step": run.steps, "id": result["tool_use_id"],
                    "name": call.name if call else None, "input": call.input if call else None,
                    "is_error": bool(result.get("is_error")), "content": _text(result.get("content"))})
    if message is not None:
        run.text = _text(message.content)
        run.stopped = run.stopped or ("max_steps" if message.stop_reason == "tool_use" else str(message.stop_reason))
    record({"event": "end", "stopped": run.stopped, "steps": run.steps, "usage": asdict(run.usage),
            "cost_usd": run.cost_usd})
    return run


async def _role_run(session: Session, role: Role, task: str, model: str) -> RoleRun:
    from anthropic.lib.tools.mcp import async_mcp_tool

    allowed = set(role.mcp_tools)
    tools = [async_mcp_tool(tool, session.mcp.session) for tool in session.listed if tool.name in allowed]
    return await _loop(session, role.name, model, role_system_prompt(role, session.root), task, tools)


def _api_error(exc: Exception, retries: int) -> ArchsmithError:
    """One line for an API failure the SDK did not recover from (it has already retried what can be retried)."""
    import anthropic

    if isinstance(exc, anthropic.APIStatusError):
        body = exc.body.get("error", {}) if isinstance(exc.body, dict) else {}
        kind = body.get("type") or type(exc).__name__
        message = body.get("message") or exc.message
        if isinstance(exc, anthropic.AuthenticationError):
            return ArchsmithError(KEY_ENV, f"the Anthropic API refused the key (401): {message}")
        retried = f" after {retries} retries" if exc.status_code in (408, 409, 429) or exc.status_code >= 500 else ""
        return ArchsmithError("anthropic", f"{exc.status_code} {kind}{retried}: {message}")
    if isinstance(exc, anthropic.APIConnectionError):
        return ArchsmithError("anthropic", f"cannot reach the API{' ' + str(exc.request.url) if exc.request else ''} "
                                           f"after {retries} retries: {exc.__cause__ or exc}")
    return ArchsmithError("anthropic", str(exc))


@asynccontextmanager
async def _session(root: Path, max_steps: int, max_tokens: int, listener: Listener | None, client: Any):
    """The clients of one run; API failures leave it as one-line ArchsmithErrors."""
    if max_steps < 1:
        raise ArchsmithError("max_steps", f"must be at least 1; got {max_steps}")
    if max_tokens < 1:
        raise ArchsmithError("max_tokens", f"must be at least 1; got {max_tokens}")
    if client is None and not os.environ.get(KEY_ENV):
        raise ArchsmithError(KEY_ENV, "is not set: export your Anthropic API key (and ANTHROPIC_BASE_URL for a gateway)")
    import anthropic
    from mcp import Client

    from archsmith.mcp_server.server import build_server

    anthropic_client = client or anthropic.AsyncAnthropic(max_retries=RETRIES)
    failure: Exception | None = None
    async with Client(build_server(root)) as mcp:
        listed = (await mcp.list_tools()).tools
        try:
            yield Session(anthropic_client, mcp, listed, root, max_steps, max_tokens, listener)
        except Exception as exc:  # raised below, once out of the MCP client, whose task group would wrap it
            failure = exc
    if isinstance(failure, anthropic.APIError):
        raise _api_error(failure, anthropic_client.max_retries) from None
    if failure is not None:
        raise failure


async def arun_role(role: str, task: str, *, model: str | None = None, max_steps: int = DEFAULT_STEPS,
                    max_tokens: int = DEFAULT_TOKENS, root: str | Path | None = None, listener: Listener | None = None,
                    client: Any = None) -> RoleRun:
    """Run one role on `task` until it ends its turn or reaches a cap. `root`: the workspace root of the tools
    (default: the current directory); `client`: an `anthropic.AsyncAnthropic` (default: one from the environment)."""
    definition = load_role(role)
    root = Path(root or Path.cwd()).resolve()
    async with _session(root, max_steps, max_tokens, listener, client) as session:
        return await _role_run(session, definition, task, resolve_model(definition.model, model))


async def arun_team(task: str, *, model: str | None = None, max_steps: int = DEFAULT_STEPS,
                    max_tokens: int = DEFAULT_TOKENS, root: str | Path | None = None, listener: Listener | None = None,
                    client: Any = None) -> TeamRun:
    """Run the coordinator on `task`; it delegates to the roles. `model` is the coordinator's, which roles whose
    front matter says `inherit` use too."""
    from anthropic.lib.tools import ToolError, beta_async_tool

    root = Path(root or Path.cwd()).resolve()
    coordinator_model = resolve_model("inherit", model)
    delegated: list[RoleRun] = []
    names = list(roles())
    async with _session(root, max_steps, max_tokens, listener, client) as session:
        async def delegate(role: str, task: str) -> str:
            if role not in names:
                raise ToolError([{"type": "text", "text": f"role: must be one of {', '.join(names)}; got {role!r}"}])
            definition = load_role(role)
            try:
                run = await _role_run(session, definition, task, resolve_model(definition.model, parent=coordinator_model))
            except Exception as exc:  # the SDK would feed it to the coordinator as a tool error; the team ends instead
                session.failed = exc
                raise ToolError([{"type": "text", "text": f"{role} failed: {exc}"}]) from None
            delegated.append(run)
            note = "" if run.stopped == "end_turn" else f"\n\n[{role} stopped before finishing: {run.stopped}]"
            return (run.text or "(no answer)") + note

        tool = beta_async_tool(delegate, name="delegate", description=(
            "Give one self-contained sub-task to one of archsmith's roles and get its answer. The role sees only "
            "`task`: include every number, path and constraint it needs."), input_schema={
            "type": "object", "required": ["role", "task"], "properties": {
                "role": {"type": "string", "enum": names, "description": "The role that owns the sub-task."},
                "task": {"type": "string", "minLength": 1, "description": "The sub-task, self-contained."}}})
        coordinator = await _loop(session, "coordinator", coordinator_model, coordinator_prompt(), task, [tool])
    return TeamRun(task=task, coordinator=coordinator, runs=delegated)


def run_role(role: str, task: str, **options: Any) -> RoleRun:
    """`arun_role` from synchronous code."""
    import anyio

    return anyio.run(lambda: arun_role(role, task, **options))


def run_team(task: str, **options: Any) -> TeamRun:
    """`arun_team` from synchronous code."""
    import anyio

    return anyio.run(lambda: arun_team(task, **options))

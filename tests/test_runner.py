"""The agent runner and team with the real `anthropic` client against tests/fake_anthropic.py (ANTHROPIC_BASE_URL),
and archsmith's real MCP server in process: every tool result below is the engine's own output."""

from __future__ import annotations

import json
import re
from pathlib import Path

import anyio
import pytest
from mcp import Client
from typer.testing import CliRunner

from fake_anthropic import FakeAnthropic, drop, error, reply, tool_result_blocks, tool_use

from archsmith import runner, transcript
from archsmith.catalog import reference_config
from archsmith.cli import app
from archsmith.errors import ArchsmithError
from archsmith.estimate import count_params, estimate
from archsmith.hfconfig import spec_from_hf
from archsmith.mcp_server.server import build_server
from archsmith.roles import MODEL_DEFAULTS, load_role, resolve_model, roles

LLAMA = reference_config("meta-llama__Llama-3.2-1B")
BROKEN = {k: v for k, v in LLAMA.items() if k != "hidden_size"}  # the estimator refuses it, naming hidden_size


@pytest.fixture
def api(monkeypatch, tmp_path):
    """Start the fake API with a script; the runner's client finds it through the environment."""
    servers = []

    def start(*script) -> FakeAnthropic:
        fake = FakeAnthropic(list(script)).__enter__()
        servers.append(fake)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-key")
        return fake

    for name in ("ANTHROPIC_MODEL", "ANTHROPIC_DEFAULT_SONNET_MODEL", "ANTHROPIC_DEFAULT_OPUS_MODEL",
                 "ANTHROPIC_DEFAULT_HAIKU_MODEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    yield start
    for fake in servers:
        fake.__exit__(None, None, None)


def results(body: dict) -> list[dict]:
    return tool_result_blocks(body)


def result_json(block: dict) -> dict:
    content = block["content"]
    return json.loads(content if isinstance(content, str) else "".join(part["text"] for part in content))


async def mcp_tools() -> dict[str, dict]:
    async with Client(build_server(".")) as client:
        return {t.name: {"description": t.description, "input_schema": t.input_schema} for t in (await client.list_tools()).tools}


def test_multi_step_tool_use_gets_the_engines_exact_numbers(api, tmp_path):
    fake = api(reply("Counting first.", tool_use("estimate_config", {"config": LLAMA})),
               reply(tool_use("build_model", {"config": LLAMA, "depth": 1})),
               reply("Llama-3.2-1B: 1,235,814,400 parameters, and the network builds exactly that."))
    streamed: list[str] = []
    run = runner.run_role("llm-architect", "How many parameters has Llama-3.2-1B?", max_steps=5,
                          listener=lambda role, kind, data: streamed.append(data) if kind == "text" else None)
    expected = count_params(spec_from_hf(LLAMA))["total"]  # equal to transformers' own count (test_params)

    first, second, third = fake.messages()
    assert first["stream"] is True and first["model"] == MODEL_DEFAULTS["sonnet"]  # `model: inherit`, no override
    role = load_role("llm-architect")
    assert first["system"].endswith(role.prompt) and "outside Claude Code" in first["system"]
    schemas = anyio.run(mcp_tools)
    assert {t["name"] for t in first["tools"]} == set(role.mcp_tools)
    for tool in first["tools"]:  # the MCP server's own schemas: no second registry
        assert tool["input_schema"] == schemas[tool["name"]]["input_schema"]
        assert tool["description"] == schemas[tool["name"]]["description"]
    (counted,) = results(second)
    assert not counted.get("is_error") and result_json(counted)["params"]["total"] == expected
    (built,) = results(third)
    assert result_json(built)["parameters"] == expected and result_json(built)["matches_estimate"] is True

    assert run.stopped == "end_turn" and run.steps == 3 and run.text.startswith("Llama-3.2-1B: 1,235,814,400")
    assert "".join(streamed) == "Counting first." + run.text  # the text arrived as stream deltas
    assert run.usage.input_tokens == 300 and run.usage.output_tokens == 60  # the fake's 100 in / 20 out per reply
    assert run.cost_usd == pytest.approx((300 * 3 + 60 * 15) / 1e6)  # sonnet: $3 / $15 per million tokens

    written = transcript.write(run, tmp_path / "out")
    assert sorted(p.name for p in written) == ["llm-architect.jsonl", "llm-architect.md", "summary.json", "summary.md"]
    records = transcript.load(tmp_path / "out" / "llm-architect.jsonl")
    assert [r["event"] for r in records] == ["start", "reply", "tool_result", "reply", "tool_result", "reply", "end"]
    assert json.loads(records[2]["content"])["params"]["total"] == expected
    md = (tmp_path / "out" / "llm-architect.md").read_text()
    assert "**llm-architect → `estimate_config`**" in md and f'"total": {expected}' in md
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["stopped"] == "end_turn"


def test_a_tool_error_goes_back_and_the_role_recovers(api):
    fake = api(reply(tool_use("estimate_config", {"config": BROKEN})),
               reply("The config lacked hidden_size; using the published one.", tool_use("estimate_config", {"config": LLAMA})),
               reply("Done."))
    run = runner.run_role("model-architect", "Estimate this config.")
    _, second, third = fake.messages()
    (failed,) = results(second)
    text = failed["content"] if isinstance(failed["content"], str) else failed["content"][0]["text"]
    assert failed["is_error"] is True and "hidden_size" in text
    (fixed,) = results(third)
    assert not fixed.get("is_error") and result_json(fixed)["params"]["total"] == count_params(spec_from_hf(LLAMA))["total"]
    assert run.stopped == "end_turn" and [r["is_error"] for r in run.records if r["event"] == "tool_result"] == [True, False]


def test_a_role_is_never_offered_a_tool_its_front_matter_does_not_allow(api):
    role = load_role("network-architect")
    assert "search_models" not in role.mcp_tools and "design_architecture" not in role.mcp_tools
    fake = api(reply(tool_use("search_models", {"task": "text-generation"})), reply("I cannot search the Hub."))
    run = runner.run_role("network-architect", "Find me a model.")
    first, second = fake.messages()
    assert {t["name"] for t in first["tools"]} == set(role.mcp_tools)
    (refused,) = results(second)
    assert refused["is_error"] is True and "not found" in json.dumps(refused)
    assert run.stopped == "end_turn"


def route_by_role(scripts: dict[str, list]):
    """One scripted conversation per role; the request's system prompt says whose turn it is."""

    def answer(body: dict):
        system = body["system"] if isinstance(body["system"], str) else "".join(b["text"] for b in body["system"])
        role = "coordinator" if system.startswith("You coordinate") else re.match(r"You are the (\S+) role", system)[1]
        return scripts[role].pop(0)

    return answer


def test_team_delegates_across_two_roles_with_usage_and_cost_per_role(api, tmp_path):
    scripts = {
        "coordinator": [
            reply(tool_use("delegate", {"role": "llm-architect", "task": "Size a 125M decoder for 8 H100s."}),
                  input_tokens=1000, output_tokens=50),
            reply(tool_use("delegate", {"role": "model-architect", "task": "Estimate Llama-3.2-1B at batch 1."}),
                  input_tokens=1500, output_tokens=50),
            reply("Summary: llm-architect recommended the balanced 125M design; model-architect counted "
                  "1,235,814,400 parameters for Llama-3.2-1B.", input_tokens=2000, output_tokens=80)],
        "llm-architect": [reply(tool_use("design_architecture", {"params": "125M"}), input_tokens=3000, output_tokens=30),
                          reply("Recommended: balanced.", input_tokens=4000, output_tokens=40)],
        "model-architect": [reply(tool_use("estimate_config", {"config": LLAMA}), input_tokens=2500, output_tokens=30),
                            reply("Llama-3.2-1B has 1,235,814,400 parameters.", input_tokens=3500, output_tokens=40)],
    }
    fake = api(*[route_by_role(scripts)] * 7)
    team = runner.run_team("Plan a small model and compare it with Llama-3.2-1B.")
    assert not any(scripts.values()) and not fake.unscripted  # every scripted turn was used, in its role

    conversations = fake.messages()
    coordinator = [c for c in conversations if c["system"].startswith("You coordinate")]
    (delegate,) = coordinator[0]["tools"]
    assert delegate["name"] == "delegate" and set(delegate["input_schema"]["properties"]["role"]["enum"]) == set(roles())
    for role in roles().values():  # the coordinator knows every role's hand-offs, as its agent file states them
        assert role.section("Hand-offs") in coordinator[0]["system"]
    (handed,) = results(coordinator[1])
    assert "Recommended: balanced." in json.dumps(handed)
    design = next(c for c in conversations if results(c) and c["system"].startswith("You are the llm-architect"))
    (designed,) = results(design)
    assert result_json(designed)["recommended"]  # the engine's design came back to the role

    assert [r.role for r in team.runs] == ["llm-architect", "model-architect"] and team.text.startswith("Summary:")
    by_role = team.by_role()
    assert list(by_role) == ["coordinator", "llm-architect", "model-architect"]
    assert by_role["coordinator"]["usage"].input_tokens == 4500 and by_role["model-architect"]["usage"].output_tokens == 70
    assert by_role["llm-architect"]["cost_usd"] == pytest.approx((7000 * 3 + 70 * 15) / 1e6)

    written = {p.name for p in transcript.write(team, tmp_path / "team")}
    assert written == {"coordinator.jsonl", "coordinator.md", "llm-architect.jsonl", "llm-architect.md",
                       "model-architect.jsonl", "model-architect.md", "summary.md", "summary.json"}
    summary = (tmp_path / "team" / "summary.md").read_text()
    assert "| llm-architect | 1 | 2 | 7,000 | 70 | 0 | $0.0221 |" in summary
    assert "**coordinator → `delegate`**" in (tmp_path / "team" / "coordinator.md").read_text()


def test_an_api_failure_inside_a_delegated_role_ends_the_team_in_one_line(api):
    fake = api(reply(tool_use("delegate", {"role": "llm-architect", "task": "Size a 125M model."})),
               error(400, "messages: too long"), reply("never sent"))
    with pytest.raises(ArchsmithError, match=r"^anthropic: 400 invalid_request_error: messages: too long$"):
        runner.run_team("Plan a small model.")
    assert len([r for r in fake.requests if r.method == "POST"]) == 2  # the coordinator was not asked again


def test_rate_limits_overload_and_dropped_connections_are_retried(api):
    fake = api(drop(), error(429, "slow down", retry_after_ms="1"), error(529, "overloaded", retry_after_ms="1"), reply("Fine."))
    run = runner.run_role("llm-architect", "Hi.")
    assert run.text == "Fine." and run.stopped == "end_turn"
    assert len([r for r in fake.requests if r.method == "POST"]) == 4  # the SDK's retries, not a loop of ours


def test_retries_that_run_out_end_in_one_line(api):
    api(*[error(429, "slow down", retry_after_ms="1")] * (runner.RETRIES + 1))
    with pytest.raises(ArchsmithError, match=rf"^anthropic: 429 rate_limit_error after {runner.RETRIES} retries: slow down$"):
        runner.run_role("llm-architect", "Hi.")


@pytest.mark.parametrize("status, pattern", [
    (400, r"^anthropic: 400 invalid_request_error: max_tokens: too large$"),
    (401, r"^ANTHROPIC_API_KEY: the Anthropic API refused the key \(401\): max_tokens: too large$"),
    (404, r"^anthropic: 404 not_found_error: max_tokens: too large$"),
])
def test_other_client_errors_are_one_clear_line_and_not_retried(api, status, pattern):
    fake = api(error(status, "max_tokens: too large"), reply("never sent"))
    with pytest.raises(ArchsmithError, match=pattern):
        runner.run_role("llm-architect", "Hi.")
    assert len([r for r in fake.requests if r.method == "POST"]) == 1


def test_missing_key_is_one_line_naming_the_variable(api, monkeypatch):
    fake = api(reply("never sent"))
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with pytest.raises(ArchsmithError, match=r"^ANTHROPIC_API_KEY: is not set"):
        runner.run_role("llm-architect", "Hi.")
    done = CliRunner().invoke(app, ["agent", "llm-architect", "Hi."])
    assert done.exit_code == 2 and done.output.count("\n") == 1 and "ANTHROPIC_API_KEY: is not set" in done.output
    assert fake.requests == []


def test_step_cap_stops_the_loop(api):
    fake = api(*[reply(tool_use("list_gpus", {}))] * 3, reply("never reached"))
    run = runner.run_role("llm-architect", "Loop.", max_steps=2)
    assert run.stopped == "max_steps" and run.steps == 2 and len(fake.messages()) == 2


def test_token_cap_stops_before_running_more_tools(api):
    fake = api(*[reply(tool_use("list_gpus", {}), input_tokens=100, output_tokens=20)] * 3)
    run = runner.run_role("llm-architect", "Loop.", max_tokens=150)
    assert run.stopped == "token_budget" and run.steps == 2 and len(fake.messages()) == 2
    assert [r["step"] for r in run.records if r["event"] == "tool_result"] == [1]  # step 2's call never ran


def test_model_names_map_to_configurable_ids(monkeypatch):
    for name in ("ANTHROPIC_MODEL", "ANTHROPIC_DEFAULT_SONNET_MODEL", "ANTHROPIC_DEFAULT_OPUS_MODEL"):
        monkeypatch.delenv(name, raising=False)
    assert resolve_model("inherit") == MODEL_DEFAULTS["sonnet"] and resolve_model("opus") == MODEL_DEFAULTS["opus"]
    assert resolve_model("inherit", parent="claude-x") == "claude-x" and resolve_model("haiku", "claude-y") == "claude-y"
    monkeypatch.setenv("ANTHROPIC_DEFAULT_OPUS_MODEL", "claude-opus-custom")
    monkeypatch.setenv("ANTHROPIC_MODEL", "claude-main")
    assert resolve_model("opus") == "claude-opus-custom" and resolve_model("inherit") == "claude-main"
    assert resolve_model("claude-sonnet-4-5") == "claude-sonnet-4-5"
    assert runner.model_price("claude-haiku-4-5-20251001")["output"] == 5 and runner.model_price("claude-unknown-9") is None


def test_cli_streams_and_writes_transcripts(api, tmp_path):
    api(reply("Estimating.", tool_use("estimate_config", {"config": LLAMA})), reply("1,235,814,400 parameters."))
    done = CliRunner().invoke(app, ["agent", "llm-architect", "Count Llama-3.2-1B.", "--out", "run", "--max-steps", "4"])
    assert done.exit_code == 0, done.output
    assert "── llm-architect" in done.output and "Estimating." in done.output and "→ estimate_config" in done.output
    assert "1,235,814,400 parameters." in done.output and "llm-architect.jsonl" in done.output
    assert (tmp_path / "run" / "llm-architect.md").is_file()
    unused = api(reply("Once more."))
    again = CliRunner().invoke(app, ["agent", "llm-architect", "Hi.", "--out", "run", "--json"])
    assert again.exit_code == 2 and "run already exists" in again.output and unused.requests == []  # checked first
    api(reply(tool_use("delegate", {"role": "model-architect", "task": "Hi."})), reply("Hello."), reply("Said hello."))
    team = CliRunner().invoke(app, ["agent", "--team", "Say hello.", "--json", "--out", "team"])
    assert team.exit_code == 0, team.output
    result = json.loads(team.stdout)  # one JSON object, nothing streamed
    assert result["summary"] == "Said hello." and [r["role"] for r in result["runs"]] == ["model-architect"]
    assert set(result["by_role"]) == {"coordinator", "model-architect"} and len(result["files"]) == 6


def test_the_same_question_gives_the_same_numbers_everywhere(api, tmp_path):
    """Runner (tool result in the conversation), MCP client, CLI and Python: one engine, one answer."""
    (tmp_path / "llama.json").write_text(json.dumps(LLAMA))
    question = {"config_path": "llama.json", "batch": 2, "seq": 1024}
    fake = api(reply(tool_use("estimate_config", question)), reply("Done."))
    runner.run_role("model-architect", "Estimate llama.json at batch 2, seq 1024.")
    through_runner = result_json(results(fake.messages()[1])[0])

    async def through_mcp():
        async with Client(build_server(tmp_path)) as client:
            return (await client.call_tool("estimate_config", question)).structured_content

    cli = CliRunner().invoke(app, ["estimate", "llama.json", "--batch", "2", "--seq", "1024", "--json"])
    assert cli.exit_code == 0, cli.output
    python = estimate(spec_from_hf(LLAMA), batch=2, seq=1024)
    for answer in (anyio.run(through_mcp), json.loads(cli.output), through_runner):
        for key in ("params", "flops", "memory"):
            assert answer[key] == json.loads(json.dumps(python[key])), key


README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## The roles outside Claude Code"
SAMPLE_TASK = "We have about 1e21 FLOPs of training compute. What model size is compute-optimal?"
SAMPLE_SUBTASK = ("Compute budget 1e21 FLOPs: the compute-optimal parameter count and training tokens (Chinchilla), "
                  "with the predicted loss.")
SAMPLE_ANSWER = ("At 1e21 FLOPs: about 2.89B parameters trained on 57.7B tokens (20 tokens per parameter), predicted "
                 "loss 2.335. Hoffmann et al.'s fit gives 1.82B parameters on 91.4B tokens.")


def readme_blocks(language: str, fence: str = "```") -> list[str]:
    """The code blocks of `language` in the README's runner section (to its last 4-backtick sample)."""
    section = README.read_text().split(SECTION, 1)[1].split("\n## How exact", 1)[0]
    return re.findall(rf"^{fence}{language}\n(.*?)^{fence}$", section, re.S | re.M)


def test_readme_sample_transcript_is_what_the_runner_writes(api, tmp_path):
    api(reply("The llm-architect owns compute-optimal sizing.",
              tool_use("delegate", {"role": "llm-architect", "task": SAMPLE_SUBTASK}), input_tokens=5120, output_tokens=96),
        reply(tool_use("compute_optimal_sizing", {"compute_flops": 1e21}), input_tokens=6410, output_tokens=41),
        reply(SAMPLE_ANSWER, input_tokens=6702, output_tokens=88),
        reply("For 1e21 FLOPs the llm-architect computed a compute-optimal model of about 2.89B parameters trained "
              "on 57.7B tokens (predicted loss 2.335).", input_tokens=5460, output_tokens=52))
    team = runner.run_team(SAMPLE_TASK)
    transcript.write(team, tmp_path / "team")
    sample, table = readme_blocks("markdown", "````")
    assert sample == (tmp_path / "team" / "llm-architect.md").read_text()
    assert table in (tmp_path / "team" / "summary.md").read_text()
    sizing = json.loads(team.runs[0].records[2]["content"])["rule_of_thumb"]  # the engine's numbers, as quoted
    assert f"{sizing['params'] / 1e9:.2f}B" in SAMPLE_ANSWER and f"{sizing['tokens'] / 1e9:.1f}B" in SAMPLE_ANSWER


def test_readme_python_example_runs_as_written(api, tmp_path, capsys):
    api(reply(tool_use("compute_optimal_sizing", {"compute_flops": 1e21})), reply(SAMPLE_ANSWER))
    (code,) = readme_blocks("python")
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out == f"end_turn after 2 steps, 240 tokens: {SAMPLE_ANSWER}\n"
    assert (tmp_path / "runs" / "agent-1e21" / "llm-architect.jsonl").is_file()

"""The MCP server through real mcp clients: stdio as .mcp.json starts it, streamable HTTP, in-process fuzzing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import anyio
import anyio.from_thread
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client, StdioServerParameters

from archsmith import families
from archsmith.catalog import reference_config
from archsmith.mcp_server.server import build_server
from archsmith.mcp_server.tools import TOOLS
from conftest import serve_http

ROOT = Path(__file__).resolve().parents[1]
LLAMA = reference_config("meta-llama__Llama-3.2-1B")
TINY_SPEC = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "ffn_size": 128, "vocab_size": 256}


def engine_results(root: Path) -> dict[str, tuple[dict, object]]:
    """tool -> (valid arguments, the same job done by calling the engine directly)."""
    from archsmith import design, estimate, hfconfig, network, scaling
    from archsmith.gpus import gpu_table
    from archsmith.parity import prove_config
    from archsmith.spec import ArchitectureSpec

    spec = hfconfig.spec_from_hf(LLAMA)
    emitted = hfconfig.hf_from_spec(ArchitectureSpec.from_dict(TINY_SPEC), "mistral")
    est = {**estimate.estimate(spec, batch=2, seq=1024, dtype="bf16"), "spec": spec.to_dict()}
    return {
        "design_architecture": ({"params": "350M", "gpus": 4}, design.summary(design.design_from_text(params="350M", gpus=4))),
        "estimate_config": ({"config": LLAMA, "batch": 2, "seq": 1024}, est),
        "emit_hf_config": ({"spec": TINY_SPEC, "model_type": "mistral"},
                           {"config": emitted, "written": None, "proof": prove_config(emitted)}),
        "compute_optimal_sizing": ({"compute_flops": 1e21}, scaling.plan(compute_flops=1e21)),
        "list_scale_templates": ({}, {"templates": list(design.scale_templates())}),
        "list_gpus": ({}, {"gpus": gpu_table()}),
        "build_model": ({"config": LLAMA, "depth": 2}, network.describe(spec, 2)),
        "write_design": ({"params": "125M", "out_dir": "runs/d1"}, None),  # checked against the files below
    }


def same(result, expected) -> bool:
    return json.loads(json.dumps(result)) == json.loads(json.dumps(expected))


async def check_every_tool(client: Client, root: Path) -> None:
    listed = await client.list_tools()
    assert sorted(t.name for t in listed.tools) == sorted(fn.__name__ for fn in TOOLS)
    for tool in listed.tools:
        assert tool.description and tool.input_schema["type"] == "object" and tool.output_schema
    for name, (args, expected) in engine_results(root).items():
        result = await client.call_tool(name, args)
        assert not result.is_error, (name, result.content)
        if expected is not None:
            assert same(result.structured_content, expected), name
    written = (await client.call_tool("write_design", {"params": "125M", "out_dir": "runs/d2"})).structured_content
    assert written["files"][0] == "runs/d2/config.json" and (root / "runs/d2/capacity_plan.md").is_file()
    cfg = json.loads((root / "runs/d2/config.json").read_text())
    assert cfg == written["config"] and written["params"] > 100_000_000


def server_env(root: Path, hub_url: str | None = None) -> dict[str, str]:
    """A minimal environment; the Hub is the local fake one, or none (offline)."""
    env = {"ARCHSMITH_WORKSPACE": str(root), "PATH": os.environ.get("PATH", ""), "HOME": str(root),
           "HF_HOME": str(root / ".hf"), "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "1"}
    if hub_url:
        env.update(HF_ENDPOINT=hub_url, HF_HUB_OFFLINE="0")
    return env


def mcp_json_server(root: Path, hub_url: str | None = None) -> StdioServerParameters:
    """The server exactly as .mcp.json tells Claude Code to start it."""
    entry = json.loads((ROOT / ".mcp.json").read_text())["mcpServers"]["archsmith"]
    expand = lambda s: s.replace("${CLAUDE_PLUGIN_ROOT}", str(ROOT))  # noqa: E731
    return StdioServerParameters(command=expand(entry["command"]), args=[expand(a) for a in entry.get("args", [])],
                                 env={**server_env(root, hub_url), **{k: expand(v) for k, v in entry.get("env", {}).items()}})


def test_stdio_as_mcp_json_starts_it(tmp_path, monkeypatch):
    from hubserver import FakeHub, use_fake_hub
    from test_hub import repos

    from archsmith import hub

    fake = FakeHub(repos()).start()
    use_fake_hub(monkeypatch, tmp_path / "hf-here", fake)
    search_args = {"task": "text-classification", "license": "commercial", "gpu": "t4", "include_rejected": True}
    expected_search = hub.search(**search_args)
    expected_eval = hub.evaluate("acme/tiny-llama-es", gpu="l4")

    async def main():
        async with Client(mcp_json_server(tmp_path, fake.url)) as client:
            await check_every_tool(client, tmp_path)
            found = await client.call_tool("search_models", search_args)
            assert same(found.structured_content, expected_search)
            evaluated = await client.call_tool("evaluate_model", {"model_id": "acme/tiny-llama-es", "gpu": "l4"})
            assert same(evaluated.structured_content, expected_eval)
            plan = await client.call_tool("plan_finetune", {"model_id": "acme/tiny-llama-es", "method": "lora"})
            assert plan.structured_content["settings"]["target_modules"][0] == "down_proj"
            gone = await client.call_tool("evaluate_model", {"model_id": "acme/nope"})
            assert gone.is_error and "acme/nope: not found on the Hub" in gone.content[0].text
            bad = await client.call_tool("estimate_config", {"config": LLAMA, "batch": 0})
            assert bad.is_error and bad.content[0].text == "batch: must be an integer in [1, 1048576], got 0"
            await fifty_concurrent_estimates(client)  # the server keeps serving after a bad call

    try:
        anyio.run(main)
    finally:
        fake.stop()
    assert fake.full_downloads() == []


async def fifty_concurrent_estimates(client: Client) -> None:
    from archsmith.estimate import estimate
    from archsmith.hfconfig import spec_from_hf

    spec = spec_from_hf(LLAMA)
    results: dict[int, dict] = {}

    async def one(i: int) -> None:
        r = await client.call_tool("estimate_config", {"config": LLAMA, "batch": i, "seq": 512})
        assert not r.is_error
        results[i] = r.structured_content["memory"]["training_total_bytes"]

    async with anyio.create_task_group() as tg:
        for i in range(1, 51):
            tg.start_soon(one, i)
    assert results == {i: estimate(spec, batch=i, seq=512)["memory"]["training_total_bytes"] for i in range(1, 51)}


@pytest.fixture
def http_server(tmp_path):
    proc, url = serve_http(tmp_path, server_env(tmp_path))
    yield url, tmp_path
    proc.terminate()
    proc.wait(timeout=10)


def test_streamable_http(http_server):
    url, root = http_server

    async def main():
        async with Client(url) as client:
            await check_every_tool(client, root)
            await fifty_concurrent_estimates(client)
            progress = []
            await client.call_tool("write_design", {"params": "125M", "out_dir": "runs/p"},
                                   progress_callback=lambda p, total, msg: progress.append((p, total, msg)))
            assert [p for p, _, _ in progress] == [0, 1, 2, 3] and progress[-1][2] == "done"

    anyio.run(main)


# ---- fuzzing from the advertised schemas ------------------------------------------------------

# Strings people type and config keys the engine reads, mixed into the random values so that the
# fuzzing reaches past the first parse.
WORDS = ["1", "125M", "1.5B", "7B", "2T", "1e21", "1e30", "24GB", "80GiB", "0", "-5", "runs/x", ".", "h100", "a100-80gb", "nan", "1e999", "inf"]
JSON = st.recursive(st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=12)
                    | st.sampled_from(WORDS), lambda inner: st.lists(inner, max_size=3), max_leaves=4)
CONFIG_KEYS = sorted(set(LLAMA) | set(TINY_SPEC) | {"model_type", "head_dim", "moe", "sliding_window", "qk_norm", "position"})
FAMILIES = [*families.NAMES, "bert"]


def free_object() -> st.SearchStrategy:
    """A JSON object: random keys, known config keys, or a real config / spec with a few fields changed."""
    changes = st.dictionaries(st.sampled_from(CONFIG_KEYS) | st.text(max_size=8), JSON | st.sampled_from(FAMILIES), max_size=4)
    return st.one_of(changes, changes.map(lambda c: {**LLAMA, **c}), changes.map(lambda c: {**TINY_SPEC, **c}))


def strategy_for(schema: dict) -> st.SearchStrategy:
    """Values valid under one JSON-schema node of the kinds pydantic emits for our tools."""
    if "anyOf" in schema:
        return st.one_of([strategy_for(s) for s in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        low, high = schema.get("minimum", -(2**31)), schema.get("maximum", 2**31)
        return st.integers(low, high) | st.sampled_from([low, high])
    if kind == "number":
        low, high = schema.get("minimum"), schema.get("maximum")
        return st.floats(low, high, allow_nan=False, allow_infinity=False) | st.sampled_from([v for v in (low, high) if v is not None] or [0.0])
    if kind == "string":
        low, high = schema.get("minLength", 0), schema.get("maxLength", 64)
        return st.text(min_size=low, max_size=min(high, 80)) | st.sampled_from([w for w in WORDS if low <= len(w) <= high])
    if kind == "object" and "properties" in schema:
        required = set(schema.get("required", []))
        props = schema["properties"]
        known = st.fixed_dictionaries({k: strategy_for(v) for k, v in props.items() if k in required},
                                      optional={k: strategy_for(v) for k, v in props.items() if k not in required})
        if schema.get("additionalProperties") is False:
            return known
        extra = st.dictionaries(st.text(min_size=1, max_size=6).filter(lambda k: k not in props), JSON, max_size=2)
        return st.tuples(known, extra).map(lambda pair: {**pair[1], **pair[0]})
    if kind == "object":
        return free_object()
    if kind == "array":
        low = schema.get("minItems", 0)
        return st.lists(strategy_for(schema["items"]), min_size=low, max_size=max(low, min(schema.get("maxItems", 3), 3)))
    raise AssertionError(f"no strategy for schema {schema}")


def engine_fields() -> set[str]:
    """Names an engine error may start with besides a tool's own arguments: spec fields, config.json keys, the boundary's."""
    from dataclasses import fields

    from archsmith import families, hfconfig
    from archsmith.spec import ArchitectureSpec

    names = {f.name for f in fields(ArchitectureSpec)}
    names |= {f"{sub}.{f.name}" for sub, cls in hfconfig.SUBSPECS.items() for f in fields(cls)}
    for family in families.FAMILIES.values():  # config.json keys each family reads, and its extra settings
        names |= set(families.owned_keys(family)) | set(family.defaults) | set(family.extra)
        names |= {f"extra.{key}" for key in family.extra}
    return names | {"config.json", "eos_token_id", "layer_types", "tokenizer", "timeout", "revision", "config", "out"}


TOOL_FIELDS: dict[str, set[str]] = {}  # tool -> its arguments, filled by fuzz_client
ENGINE_FIELDS = engine_fields()


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    with anyio.from_thread.start_blocking_portal() as portal:
        client = portal.wrap_async_context_manager(Client(build_server(root)))
        with client as c:
            schemas = {t.name: t.input_schema for t in portal.call(c.list_tools).tools}
            TOOL_FIELDS.update({name: set(schema.get("properties", {})) for name, schema in schemas.items()})
            yield portal, c, schemas


def named_field(text: str, name: str, args: dict) -> bool:
    """Whether an error starts with a field ('field: ...'): an argument of the tool, a key the caller sent inside an
    object argument (control characters escaped), or an engine field (a spec field, a config.json key, rope_scaling.factor)."""
    from archsmith.mcp_server.server import one_line

    sent = {one_line(key) for value in args.values() if isinstance(value, dict) for key in value}
    known = TOOL_FIELDS.get(name, set()) | ENGINE_FIELDS
    starts = [text[:m.start()] for m in re.finditer(": ", text)]
    return any(f in known or f.split(".")[0] in known or f in sent for f in starts)


async def call_within(client: Client, name: str, args: dict, seconds: float = 60):
    with anyio.fail_after(seconds):  # a hang fails the test instead of stalling CI
        return await client.call_tool(name, args)


def check_answer(portal, client, name: str, args: dict) -> None:
    result = portal.call(call_within, client, name, args)
    if result.is_error:
        text = result.content[0].text
        assert named_field(text, name, args), (name, args, text)  # "field: what is allowed", never a bare message
        assert "internal error" not in text and "Traceback" not in text and "\n" not in text, (name, args, text)
    else:
        assert isinstance(result.structured_content, dict), (name, args)


@pytest.mark.parametrize("name", [fn.__name__ for fn in TOOLS])
def test_fuzz_from_the_tools_own_schema(fuzz_client, name):
    portal, client, schemas = fuzz_client
    calls = []

    @settings(max_examples=200, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
    @given(strategy_for(schemas[name]))
    def valid_shapes(args):
        calls.append(1)
        check_answer(portal, client, name, args)

    valid_shapes()
    assert len(calls) >= 200

    @settings(max_examples=30, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(st.dictionaries(st.sampled_from(sorted(schemas[name].get("properties", {})) + ["bogus"]),
                           st.one_of(st.none(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20), st.booleans())))
    def wrong_types(args):
        check_answer(portal, client, name, args)

    wrong_types()
    ok = portal.call(client.call_tool, "list_gpus", {})  # still serving
    assert not ok.is_error


# ---- files stay inside the workspace ---------------------------------------------------------

def test_paths_cannot_escape_the_workspace(tmp_path):
    root = tmp_path / "ws"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside)
    (outside / "config.json").write_text(json.dumps(LLAMA))

    async def main():
        async with Client(build_server(root)) as client:
            for out_dir in ("../escape", str(tmp_path / "abs"), "link/inside-link", "runs/../../escape", "~/x"):
                r = await client.call_tool("write_design", {"params": "125M", "out_dir": out_dir})
                assert r.is_error and "out_dir" in r.content[0].text, out_dir
            r = await client.call_tool("estimate_config", {"config_path": "link/config.json"})
            assert r.is_error and "leaves the workspace root" in r.content[0].text
            r = await client.call_tool("emit_hf_config", {"spec": TINY_SPEC, "out_path": "../cfg.json"})
            assert r.is_error and "out_path" in r.content[0].text
            # existing files are kept unless overwrite is asked for
            assert not (await client.call_tool("write_design", {"params": "125M", "out_dir": "d"})).is_error
            before = (root / "d" / "config.json").read_text()
            again = await client.call_tool("write_design", {"params": "350M", "out_dir": "d"})
            assert again.is_error and "already exists" in again.content[0].text
            assert (root / "d" / "config.json").read_text() == before
            assert not (await client.call_tool("write_design", {"params": "350M", "out_dir": "d", "overwrite": True})).is_error
            assert (root / "d" / "config.json").read_text() != before
            first = await client.call_tool("emit_hf_config", {"spec": TINY_SPEC, "out_path": "cfg/config.json"})
            assert first.structured_content["written"] == "cfg/config.json"
            second = await client.call_tool("emit_hf_config", {"spec": TINY_SPEC, "out_path": "cfg/config.json"})
            assert second.is_error and "overwrite" in second.content[0].text
    anyio.run(main)
    assert sorted(p.name for p in outside.iterdir()) == ["config.json"]
    assert not (tmp_path / "escape").exists() and not (tmp_path / "abs").exists()


def test_resources_are_readable(tmp_path):
    async def main():
        async with Client(build_server(tmp_path)) as client:
            uris = {str(r.uri) for r in (await client.list_resources()).resources}
            assert uris == {"archsmith://scale-templates", "archsmith://gpus", "archsmith://reference-architectures"}
            catalog = json.loads((await client.read_resource("archsmith://reference-architectures")).contents[0].text)
            llama = next(row for row in catalog if row["name"] == "meta-llama__Llama-3.2-1B")
            assert llama["params"] == 1_235_814_400 and llama["repo"] == "meta-llama/Llama-3.2-1B"
            one = await client.read_resource("archsmith://reference-architectures/meta-llama__Llama-3.2-1B")
            assert json.loads(one.contents[0].text) == LLAMA
            gpus = json.loads((await client.read_resource("archsmith://gpus")).contents[0].text)
            assert gpus["h100-sxm"]["memory_gib"] == 80
    anyio.run(main)


@settings(max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(params=st.sampled_from(["20M", "125M", "350M", "1B", "7B", "70B"]), gpu=st.sampled_from(["h100", "a100-80gb", "l4", "tpu"]),
       gpus=st.integers(1, 4096), context=st.none() | st.integers(128, 1 << 20), vocab=st.none() | st.integers(1, 1 << 22),
       tokens=st.none() | st.sampled_from(["1B", "100B", "15T", "0"]), out_dir=st.text(min_size=1, max_size=40))
def test_fuzz_designs_that_get_written(fuzz_client, params, gpu, gpus, context, vocab, tokens, out_dir):
    """Schema fuzzing rarely names exactly one budget; here every call does, so the write path is exercised too."""
    portal, client, _ = fuzz_client
    args = {"params": params, "gpu": gpu, "gpus": gpus, "context": context, "vocab": vocab, "tokens": tokens}
    check_answer(portal, client, "design_architecture", args)
    check_answer(portal, client, "write_design", {**args, "out_dir": out_dir, "overwrite": True})


def test_stdio_says_on_stderr_that_it_waits_and_stdout_stays_protocol_only(tmp_path):
    """In a terminal a silent server looks hung: one line on stderr; stdout carries nothing but MCP messages."""
    proc = subprocess.Popen([str(Path(sys.executable).parent / "archsmith"), "serve", "--root", str(tmp_path)],
                            env=server_env(tmp_path), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    first = proc.stderr.readline()
    assert first.startswith(f"archsmith MCP server on stdio (workspace {tmp_path}): waiting for an MCP client on stdin")
    stdout, _ = proc.communicate("", timeout=60)  # end of input: the server stops
    assert proc.returncode == 0 and stdout == ""

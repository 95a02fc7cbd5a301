"""The workspace boundary, atomic outputs, hostile Hub data, the heavy pool, HTTP auth and one-line errors.

Each test reproduces a case from the hardening issue with real parts: the real MCP client (in process,
over HTTP), the real `huggingface_hub` client against tests/hubserver.py, real processes killed with
SIGKILL. Races are made deterministic with hooks in the write path (a writer callable, a patched step).
"""

from __future__ import annotations

import ast
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp.types import Implementation

from archsmith import files
from archsmith.errors import ArchsmithError
from archsmith.mcp_server.server import build_server
from conftest import TINY_FAMILIES

TINY_LLAMA = TINY_FAMILIES["llama"]
EXE = Path(sys.executable).parent


def call(server_or_root, tool: str, args: dict):
    """One tool call through the real MCP client, in process."""
    async def main():
        async with Client(server_or_root if not isinstance(server_or_root, Path) else build_server(server_or_root)) as client:
            return await client.call_tool(tool, args)

    return anyio.run(main)


def visible(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


@pytest.fixture
def ws(tmp_path) -> tuple[Path, Path]:
    root, outside = tmp_path / "ws", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    return root, outside


# ---- reads: symlinks inside directories ------------------------------------------------------------

def test_files_inside_a_directory_are_not_read_through_a_symlink_out(ws):
    from test_tokenizer import make_tokenizer

    root, outside = ws
    (outside / "config.json").write_text(json.dumps({**TINY_LLAMA, "hidden_size": 128}))
    (root / "m").mkdir()
    (root / "m" / "config.json").symlink_to(outside / "config.json")
    make_tokenizer(outside / "tok")
    (root / "tok").mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (root / "tok" / name).symlink_to(outside / "tok" / name)
    (root / "ok").mkdir()  # a symlink that stays inside is followed
    (root / "ok" / "real.json").write_text(json.dumps(TINY_LLAMA))
    (root / "ok" / "config.json").symlink_to("real.json")
    server = build_server(root)
    for tool in ("build_model", "estimate_config"):
        text = call(server, tool, {"config_path": "m"}).content[0].text
        assert text.startswith("config_path: 'm/config.json' leaves the workspace root") and "through the symlink m/config.json" in text
    text = call(server, "design_architecture", {"params": "20M", "tokenizer_dir": "tok"}).content[0].text
    assert text.startswith("tokenizer: ") and "leaves the workspace root" in text and "tok/tokenizer.json" in text
    built = call(server, "build_model", {"config_path": "ok"})
    assert not built.is_error and built.structured_content["matches_estimate"]
    absolute = call(server, "estimate_config", {"config_path": str(root / "ok" / "config.json")})  # Claude Code passes these
    assert absolute.structured_content["spec"]["hidden_size"] == 64
    outside_abs = call(server, "estimate_config", {"config_path": str(outside / "config.json")})
    assert outside_abs.content[0].text.startswith("config_path: ") and "leaves the workspace root" in outside_abs.content[0].text


def test_weights_are_read_through_the_boundary(ws):
    from archsmith.network import CausalLM
    from archsmith.spec import ArchitectureSpec
    from archsmith.weights import load_pretrained

    root, outside = ws
    model = CausalLM(ArchitectureSpec(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, ffn_size=64, vocab_size=64))
    model.save_pretrained(outside / "w")
    (root / "w").mkdir()
    (root / "w" / "config.json").write_bytes((outside / "w" / "config.json").read_bytes())
    (root / "w" / "model.safetensors").symlink_to(outside / "w" / "model.safetensors")
    assert load_pretrained(root / "w").num_parameters() == model.num_parameters()  # the library follows symlinks
    with files.workspace(root), pytest.raises(ArchsmithError, match="model.safetensors: .* leaves the workspace root"):
        load_pretrained(root / "w")


# ---- writes: a directory swapped during the write ----------------------------------------------------

def test_a_directory_swapped_for_a_symlink_during_write_design_is_not_followed(ws, monkeypatch):
    from archsmith import report

    root, outside = ws
    (root / "runs" / "d").mkdir(parents=True)
    (root / "runs" / "d" / "notes.md").write_text("mine")
    (outside / "d").mkdir()  # what a followed symlink would lead to
    real_render = report.render_design
    swap = {"when": "render"}

    def swap_runs():
        (root / "runs").rename(root / "runs.real")
        (root / "runs").symlink_to(outside)

    def render(result, out_dir=None):
        rendered = real_render(result, out_dir)
        if swap["when"] == "render":  # after the path was checked, before any file is written
            swap_runs()
            return rendered
        report_text = rendered.pop("architecture_report.md")

        def write_report(path):  # the first writer: the swap happens while the files are being written
            swap_runs()
            Path(path).write_text(report_text)

        return {"architecture_report.md": write_report, **rendered}

    monkeypatch.setattr(report, "render_design", render)
    server = build_server(root)
    args = {"params": "20M", "out_dir": "runs/d", "overwrite": True}
    refused = call(server, "write_design", args)
    assert list((outside / "d").iterdir()) == []
    assert refused.content[0].text.startswith("out_dir: ") and "leaves the workspace root" in refused.content[0].text
    (root / "runs").unlink()
    (root / "runs.real").rename(root / "runs")
    swap["when"] = "write"
    written = call(server, "write_design", args)
    assert not written.is_error, written.content[0].text
    # the files went into the directory held open, which is now runs.real: inside the root, whole, notes kept
    assert visible(root / "runs.real" / "d") == ["architecture_memory.png", "architecture_report.md", "capacity_memory.png",
                                                 "capacity_plan.md", "config.json", "notes.md"]
    assert json.loads((root / "runs.real" / "d" / "config.json").read_text()) == written.structured_content["config"]
    assert [p.relative_to(outside) for p in outside.rglob("*")] == [Path("d")]  # nothing was written outside


# ---- writes: all at once, interrupted or killed --------------------------------------------------------

def test_an_overwrite_that_fails_between_files_leaves_the_old_set_whole(ws, monkeypatch):
    import errno

    from archsmith import report

    root, _ = ws
    server = build_server(root)
    assert not call(server, "write_design", {"params": "20M", "out_dir": "d"}).is_error
    (root / "d" / "notes.md").write_text("mine")
    before = snapshot(root / "d")
    real_render = report.render_design

    def render(result, out_dir=None):
        rendered = real_render(result, out_dir)

        def disk_full(path):
            raise OSError(errno.ENOSPC, "No space left on device")

        return {**rendered, "capacity_plan.md": disk_full}  # config.json and the report come before it

    monkeypatch.setattr(report, "render_design", render)
    failed = call(server, "write_design", {"params": "350M", "out_dir": "d", "overwrite": True})
    assert snapshot(root / "d") == before and visible(root) == ["d"]
    assert failed.content[0].text.startswith("out_dir: ") and "No space left on device" in failed.content[0].text
    assert [p.name for p in root.iterdir() if ".archsmith-" in p.name] == []  # the temporary directory went too


KILLER = """
import os, signal, sys
from pathlib import Path
from archsmith import files

out, stage = Path(sys.argv[1]), sys.argv[2]
kill = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
new = {"config.json": "new", "report.md": "new"}
if stage == "writing":
    new["report.md"] = lambda path: (Path(path).write_text("half"), kill())
elif stage == "before-exchange":
    files._exchange = kill
else:
    exchange = files._exchange
    files._exchange = lambda *args: (exchange(*args), kill())
files.write_files(out, new, overwrite=True)
"""


@pytest.mark.parametrize("stage, survivor", [("writing", "old"), ("before-exchange", "old"), ("after-exchange", "new")])
def test_a_kill_at_any_step_leaves_one_whole_set(tmp_path, stage, survivor):
    out = tmp_path / "d"
    files.write_files(out, {"config.json": "old", "report.md": "old"})
    (out / "notes.md").write_text("mine")
    killed = subprocess.run([sys.executable, "-c", KILLER, str(out), stage], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert visible(tmp_path) == ["d"]  # no temporary shows as output
    assert snapshot(out) == {"config.json": survivor.encode(), "report.md": survivor.encode(), "notes.md": b"mine"}
    assert [p.name for p in tmp_path.iterdir() if ".archsmith-" in p.name]  # the hidden leftover of the killed write ...
    files.write_files(tmp_path / "other", {"x": "1"})
    assert [p.name for p in tmp_path.iterdir() if ".archsmith-" in p.name] == []  # ... removed by the next write there


def test_written_files_keep_the_users_umask(tmp_path):
    old = os.umask(0o027)
    try:
        files.write_files(tmp_path / "d", {"a.txt": "1"})
        files.write_files(tmp_path / "d", {"a.txt": "2"}, overwrite=True)
        files.write_file(tmp_path / "e" / "b.txt", "1")
        files.write_file(tmp_path / "e" / "b.txt", "2", overwrite=True)
    finally:
        os.umask(old)
    for path in (tmp_path / "d" / "a.txt", tmp_path / "e" / "b.txt"):
        assert path.stat().st_mode & 0o777 == 0o640, path
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o750


def test_weights_and_checkpoints_keep_the_users_umask(tmp_path):
    """safetensors creates its files 0600: weights, checkpoints and final/ still read like the user's other files."""
    import torch
    from conftest import TINY_LM

    from archsmith.network import CausalLM
    from archsmith.spec import ArchitectureSpec
    from archsmith.train.data import lm_batch, split_windows
    from archsmith.train.loop import Trainer, TrainConfig
    from archsmith.train.run import causal_lm_objective

    model = CausalLM.from_spec(ArchitectureSpec(**TINY_LM))
    train, _ = split_windows(torch.arange(2048).remainder(512).numpy(), 32, 0.0)
    old = os.umask(0o022)
    try:
        model.save_pretrained(tmp_path / "saved")
        Trainer(model, causal_lm_objective, train, lambda w: lm_batch(w, 0, 2), tmp_path / "run",
                TrainConfig(steps=2, global_batch=2, save_every=1, progress=False)).fit()
    finally:
        os.umask(old)
    weights = [tmp_path / "saved" / "model.safetensors", tmp_path / "run" / "final" / "model.safetensors",
               *(tmp_path / "run" / "checkpoints").glob("step_*/model/model.safetensors"),
               *(tmp_path / "run" / "checkpoints").glob("step_*/trainer.pt")]
    assert len(weights) == 6
    for path in weights:
        assert path.stat().st_mode & 0o777 == 0o644, path


# ---- hostile Hub data ----------------------------------------------------------------------------------

def alias_bomb(depth: int = 6, width: int = 9) -> bytes:
    """A ~600-byte card whose `datasets` expands to width**depth strings when aliases are followed."""
    lines = ["license: mit", 'a0: &a0 ["lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, depth + 1)]
    return ("---\n" + "\n".join(lines) + f"\ndatasets: *a{depth}\n---\n# Model\n\n## Limitations\nNone known.\n").encode()


EVIL_SHA = 'x"; __import__("os").system("echo pwned"); y = "'


@pytest.fixture
def hostile_hub(monkeypatch, tmp_path):
    from hubserver import FakeHub, Repo, use_fake_hub
    from test_hub import TINY, llama_files

    gen = {"pipeline_tag": "text-generation", "library_name": "transformers"}
    repos = [Repo("evil/bomb", {**gen, "cardData": {"license": "mit"}}, {**llama_files(TINY, "mit"), "README.md": alias_bomb()}),
             Repo("evil/sha", {**gen, "sha": EVIL_SHA}, llama_files(TINY, "mit"))]
    with FakeHub(repos) as hub:
        use_fake_hub(monkeypatch, tmp_path / "hf", hub)
        yield hub


def test_a_yaml_alias_bomb_in_a_model_card_is_refused(hostile_hub):
    from archsmith import hub

    assert len(alias_bomb()) < 600
    report = hub.evaluate("evil/bomb")
    assert len(json.dumps(report)) < 100_000  # 9**6 strings if the aliases were expanded
    assert any(p.startswith("README.md: card metadata not read: YAML aliases are not accepted") for p in report["problems"])
    assert report["provenance"] == {"base_model": None, "datasets": None, "language": None}
    assert report["license"] == "mit" and report["card_sections"] == {"Limitations": "None known."}  # the rest still read
    assert hub.plan_finetune("evil/bomb", method="lora")["settings"]["revision"] == report["sha"]


def test_a_hostile_commit_id_never_reaches_the_generated_script(hostile_hub):
    from archsmith import hub
    from archsmith.report import render_template

    report = hub.evaluate("evil/sha")
    assert report["sha"] is None and any(p.startswith("sha: the Hub gave a commit id that is not 40 hex digits") for p in report["problems"])
    with pytest.raises(hub.HubError, match="^revision: the Hub gave no valid commit id for evil/sha"):
        hub.plan_finetune("evil/sha", method="qlora")
    # and were one to get through, every value is a literal: the script holds only its own calls
    settings = hub.plan_finetune("evil/bomb", method="qlora")["settings"]
    evil = {**settings, "revision": EVIL_SHA, "model_id": EVIL_SHA, "target_modules": [EVIL_SHA] * len(settings["target_modules"])}
    tree, plain = ast.parse(render_template("finetune.py.j2", evil)), ast.parse(render_template("finetune.py.j2", settings))
    calls = {ast.unparse(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    assert {"AutoTokenizer.from_pretrained", "AutoModelForCausalLM.from_pretrained", "BitsAndBytesConfig", "LoraConfig",
            "get_peft_model"} <= calls and not any("system" in c or "__import__" in c for c in calls)
    for t in (tree, plain):  # the same program with other values: the values land in constants only
        for node in ast.walk(t):
            if isinstance(node, ast.Constant):
                node.value = None
    assert ast.dump(tree) == ast.dump(plain)
    tree = ast.parse(render_template("finetune.py.j2", evil))
    constants = {node.targets[0].id: node.value for node in tree.body if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}
    assert isinstance(constants["REVISION"], ast.Constant) and constants["REVISION"].value == EVIL_SHA
    assert isinstance(constants["MODEL_ID"], ast.Constant) and constants["MODEL_ID"].value == EVIL_SHA


def test_code_templates_render_every_value_as_a_literal():
    from archsmith.report import _env, literal

    code = _env(code=True)
    assert code.from_string("X = {{ x | literal }}").render(x="a\"'\n") == "X = 'a\"\\'\\n'"
    with pytest.raises(ValueError, match="must be rendered with | literal or | identifier"):
        code.from_string("X = '{{ x }}'").render(x="1")
    with pytest.raises(ValueError, match="not a Python identifier"):
        code.from_string("import {{ x | identifier }}").render(x="os; os.system('x')")
    for value in (float("nan"), object(), type("Evil", (), {"__repr__": lambda self: "__import__('os')"})()):
        with pytest.raises(ValueError, match="not plain data"):
            literal(value)


# ---- the heavy pool: light calls never wait, time limits, per-session limits ------------------------

@pytest.fixture
def blocked_builds(monkeypatch):
    """build_model's work blocks until `release` is set; `entered` counts the builds that started."""
    from archsmith import network

    release, entered, real = threading.Event(), [], network.describe

    def describe(spec, depth=4):
        entered.append(1)
        release.wait(120)  # bounded, so that a broken test ends
        return real(spec, depth)

    monkeypatch.setattr(network, "describe", describe)
    yield release, entered
    release.set()


def test_a_light_call_answers_while_heavy_calls_fill_the_pool(tmp_path, blocked_builds):
    release, entered = blocked_builds
    server = build_server(tmp_path)
    events = []

    async def main():
        busy_client, other_client = (Client(server, client_info=Implementation(name=n, version="1")) for n in ("busy", "other"))
        async with busy_client as busy, other_client as other:
            async def build():
                result = await busy.call_tool("build_model", {"config": TINY_LLAMA})
                events.append(("heavy", result.is_error))

            async with anyio.create_task_group() as tg:
                for _ in range(50):  # as many as the flood: more than anyio's 40 default worker threads
                    tg.start_soon(build)
                with anyio.fail_after(60):
                    while len(entered) < 2:  # the busy client's share of the pool is taken
                        await anyio.sleep(0.01)
                with anyio.fail_after(60):  # generous: where the old server hung (110 s in the issue)
                    light = await other.call_tool("list_gpus", {})
                    events.append(("light", light.is_error))
                    heavy = await other.call_tool("estimate_config", {"config": TINY_LLAMA})  # another client's heavy call
                    events.append(("other client", heavy.is_error))
                events.append(("builds started", len(entered)))
                release.set()

    anyio.run(main)
    assert events[:3] == [("light", False), ("other client", False), ("builds started", 2)]  # before any build ended
    assert events[3:] == [("heavy", False)] * 50


def test_a_heavy_call_past_its_time_limit_is_abandoned_but_keeps_its_slot(tmp_path, blocked_builds):
    release, entered = blocked_builds
    server = build_server(tmp_path, per_client=1, timeout_s=1.5)

    async def main():
        async with Client(server) as client:
            first = await client.call_tool("build_model", {"config": TINY_LLAMA})
            assert first.content[0].text.startswith("timeout: build_model did not finish within 1.5 s")
            second = await client.call_tool("build_model", {"config": TINY_LLAMA})  # its slot is still held by the first
            assert second.content[0].text.startswith("timeout: ") and len(entered) == 1
            assert not (await client.call_tool("list_gpus", {})).is_error
            release.set()  # the abandoned build ends, its slot comes back
            with anyio.fail_after(60):
                while True:
                    third = await client.call_tool("build_model", {"config": TINY_LLAMA})
                    if not third.is_error:
                        break
            assert third.structured_content["matches_estimate"]

    anyio.run(main)


def test_heavy_tools_are_declared():
    from archsmith.mcp_server import pool, tools

    assert {fn.__name__ for fn in tools.TOOLS if pool.is_heavy(fn)} >= {
        "design_architecture", "write_design", "estimate_config", "build_model", "plan_finetune", "search_models", "evaluate_model"}
    assert not pool.is_heavy(tools.list_gpus) and not pool.is_heavy(tools.list_scale_templates)


# ---- one-line errors that name the field -------------------------------------------------------------

def test_mcp_errors_name_the_field_and_the_range(tmp_path, monkeypatch):
    from archsmith import design

    server = build_server(tmp_path)
    texts = {
        "range": call(server, "estimate_config", {"config": TINY_LLAMA, "batch": 0}).content[0].text,
        "choice": call(server, "estimate_config", {"config": TINY_LLAMA, "dtype": "fp8"}).content[0].text,
        "long name": call(server, "estimate_config", {"config_path": "a" * 300}).content[0].text,
        "missing": call(server, "write_design", {"params": "20M"}).content[0].text,
    }
    assert texts["range"] == "batch: must be an integer in [1, 1048576], got 0"
    assert texts["choice"] == 'dtype: must be one of "fp32", "bf16", "fp16", got "fp8"'
    assert texts["long name"].startswith("config_path: cannot use") and "File name too long" in texts["long name"]
    assert texts["missing"].startswith("out_dir: required (a string of 1 to 1024 characters)")
    assert not any("pydantic" in t or "Error executing tool" in t for t in texts.values())

    def crash(**kwargs):
        return 1 / 0

    monkeypatch.setattr(design, "design_from_text", crash)  # anything the engine did not expect
    text = call(server, "design_architecture", {"params": "1e999"}).content[0].text
    assert text.startswith("internal error in design_architecture: ZeroDivisionError: division by zero") and "\n" not in text


def run_cli(*args: str, env: dict | None = None, code: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", code, *args] if code else [str(EXE / "archsmith"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})


def test_cli_errors_are_one_line(tmp_path, monkeypatch):
    import hubserver
    from hubserver import FakeHub
    from test_hub import repos

    long_name = run_cli("estimate", "a" * 300)
    assert long_name.returncode == 2 and long_name.stderr.startswith("error: config: cannot use") and "File name too long" in long_name.stderr
    crash = run_cli("design", "--params", "125M", "--out", str(tmp_path / "x"),
                    code="import sys; import archsmith.design as d, archsmith.cli as c; "
                         "d.design_from_text = lambda **k: 1 / 0; c.main()")
    assert crash.returncode == 1 and crash.stderr.startswith("error: internal error in design: ZeroDivisionError: division by zero")
    monkeypatch.setattr(hubserver._Handler, "_model_api", lambda self, req, rest: hubserver._Response(
        200, b"{not json", {"Content-Type": "application/json"}))  # the Hub answers 200 with a broken body
    with FakeHub(repos()) as fake:
        env = {"HF_ENDPOINT": fake.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}
        malformed = run_cli("evaluate", "acme/tiny-llama-es", env=env)
    assert malformed.returncode == 2 and malformed.stderr.startswith("error: acme/tiny-llama-es: the Hub's answer is malformed")
    for result in (long_name, crash, malformed):
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr


# ---- HTTP: the URL on start, a port in use, a token beyond loopback ---------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_line(proc: subprocess.Popen, seconds: float = 60) -> str:
    ready, _, _ = select.select([proc.stderr], [], [], seconds)
    assert ready, "the server printed nothing"
    return proc.stderr.readline()


# Runs `serve` as `archsmith serve --host 0.0.0.0` would, except that the socket binds 127.0.0.1 (tests never bind other interfaces).
LOOPBACK_BIND = ("import sys; from archsmith.mcp_server import server; bind = server.bind; "
                 "server.bind = lambda host, port: bind('127.0.0.1', port); server.main(sys.argv[1:])")


def test_a_non_loopback_bind_needs_a_token_and_checks_the_host(tmp_path):
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "ARCHSMITH_MCP_TOKEN"}
    base = ["serve", "--http", str(port), "--host", "0.0.0.0", "--root", str(tmp_path)]
    no_token = subprocess.run([str(EXE / "archsmith"), *base], capture_output=True, text=True, timeout=60, env=env)
    assert no_token.returncode == 2 and no_token.stderr.startswith("error: host: serving on 0.0.0.0 (not loopback) needs a bearer token")
    token = "s3cret-token-for-tests-0123456789"
    no_names = subprocess.run([str(EXE / "archsmith"), *base], capture_output=True, text=True, timeout=60,
                              env={**env, "ARCHSMITH_MCP_TOKEN": token})
    assert no_names.returncode == 2 and no_names.stderr.startswith("error: allow_host: serving on 0.0.0.0 needs --allow-host")
    short = run_cli(*base, "--allow-host", "x", env={"ARCHSMITH_MCP_TOKEN": "short"})
    assert short.returncode == 2 and short.stderr.startswith("error: ARCHSMITH_MCP_TOKEN: the token must be at least 16 characters")
    (tmp_path / "token").write_text(token + "\n")
    proc = subprocess.Popen([sys.executable, "-c", LOOPBACK_BIND, *base[1:], "--allow-host", "archsmith.test", "--token-file",
                             str(tmp_path / "token")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert first_line(proc).startswith(f"archsmith MCP server on http://archsmith.test:{port}/mcp (workspace {tmp_path}, bearer token required)")
        url = f"http://127.0.0.1:{port}/mcp"

        async def main():
            headers = {"Authorization": f"Bearer {token}", "Host": f"archsmith.test:{port}"}
            async with httpx2.AsyncClient(headers=headers) as http, Client(streamable_http_client(url, http_client=http)) as client:
                gpus = await client.call_tool("list_gpus", {})
                assert not gpus.is_error and "h100-sxm" in gpus.structured_content["gpus"]
            probe = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
            async with httpx2.AsyncClient() as http:
                post = lambda **h: http.post(url, json=probe, headers={"Accept": "application/json, text/event-stream", **h})  # noqa: E731
                assert (await post()).status_code == 401
                assert (await post(Authorization="Bearer wrong-token-0123456789")).status_code == 401
                assert (await post(Authorization=f"Bearer {token}", Host=f"evil.example:{port}")).status_code == 421
                assert (await post(Authorization=f"Bearer {token}", Origin="http://evil.example")).status_code == 403

        anyio.run(main)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_prints_its_url_and_the_readme_client_handles_errors(tmp_path, monkeypatch, capsys):
    from test_readme import readme_block

    port = free_port()
    proc = subprocess.Popen([str(EXE / "archsmith"), "serve", "--http", str(port), "--root", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={k: v for k, v in os.environ.items() if k != "ARCHSMITH_MCP_TOKEN"})
    try:
        assert first_line(proc).startswith(f"archsmith MCP server on http://127.0.0.1:{port}/mcp (workspace {tmp_path})")
        busy = run_cli("serve", "--http", str(port))
        assert busy.returncode == 2 and busy.stderr.strip() == (
            f"error: http: port {port} on 127.0.0.1 is already in use; pick another with --http PORT")
        monkeypatch.setenv("ARCHSMITH_MCP_URL", f"http://127.0.0.1:{port}/mcp")
        monkeypatch.delenv("ARCHSMITH_MCP_TOKEN", raising=False)
        block = compile(readme_block("or over streamable HTTP"), "README.md", "exec")
        exec(block, {})  # runs/demo/config.json does not exist yet
        assert capsys.readouterr().out == "error: config_path: no such file: runs/demo/config.json\n"  # workspace-relative
        (tmp_path / "runs" / "demo").mkdir(parents=True)
        (tmp_path / "runs" / "demo" / "config.json").write_text(json.dumps(TINY_LLAMA))
        exec(block, {})
        from archsmith.estimate import count_params
        from archsmith.hfconfig import spec_from_hf

        assert capsys.readouterr().out == f"{count_params(spec_from_hf(TINY_LLAMA))['total']}\n"
    finally:
        proc.terminate()
        proc.wait(timeout=30)

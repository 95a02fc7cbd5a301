"""The training surfaces keep the workspace promise (docs/security.md, "Training runs").

A hostile workspace plants modules and symlinks; through the real MCP client (stdio and streamable HTTP) no
planted code runs in the training process, it gets no secrets, status reads nothing outside, runs belong to
the client that started them, background work is bounded and every refusal is one line naming
workspace-relative paths. Swaps of the run's directories for symlinks are made at exact moments of a real
Trainer run (before the first checkpoint, between checkpoints, during rotation, during the final save, the
run directory itself moved away): nothing outside is written or deleted and the run stops with one line.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
import torch
from mcp import Client, StdioServerParameters
from mcp.types import Implementation

from archsmith import files
from archsmith.errors import ArchsmithError
from conftest import TINY_LM, serve_http

SERVER = str(Path(sys.executable).parent / "archsmith")
PLANTED = ("archsmith/__init__.py", "yaml.py", "numpy.py", "safetensors.py", "torch.py", "sitecustomize.py")
RUN = {"model_dir": "model", "data": ["stories.txt"], "out_dir": "run", "steps": 100000, "batch": 2, "seq": 32,
       "save_every": 100000, "eval_samples": 4}
SECRETS = {"ANTHROPIC_API_KEY": "sk-ant-planted", "HF_TOKEN": "hf_planted", "AWS_SECRET_ACCESS_KEY": "planted"}


def make_workspace(tmp_path: Path, tiny_lm) -> Path:
    """A workspace as a cloned repository might be: a model, a corpus, and modules planted to be imported."""
    ws = tmp_path / "ws"
    shutil.copytree(tiny_lm["model"], ws / "model")
    shutil.copy(tiny_lm["corpus"], ws / "stories.txt")
    for name in PLANTED:
        (ws / name).parent.mkdir(parents=True, exist_ok=True)
        marker = name.replace("/", "_")
        (ws / name).write_text(f"import pathlib\npathlib.Path({str(ws)!r}, 'PWNED-{marker}').write_text('ran')\n")
    return ws


def server_env(ws: Path, **extra: str) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HOME": str(ws.parent), "HF_HOME": str(ws.parent / "hf"), "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(ws.parent / "server-only"), **SECRETS, **extra}  # the server's own: never the child's


async def call(client, name: str, args: dict):
    result = await client.call_tool(name, args)
    assert not result.is_error, result.content[0].text
    return result.structured_content


async def refused(client, name: str, args: dict) -> str:
    result = await client.call_tool(name, args)
    assert result.is_error, result.structured_content
    text = result.content[0].text
    assert "\n" not in text and "internal error" not in text, text
    return text


async def wait_for(client, out: str, condition, seconds: float = 240) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        status = await call(client, "training_status", {"out_dir": out, "rows": 5})
        if condition(status):
            return status
        assert time.monotonic() < deadline, status
        await anyio.sleep(0.2)  # the run is another process: its files are polled


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_reaping(main, pids: list[int]) -> None:
    """anyio.run(main), then kill every training process group it started, whatever failed."""
    try:
        anyio.run(main)
    finally:
        for pid in pids:
            kill_group(pid)


async def stop_and_wait(client, out: str) -> dict:
    """stop_training, then the status once the process has ended: stopped, and the caller's own run."""
    await call(client, "stop_training", {"out_dir": out})
    stopped = await wait_for(client, out, lambda s: not s["alive"])
    assert stopped["state"] == "stopped" and stopped["owner"] == "you", stopped
    return stopped


def test_stdio_the_child_imports_nothing_planted_and_gets_no_secrets(tmp_path, tiny_lm):
    ws = make_workspace(tmp_path, tiny_lm)
    params = StdioServerParameters(command=SERVER, args=["serve", "--root", str(ws)], env=server_env(ws), cwd=str(ws))
    pids = []

    async def main():
        async with Client(params) as client:
            started = await call(client, "start_training", RUN)
            pids.append(started["pid"])
            assert str(ws) not in json.dumps(started) and started["command"][:3] == ["archsmith", "train", "model"]
            assert started["command"].count("--no-progress") == 1
            await wait_for(client, "run", lambda s: s["step"] >= 2)
            environ = dict(line.split("=", 1) for line in
                           Path(f"/proc/{started['pid']}/environ").read_bytes().decode().split("\0") if "=" in line)
            assert not set(SECRETS) & set(environ) and "PYTHONPATH" not in environ
            assert os.readlink(f"/proc/{started['pid']}/cwd") == "/"  # not the workspace; nothing made outside for it
            await stop_and_wait(client, "run")

    run_reaping(main, pids)
    assert sorted(p.name for p in ws.glob("PWNED-*")) == []
    assert (ws / "run" / "final" / "model.safetensors").is_file()


def test_stdio_status_never_follows_a_planted_symlink(tmp_path, tiny_lm):
    ws = make_workspace(tmp_path, tiny_lm)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("SECRET-LINE\n" * 30)
    (outside / "secret.json").write_text(json.dumps({"SECRET": "value", "steps": 1}))
    run = ws / "run"
    run.mkdir()
    (run / "status.json").write_text(json.dumps({"state": "failed", "step": 1, "steps": 2, "error": "boom"}))
    for name, target in (("train.log", "secret.txt"), ("summary.json", "secret.json"), ("metrics.jsonl", "secret.txt"),
                         ("launch.json", "secret.json")):
        (run / name).symlink_to(outside / target)
    (run / "checkpoints").symlink_to(outside)
    params = StdioServerParameters(command=SERVER, args=["serve", "--root", str(ws)], env=server_env(ws), cwd=str(ws))

    async def main():
        async with Client(params) as client:
            status = await call(client, "training_status", {"out_dir": "run", "rows": 5})
            assert "SECRET" not in json.dumps(status) and status["state"] == "failed" and status["checkpoints"] == []
            assert {n.split()[0] for n in status["notes"]} == {"train.log", "summary.json", "metrics.jsonl", "launch.json",
                                                              "checkpoints"}
            (run / "status.json").unlink()
            (run / "status.json").symlink_to(outside / "secret.json")
            text = await refused(client, "training_status", {"out_dir": "run"})
            assert text.startswith("out_dir:") and "SECRET" not in text and str(ws) not in text

    anyio.run(main)


@pytest.fixture
def http_server(tmp_path, tiny_lm):
    ws = make_workspace(tmp_path, tiny_lm)
    proc, url = serve_http(ws, server_env(ws, ARCHSMITH_MAX_RUNS_PER_CLIENT="1", ARCHSMITH_MAX_TRAIN_PROCS="2"))
    yield url, ws
    proc.terminate()
    proc.wait(timeout=30)


def test_http_runs_are_their_clients_bounded_and_only_provably_theirs_are_signalled(http_server):
    url, ws = http_server
    decoy = subprocess.Popen(["bash", "-c", "exec -a 'python -m archsmith.cli train' sleep 300"], start_new_session=True)
    (ws / "forged").mkdir()
    (ws / "forged" / "launch.json").write_text(json.dumps({"pid": decoy.pid, "command": ["archsmith", "train"]}))
    (ws / "forged" / "status.json").write_text(json.dumps({"state": "running", "step": 1, "steps": 9}))
    pids = []

    async def main():
        named = lambda name: Client(url, client_info=Implementation(name=name, version="1"))  # noqa: E731
        async with named("alice") as a, named("bob") as b:  # stateless HTTP: a client is its address and name
            started = await call(a, "start_training", RUN)
            pids.append(started["pid"])
            text = await refused(a, "start_training", {**RUN, "out_dir": "run2"})
            assert "ARCHSMITH_MAX_RUNS_PER_CLIENT=1" in text and "run (pid" in text and not (ws / "run2" / "launch.json").exists()
            text = await refused(b, "start_training", {**RUN, "out_dir": "run3", "nproc": 4})
            assert text.startswith("nproc: must be at most 2")
            assert (await call(b, "training_status", {"out_dir": "run"}))["owner"] == "another client"
            text = await refused(b, "stop_training", {"out_dir": "run"})
            assert "started by another client" in text
            text = await refused(a, "stop_training", {"out_dir": "forged"})
            assert "not a run this server started" in text and decoy.poll() is None
            assert (await call(a, "training_status", {"out_dir": "forged"}))["owner"] == "unknown"
            await wait_for(a, "run", lambda s: s["step"] >= 1)
            await stop_and_wait(a, "run")

    try:
        run_reaping(main, pids)
    finally:
        decoy.kill()
        decoy.wait()


def test_http_refusals_are_one_line_field_named_and_workspace_relative(http_server):
    url, ws = http_server
    (ws / "badweights").mkdir()
    shutil.copy(ws / "model" / "config.json", ws / "badweights" / "config.json")
    (ws / "badweights" / "model.safetensors").write_bytes(b"\xff" * 64)  # a header length past the end
    shutil.copytree(ws / "model", ws.parent / "elsewhere")
    (ws / "outside-link").symlink_to(ws.parent)

    async def main():
        async with Client(url) as client:
            for args, field in [({"model_dir": "m" * 300}, "model_dir"), ({"out_dir": "r" * 300}, "out_dir"),
                                ({"model_dir": "outside-link/elsewhere"}, "model_dir"), ({"data": ["nope.txt"]}, "data")]:
                text = await refused(client, "start_training", {**RUN, **args})
                assert text.startswith(f"{field}:") and str(ws) not in text, text
                assert not any(len(p.name) > 255 for p in ws.iterdir()) and not (ws / "run").exists()
            text = await refused(client, "start_training", {**RUN, "model_dir": "badweights", "out_dir": "bw"})
            assert text.startswith("model_dir: badweights/model.safetensors is not a readable safetensors file")
            assert not (ws / "bw").exists()

    anyio.run(main)


# ---- the Trainer: swaps at exact moments -------------------------------------------------------

def snapshot(path: Path) -> dict[str, tuple[int, int]]:
    """Every entry under `path` with its size and modification time (never through a symlink)."""
    return {str(p.relative_to(path)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(path.rglob("*"))}


MOMENTS = ["before_first_checkpoint", "between_checkpoints", "during_rotation", "during_final_save", "run_dir_moved"]


@pytest.mark.parametrize("moment", MOMENTS)
def test_symlink_swaps_write_and_delete_nothing_outside(tmp_path, moment, monkeypatch):
    from archsmith.network import CausalLM
    from archsmith.spec import ArchitectureSpec
    from archsmith.train import checkpoint as ckpt
    from archsmith.train.data import lm_batch, split_windows
    from archsmith.train.loop import Trainer, TrainConfig
    from archsmith.train.run import causal_lm_objective

    ws, outside = tmp_path / "ws", tmp_path / "outside"
    run = ws / "run"
    ws.mkdir()
    for name in ("step_000001", "step_000002", "final"):
        (outside / name).mkdir(parents=True)
        (outside / name / "config.json").write_text("{}")
    before = snapshot(outside)
    moved = tmp_path / "moved-run"
    seen = {}

    def swap(name: str) -> None:
        target = run / name
        if target.is_symlink() or not target.exists():
            target.unlink(missing_ok=True)
        else:
            target.rename(run / f"{name}.aside")
        target.symlink_to(outside)

    def objective(modules, batch):
        step = seen["step"] = seen.get("step", 0) + 1
        if moment == "before_first_checkpoint" and step == 1:
            swap("checkpoints")
        if moment == "between_checkpoints" and step == 3:
            swap("checkpoints")
        if moment == "run_dir_moved" and step == 3:
            run.rename(moved)
            run.symlink_to(outside)
            seen["moved"] = snapshot(moved)
        return causal_lm_objective(modules, batch)

    discard = ckpt._discard

    def rotating(parent, name):  # a deletion of step_000001: swap checkpoints/ just before it sets the step aside
        if moment == "during_rotation" and name == "step_000001" and not seen.get("rotated"):
            seen["rotated"] = True
            swap("checkpoints")
        return discard(parent, name)

    monkeypatch.setattr(ckpt, "_discard", rotating)

    def save_hook(model, state, directory):
        if moment == "during_final_save" and "final" in str(directory):
            swap("final")
        return ckpt.save_model(model, state, directory)

    tokens = torch.randint(0, 512, (2048,), generator=torch.Generator().manual_seed(0)).numpy()
    train, _ = split_windows(tokens, 32, 0.0)
    config = TrainConfig(steps=6, global_batch=2, save_every=1 if moment == "during_rotation" else 2, keep=1, progress=False)
    model = CausalLM.from_spec(ArchitectureSpec(**TINY_LM))
    trainer = Trainer(model, objective, train, lambda w: lm_batch(w, 0, 2), run, config, save_model=save_hook)
    with files.workspace(ws):
        if moment == "during_final_save":
            trainer.fit()  # the symlink put at final/ is removed, not followed; final/ is the new model
            assert (run / "final").is_dir() and not (run / "final").is_symlink() and (run / "final" / "config.json").is_file()
        else:
            with pytest.raises(ArchsmithError) as info:
                trainer.fit()
            assert info.value.field == "out" and "\n" not in str(info.value)
            assert ("moved or replaced" in str(info.value)) if moment == "run_dir_moved" else "symlink" in str(info.value)
    assert snapshot(outside) == before  # nothing outside written, renamed or deleted
    if moment == "run_dir_moved":
        assert snapshot(moved) == seen["moved"]  # not one byte more once it was moved away


# ---- resume: a torn or pickled newest checkpoint is named and skipped ----------------------------

def test_resume_falls_back_from_torn_and_pickled_checkpoints(tmp_path, tiny_lm):
    import argparse

    from typer.testing import CliRunner

    from archsmith.cli import app

    base = [str(tiny_lm["model"]), "--data", str(tiny_lm["corpus"]), "--out", str(tmp_path / "run"), "--batch", "2", "--seq", "32",
            "--save-every", "2", "--keep", "3", "--eval-fraction", "0", "--no-progress"]
    first = CliRunner().invoke(app, ["train", *base, "--steps", "6"])
    assert first.exit_code == 0, first.output
    ckpts = tmp_path / "run" / "checkpoints"
    weights = ckpts / "step_000006" / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4096])  # torn
    torch.save({"namespace": argparse.Namespace(x=1)}, ckpts / "step_000004" / "trainer.pt")  # pickled objects
    resumed = CliRunner().invoke(app, ["train", *base, "--steps", "8", "--resume", "--json"])
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads(resumed.stdout)
    (note,) = summary["notes"]
    assert "checkpoints/step_000006/model/model.safetensors is torn" in note
    assert "checkpoints/step_000004/trainer.pt holds objects" in note
    assert note.endswith("resumed from checkpoints/step_000002") and "weights_only=False" not in note
    assert summary["steps"] == 8
    for step in (6, 8):  # the newest two now; both readable again
        (ckpts / f"step_{step:06d}" / "trainer.pt").write_bytes(b"not a zip")
    (ckpts / "step_000004").rename(ckpts / ".aside")
    failed = CliRunner().invoke(app, ["train", *base, "--steps", "10", "--resume"])
    assert failed.exit_code == 2 and failed.stderr.count("\n") == 1
    assert failed.stderr.startswith("error: resume: no checkpoint can be read whole: ")
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "failed" and status["error"].startswith("resume: no checkpoint can be read whole")
    assert "checkpoints/step_000008/trainer.pt is torn" in status["error"]


def test_mcp_failed_resume_reads_as_failed_not_stopped(tmp_path, tiny_lm):
    from archsmith.mcp_server.server import build_server

    ws = make_workspace(tmp_path, tiny_lm)
    for name in PLANTED:  # in process: the planted files are the other tests' business
        (ws / name).unlink()
    pids = []

    async def main():
        async with Client(build_server(ws)) as client:
            started = await call(client, "start_training", {**RUN, "steps": 4, "save_every": 2})
            pids.append(started["pid"])
            done = await wait_for(client, "run", lambda s: not s["alive"] and s["state"] != "starting")
            assert done["state"] == "finished" and done["checkpoints"] == ["step_000002", "step_000004"]
            for step in (2, 4):
                (ws / "run" / "checkpoints" / f"step_{step:06d}" / "trainer.pt").write_bytes(b"torn")
            again = await call(client, "start_training", {**RUN, "steps": 6, "save_every": 2, "resume": True})
            pids.append(again["pid"])
            failed = await wait_for(client, "run", lambda s: not s["alive"] and s["state"] != "starting")
            assert failed["state"] == "failed" and failed["error"].startswith("resume: no checkpoint can be read whole")
            assert str(ws) not in json.dumps(failed)

    run_reaping(main, pids)


def test_stdio_checkpoints_swapped_mid_run_stop_it_and_nothing_outside_changes(tmp_path, tiny_lm):
    ws, outside = make_workspace(tmp_path, tiny_lm), tmp_path / "outside"
    for name in ("step_000001", "step_000003"):
        (outside / name).mkdir(parents=True)
        (outside / name / "trainer.pt").write_text("decoy")
    before = snapshot(outside)
    params = StdioServerParameters(command=SERVER, args=["serve", "--root", str(ws)], env=server_env(ws), cwd=str(ws))
    pids = []

    async def main():
        async with Client(params) as client:
            started = await call(client, "start_training", {**RUN, "save_every": 2, "eval_every": 100000})
            pids.append(started["pid"])
            await wait_for(client, "run", lambda s: s["checkpoints"])  # between checkpoints: the first one is on disk
            (ws / "run" / "checkpoints").rename(ws / "run" / "aside")
            (ws / "run" / "checkpoints").symlink_to(outside)
            failed = await wait_for(client, "run", lambda s: not s["alive"] and s["state"] != "starting")
            assert failed["state"] == "failed" and "\n" not in failed["error"] and str(ws) not in json.dumps(failed)
            assert failed["error"].startswith("out: 'run/checkpoints' is a symlink")

    run_reaping(main, pids)
    assert snapshot(outside) == before


def test_stdio_a_hub_config_over_the_cap_is_never_downloaded(tmp_path, tiny_lm):
    from hubserver import FakeHub, Repo

    ws = make_workspace(tmp_path, tiny_lm)
    big = b'{"model_type": "llama", "pad": "' + b"x" * (17 << 20) + b'"}'  # 17 MiB, over the 16 MiB cap
    with FakeHub([Repo("acme/huge", {"pipeline_tag": "text-generation"}, {"config.json": big, "README.md": b"# card"})]) as hub:
        env = server_env(ws, HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_HUB_DISABLE_TELEMETRY="1")
        params = StdioServerParameters(command=SERVER, args=["serve", "--root", str(ws)], env=env, cwd=str(ws))

        async def main():
            async with Client(params) as client:
                report = await call(client, "evaluate_model", {"model_id": "acme/huge"})
                assert any("config.json is 17,825,8" in p and "16,777,216-byte cap" in p for p in report["problems"])

        anyio.run(main)
        assert not hub.find("GET", "/acme/huge/resolve/main/config.json")


def test_stdio_corpus_directories_never_follow_a_planted_symlink(tmp_path, tiny_lm):
    ws, outside = tmp_path / "ws", tmp_path / "outside"
    (ws / "corpus").mkdir(parents=True)
    outside.mkdir()
    shutil.copy(tiny_lm["corpus"], ws / "corpus" / "stories.txt")
    (outside / "secret.txt").write_text("zqxjvortexsecret " * 2000)
    (ws / "corpus" / "planted.txt").symlink_to(outside / "secret.txt")
    params = StdioServerParameters(command=SERVER, args=["serve", "--root", str(ws)], env=server_env(ws), cwd=str(ws))

    async def main():
        async with Client(params) as client:
            report = await call(client, "train_tokenizer", {"corpus": ["corpus"], "out_dir": "tok", "vocab": 400})
            assert report["files"][0] == "tok/tokenizer.json"
            text = await refused(client, "train_tokenizer", {"corpus": ["corpus/planted.txt"], "out_dir": "tok2", "vocab": 400})
            assert text.startswith("corpus:") and "leaves the workspace root" in text

    anyio.run(main)
    vocab = json.loads((ws / "tok" / "tokenizer.json").read_text())["model"]["vocab"]
    assert not any("zqxj" in token or "vortex" in token for token in vocab)


@pytest.mark.slow
def test_kill9_resume_soak_leaves_every_run_whole(tmp_path, tiny_lm):
    """50 times: run (or resume) `archsmith train`, SIGKILL it after a random number of logged steps; after each kill
    every checkpoint directory is whole (trainer.pt and weights load) and the next start resumes from it."""
    import random

    from safetensors.torch import load_file

    rng = random.Random(0)
    run = tmp_path / "run"
    base = [SERVER, "train", str(tiny_lm["model"]), "--data", str(tiny_lm["corpus"]), "--out", str(run), "--steps", "100000",
            "--batch", "2", "--seq", "32", "--save-every", "1", "--keep", "2", "--eval-fraction", "0", "--no-progress"]
    kills = 0
    for attempt in range(50):
        resume = ["--resume"] if (run / "checkpoints").is_dir() and any((run / "checkpoints").glob("step_*")) else []
        rows_before = len((run / "metrics.jsonl").read_text().splitlines()) if (run / "metrics.jsonl").exists() else 0
        proc = subprocess.Popen(base + resume, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wanted = rows_before + rng.randint(1, 4)
        while proc.poll() is None:
            rows = len((run / "metrics.jsonl").read_text().splitlines()) if (run / "metrics.jsonl").exists() else 0
            if rows >= wanted:
                proc.kill()
                kills += 1
                break
            time.sleep(0.02)  # polling another process's progress
        proc.wait()
        assert proc.returncode in (-signal.SIGKILL, 0), proc.stderr.read().decode()[-2000:]
        for step_dir in sorted((run / "checkpoints").glob("step_*")):
            torch.load(step_dir / "trainer.pt", weights_only=True)
            for weights in step_dir.glob("model/*.safetensors"):
                load_file(str(weights))
    assert kills >= 45
    done = subprocess.run(base[:base.index("100000")] + [str(int(json.loads((run / "status.json").read_text())["step"]) + 2)]
                          + base[base.index("100000") + 1:] + ["--resume"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]

"""`archsmith train`: exact resume after SIGKILL, DDP and FSDP2 equal to one process, bad input, the loop's API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from archsmith.train.loop import lr_factor, param_groups
from archsmith.train.metrics import read_metrics
from archsmith.units import human_bytes


def cli(*args) -> str:
    """`archsmith ...` in this process (no interpreter start-up); returns stdout."""
    from typer.testing import CliRunner

    from archsmith.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r["kind"] == "train"}


def weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def common(tiny_lm) -> list:
    return [tiny_lm["model"], "--data", tiny_lm["corpus"], "--batch", 8, "--seq", 64, "--lr", "3e-3", "--eval-samples", 16,
            "--no-progress"]


# ---- kill and resume ----------------------------------------------------------------------------

def test_piped_train_prints_plain_progress_lines(tmp_path, tiny_lm):
    """Piped to a file a bar is silent: plain lines instead (every ARCHSMITH_PROGRESS_EVERY_S, here every step)."""
    run = tmp_path / "run"
    env = {**os.environ, "ARCHSMITH_PROGRESS_EVERY_S": "0"}
    args = [*map(str, common(tiny_lm))][:-1] + ["--steps", "4", "--save-every", "100000", "--out", str(run)]
    done = subprocess.run([str(Path(sys.executable).parent / "archsmith"), "train", *args], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("training: ")]
    assert [line.split()[1] for line in lines[:4]] == ["1/4", "2/4", "3/4", "4/4"] and "loss " in lines[0]
    assert any(line.startswith("tokenizing: ") and " of " in line for line in done.stderr.splitlines())
    quiet = subprocess.run([str(Path(sys.executable).parent / "archsmith"), "train", *args[:-1], str(tmp_path / "quiet"),
                            "--no-progress"], env=env, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr


def test_status_follows_the_steps_between_checkpoints(tmp_path, tiny_lm):
    import time

    run = tmp_path / "run"
    args = [*map(str, common(tiny_lm)), "--steps", "100000", "--save-every", "100000", "--out", str(run)]
    proc = subprocess.Popen([str(Path(sys.executable).parent / "archsmith"), "train", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "ARCHSMITH_PROGRESS_EVERY_S": "0"})
    try:
        deadline = time.monotonic() + 300
        while True:
            status = json.loads((run / "status.json").read_text()) if (run / "status.json").exists() else {}
            if status.get("step", 0) >= 3:
                break
            assert proc.poll() is None and time.monotonic() < deadline, status
            time.sleep(0.05)  # polling another process's progress
        assert status["state"] == "running" and not any((run / "checkpoints").glob("step_*"))
    finally:
        proc.kill()
        proc.wait()


def test_a_run_killed_before_its_first_checkpoint_blocks_no_corrected_retry(tmp_path, tiny_lm):
    import time

    run = tmp_path / "run"
    args = [*map(str, common(tiny_lm)), "--save-every", "100000", "--out", str(run)]
    proc = subprocess.Popen([str(Path(sys.executable).parent / "archsmith"), "train", *args, "--steps", "100000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text().strip():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)  # polling another process's progress
    proc.kill()
    proc.wait()
    assert (run / "run.json").is_file() and not any((run / "checkpoints").glob("step_*"))
    retry = cli("train", *args[:args.index("--lr")], "--lr", "1e-3", *args[args.index("--lr") + 2:], "--steps", 3, "--json")
    assert json.loads(retry)["steps"] == 3 and json.loads((run / "run.json").read_text())["settings"]["lr"] == 1e-3
    assert [r["step"] for r in read_metrics(run) if r["kind"] == "train"] == [1, 2, 3]  # the killed start's rows are gone


def test_ctrl_c_saves_a_checkpoint_says_how_to_resume_and_reads_as_stopped(tmp_path, tiny_lm):
    import time

    run = tmp_path / "run"
    args = [*map(str, common(tiny_lm)), "--steps", "100000", "--save-every", "100000", "--out", str(run)]
    proc = subprocess.Popen([str(Path(sys.executable).parent / "archsmith"), "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (run / "metrics.jsonl").exists() or len((run / "metrics.jsonl").read_text().splitlines()) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)  # polling another process's progress
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    status = json.loads((run / "status.json").read_text())
    step = status["step"]
    assert status["state"] == "stopped" and (run / "checkpoints" / f"step_{step:06d}").is_dir()
    assert f"stopped at step {step} with a checkpoint; continue with: archsmith train " in stderr
    hint = stderr.split("continue with: ", 1)[1].strip()
    assert hint.endswith("--resume") and hint.count("--steps") == 1 and "stopped by SIGINT" in " ".join(stdout.split())
    report = (run / "report.md").read_text()
    assert report.count("--resume --steps N") == 1 and report.split("Continue this run")[1].count("--steps") == 1
    planned = json.loads((run / "summary.json").read_text())["plan"]  # the step's planned peak, beside what a GPU measures
    assert f"Planned peak of one step on one device: **{human_bytes(planned['peak_bytes'])}**" in report
    assert "Not measured: the allocator's peaks are CUDA figures and this run used cpu." in report
    resumed = subprocess.run(["bash", "-c", hint.replace("archsmith train", f"{Path(sys.executable).parent}/archsmith train", 1)
                              .replace("--steps 100000", f"--steps {step + 1}")], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    assert f"all {step + 1} steps done" in " ".join(resumed.stdout.split())


KILL_DURING_THIRD_CHECKPOINT = """
import os, signal, sys
from archsmith.train import checkpoint
write = checkpoint._save_pt
def dying_write(obj, path):
    held = os.path.basename(os.path.realpath(path.parent))  # the checkpoint is written through its held directory
    if path.name == "trainer.pt" and held == ".step_000006.tmp":  # the model files of step 6 are on disk
        os.kill(os.getpid(), signal.SIGKILL)
    write(obj, path)
checkpoint._save_pt = dying_write
from archsmith.cli import app
app(["train", *sys.argv[1:]])
"""


def tensorboard_scalars(run: Path) -> dict[str, dict[int, float]]:
    """tag -> {step: value} from RUN/tensorboard's event files (TFRecords of Event protos), oldest file first; a
    session restart at step s (a resumed run's purge) drops what earlier files logged from s on, as TensorBoard does."""
    import struct

    from tensorboardX.proto.event_pb2 import Event, SessionLog

    out: dict[str, dict[int, float]] = {}
    for file in sorted((run / "tensorboard").glob("events.out.tfevents.*"), key=lambda f: (f.stat().st_mtime, f.name)):
        data, at = file.read_bytes(), 0
        while at < len(data):
            (size,) = struct.unpack("<Q", data[at:at + 8])
            event = Event.FromString(data[at + 12:at + 12 + size])  # after the length and its CRC
            at += 12 + size + 4
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                out = {tag: {s: v for s, v in steps.items() if s < event.step} for tag, steps in out.items()}
            for value in event.summary.value:
                out.setdefault(value.tag, {})[event.step] = value.simple_value
    return out


def test_killed_run_resumes_bitwise(tmp_path, tiny_lm):
    args = [*common(tiny_lm), "--steps", 8, "--save-every", 2, "--keep", 3, "--eval-fraction", 0, "--deterministic",
            "--tensorboard"]
    cli("train", *args, "--out", tmp_path / "whole")
    killed = subprocess.run([sys.executable, "-c", KILL_DURING_THIRD_CHECKPOINT, *map(str, args), "--out", tmp_path / "cut"],
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    ckpts = tmp_path / "cut" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == [".step_000006.tmp", "step_000002", "step_000004"]  # 6 died half-written
    assert max(losses(tmp_path / "cut")) == 6  # it had logged step 6 when it died
    cli("train", *args, "--out", tmp_path / "cut", "--resume")
    whole, resumed = losses(tmp_path / "whole"), losses(tmp_path / "cut")
    assert sorted(resumed) == list(range(1, 9))  # step 5 and 6, logged twice, appear once
    assert all(resumed[s] == whole[s] for s in range(5, 9)), (whole, resumed)  # bitwise, every step after the checkpoint
    assert whole[8] < whole[1]
    a, b = weights(tmp_path / "whole" / "final"), weights(tmp_path / "cut" / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_000004", "step_000006", "step_000008"]  # the newest 3 kept
    board = tensorboard_scalars(tmp_path / "whole")  # the same numbers as metrics.jsonl, as float32 scalars
    assert board["train/loss"] == pytest.approx(whole, rel=1e-6) and set(board["train/lr"]) == set(whole)
    again = tensorboard_scalars(tmp_path / "cut")["train/loss"]  # the resumed steps' own values
    assert {s: again[s] for s in range(5, 9)} == pytest.approx({s: resumed[s] for s in range(5, 9)}, rel=1e-6)


# ---- distributed --------------------------------------------------------------------------------

DIST = ["--steps", 6, "--micro-batch", 2, "--save-every", 3]  # one process: 4 micro-steps of 2; two: 2 each


@pytest.fixture(scope="module")
def single(tmp_path_factory, tiny_lm) -> Path:
    out = tmp_path_factory.mktemp("single") / "run"
    cli("train", *common(tiny_lm), *DIST, "--out", out)
    return out


@pytest.fixture(scope="module")
def fsdp(tmp_path_factory, tiny_lm) -> Path:
    """`archsmith train --nproc 2 --strategy fsdp`: tokenizes, then starts torchrun."""
    out = tmp_path_factory.mktemp("fsdp") / "run"
    cli("train", *common(tiny_lm), *DIST, "--out", out, "--nproc", 2, "--strategy", "fsdp")
    return out


@pytest.fixture(scope="module")
def ddp(tmp_path_factory, tiny_lm) -> Path:
    """torchrun started by hand, as on a GPU node: rank 0 tokenizes while rank 1 waits."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "archsmith.train",
                             *map(str, [*common(tiny_lm), *DIST, "--out", out, "--strategy", "ddp"])],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "GLOO_SOCKET_IFNAME": "lo"})
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one(request, single, strategy):
    out = request.getfixturevalue(strategy)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["world"], summary["strategy"], summary["layout"], summary["accumulation"]) == (2, strategy, strategy, 2)
    one, two = losses(single), losses(out)
    assert sorted(two) == list(range(1, 7))
    assert max(abs(one[s] - two[s]) for s in one) <= 1e-5, (one, two)
    assert one[6] < one[1]
    a, b = weights(single / "final"), weights(out / "final")  # FSDP: the consolidated export
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    assert (out / "checkpoints" / "step_000006" / ("dcp" if strategy == "fsdp" else "model")).is_dir()
    assert {"rng_rank0.pt", "rng_rank1.pt"} <= {p.name for p in (out / "checkpoints" / "step_000006").iterdir()}


def test_fsdp_resumes_from_sharded_checkpoints(tmp_path, tiny_lm, single, fsdp):
    """Two more steps from the sharded (torch.distributed.checkpoint) state equal two more steps of one process."""
    import shutil

    more = [*common(tiny_lm), *DIST, "--steps", 8, "--resume"]  # the later --steps wins
    shutil.copytree(single, tmp_path / "one")
    shutil.copytree(fsdp, tmp_path / "two")
    cli("train", *more, "--out", tmp_path / "one")
    cli("train", *more, "--out", tmp_path / "two", "--nproc", 2, "--strategy", "fsdp")
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(two) == list(range(1, 9)) and max(abs(one[s] - two[s]) for s in (7, 8)) <= 1e-5, (one, two)


# ---- bad input ----------------------------------------------------------------------------------

def test_bad_input_is_one_line_and_writes_nothing(tmp_path, tiny_lm):
    from typer.testing import CliRunner

    from archsmith.cli import app

    base = [tiny_lm["model"], "--data", tiny_lm["corpus"], "--steps", 2, "--batch", 2, "--seq", 32, "--eval-samples", 4,
            "--no-progress"]

    def refused(*args, field: str) -> str:
        result = CliRunner().invoke(app, ["train", *map(str, args)])
        assert result.exit_code == 2 and result.stdout == "", result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {field}:"), result.stderr
        return lines[0]

    (tmp_path / "blank.txt").write_text("\n \n\n")
    refused(*[tiny_lm["model"], "--data", tmp_path / "blank.txt", "--out", tmp_path / "e"], field="data")
    assert not (tmp_path / "e").exists()
    small = tmp_path / "small"
    small.mkdir()
    cfg = json.loads((tiny_lm["model"] / "config.json").read_text())
    (small / "config.json").write_text(json.dumps({**cfg, "vocab_size": 256}))
    assert "400 tokens" in refused(small, "--tokenizer", tiny_lm["tokenizer"], *base[1:], "--out", tmp_path / "v", field="vocab_size")
    assert not (tmp_path / "v").exists()
    refused(*base, "--out", tmp_path / "r", "--resume", field="resume")
    refused(*base, "--seq", 1000, "--out", tmp_path / "s", field="seq")
    refused(*base, "--batch", 3, "--micro-batch", 2, "--out", tmp_path / "b", field="micro_batch")
    refused(*base, "--schedule", "step", "--out", tmp_path / "c", field="schedule")
    assert not any((tmp_path / name).exists() for name in "rsbc")
    assert CliRunner().invoke(app, ["train", *map(str, base), "--out", str(tmp_path / "done")]).exit_code == 0
    before = {p: p.read_bytes() for p in (tmp_path / "done").rglob("*") if p.is_file()}
    refused(*base, "--out", tmp_path / "done", field="out")  # holds another run
    refused(*base, "--out", tmp_path / "done", "--resume", "--lr", "0.1", field="lr")  # settings differ from the run's
    assert before == {p: p.read_bytes() for p in (tmp_path / "done").rglob("*") if p.is_file()}
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    refused(*base, "--out", tmp_path / "other", field="out")


# ---- pieces -------------------------------------------------------------------------------------

def test_schedules():
    steps, warmup = 100, 10
    for schedule in ("cosine", "linear", "wsd"):
        f = [lr_factor(s, steps, warmup, schedule, 0.1, 0.2) for s in range(steps)]
        assert f[:warmup] == [(s + 1) / warmup for s in range(warmup)]  # linear warmup to the peak
        assert f[-1] == pytest.approx(0.1) and min(f) >= 0.1 - 1e-12  # ends at min_lr_ratio, never below
        assert all(a >= b - 1e-12 for a, b in zip(f[warmup:], f[warmup + 1:]))  # never rises after warmup
    wsd = [lr_factor(s, steps, warmup, "wsd", 0.1, 0.2) for s in range(steps)]
    assert set(wsd[warmup:80]) == {1.0} and wsd[80] < 1.0  # stable, then the last 20% decays


def test_no_weight_decay_on_norms_biases_embeddings():
    from archsmith.network import CausalLM
    from archsmith.spec import ArchitectureSpec
    from conftest import TINY_LM

    model = CausalLM.from_spec(ArchitectureSpec(**{**TINY_LM, "qkv_bias": True}))
    decay, plain = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in plain["params"]} == {n for n, p in model.named_parameters()
                                                        if "norm" in n or n.endswith("bias") or "embed_tokens" in n}
    assert all(p.ndim == 2 and "embed" not in names[id(p)] for p in decay["params"])
    assert len(decay["params"]) + len(plain["params"]) == len(list(model.parameters()))  # the tied lm_head once


# ---- the loop as a library: any module, extra trainable modules, hooks (what distillation builds on) ---

def bert_setup(steps: int, crash_at: int | None = None):
    """A tiny BERT student (dropout on), an extra projection to a frozen 'teacher' width, and an objective mixing
    the task loss with a hidden-state MSE through the projection."""
    from torch import nn
    from torch.nn import functional as F
    from transformers import BertConfig, BertForMaskedLM

    from archsmith.train.loop import TrainConfig

    torch.manual_seed(0)
    student = BertForMaskedLM(BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=64, max_position_embeddings=32))
    proj, teacher = nn.Linear(32, 48), nn.Embedding(96, 48).requires_grad_(False)
    samples = torch.randint(0, 96, (40, 16), generator=torch.Generator().manual_seed(1))
    calls = {"train": 0}

    def objective(modules, batch):
        if modules.training:
            calls["train"] += 1
            if calls["train"] == crash_at:
                raise RuntimeError("power cut")
        out = modules.model(input_ids=batch["input_ids"], labels=batch["labels"], output_hidden_states=True)
        mse = F.mse_loss(modules.proj(out.hidden_states[-1]), teacher(batch["input_ids"]))
        return out.loss + mse, {"nll": out.loss.detach(), "mse": mse.detach()}

    def collate(rows):
        x = torch.stack(rows)
        return {"input_ids": x, "labels": x}

    config = TrainConfig(steps=steps, global_batch=4, micro_batch=2, lr=1e-2, save_every=2, eval_every=2, eval_samples=8,
                         progress=False)
    return student, proj, objective, list(samples[:32]), list(samples[32:]), collate, config


def test_loop_trains_any_module_with_extra_modules(tmp_path):
    from transformers import AutoModelForMaskedLM

    from archsmith.train.loop import Trainer

    def fit(out, steps, crash_at=None, resume=False):
        student, proj, objective, train, held, collate, config = bert_setup(steps, crash_at)
        Trainer(student, objective, train, collate, out, config, eval_data=held, extra={"proj": proj}).fit(resume=resume)
        return student, proj

    student, proj = fit(tmp_path / "whole", 8)
    with pytest.raises(RuntimeError, match="power cut"):
        fit(tmp_path / "cut", 8, crash_at=13)  # micro-step 13: inside step 7, after the step-6 checkpoint
    assert json.loads((tmp_path / "cut" / "status.json").read_text())["state"] == "failed"
    fit(tmp_path / "cut", 8, resume=True)
    whole, cut = (without_timing(read_metrics(tmp_path / name)) for name in ("whole", "cut"))
    assert whole == cut  # dropout included: the RNG states came back with the checkpoint
    train_rows = [r for r in whole if r["kind"] == "train"]
    assert len(train_rows) == 8 and {"mse", "nll", "grad_norm"} <= set(train_rows[0])
    assert train_rows[-1]["mse"] < train_rows[0]["mse"]  # the projection and the student learned
    assert all("perplexity" in r for r in whole if r["kind"] == "eval")
    step = tmp_path / "whole" / "checkpoints" / "step_000008"
    saved_proj = weights_from(step / "extra.safetensors")
    assert set(saved_proj) == {"proj.weight", "proj.bias"} and torch.equal(saved_proj["proj.weight"], proj.weight)
    reloaded = AutoModelForMaskedLM.from_pretrained(tmp_path / "whole" / "final")  # transformers' own save_pretrained
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), student.state_dict().values()))


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "elapsed_s")} for r in rows]


def weights_from(file: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(file))


def test_early_stopping(tmp_path):
    from archsmith.network import CausalLM
    from archsmith.spec import ArchitectureSpec
    from archsmith.train.data import lm_batch, split_windows
    from archsmith.train.loop import TrainConfig, Trainer
    from archsmith.train.run import causal_lm_objective
    from conftest import TINY_LM

    tokens = torch.randint(0, 512, (4096,), generator=torch.Generator().manual_seed(0)).numpy()
    train, held = split_windows(tokens, 32, 0.1)
    config = TrainConfig(steps=50, global_batch=2, lr=1e-9, eval_every=2, patience=2, min_delta=0.1, progress=False)
    model = CausalLM.from_spec(ArchitectureSpec(**TINY_LM))
    summary = Trainer(model, causal_lm_objective, train, lambda w: lm_batch(w, 0, 2), tmp_path, config, eval_data=held).fit()
    # evaluations at 2 (the best), 4 and 6 (no gain of 0.1 at this learning rate): stop after two without one
    assert summary["steps"] == 6 and summary["stop_reason"].startswith("early stop")
    assert [e["step"] for e in summary["evals"]] == [0, 2, 4, 6]
    assert (tmp_path / "checkpoints" / "step_000006").is_dir() and (tmp_path / "final" / "config.json").is_file()


# ---- the MCP tools: tokenizer, a background run, its status, a graceful stop --------------------

def test_mcp_tools_train_in_the_background(tmp_path, tiny_lm):
    import shutil
    import time

    import anyio
    from mcp import Client

    from archsmith.mcp_server.server import build_server

    shutil.copy(tiny_lm["corpus"], tmp_path / "stories.txt")
    (tmp_path / "model").mkdir()
    shutil.copy(tiny_lm["model"] / "config.json", tmp_path / "model" / "config.json")
    pids = []

    async def call(client, name, args):
        result = await client.call_tool(name, args)
        assert not result.is_error, result.content[0].text
        return result.structured_content

    async def wait_for(client, condition, seconds=240):
        deadline = time.monotonic() + seconds
        while True:
            status = await call(client, "training_status", {"out_dir": "run", "rows": 50})
            if condition(status):
                return status
            assert time.monotonic() < deadline and status["state"] not in ("failed", "died"), status
            await anyio.sleep(0.2)  # polling the run's files: it is another process

    async def main():
        async with Client(build_server(tmp_path)) as client:
            report = await call(client, "train_tokenizer", {"corpus": ["stories.txt"], "out_dir": "tok", "vocab": 400})
            assert report["vocab_size"] == 400 and report["files"][0] == "tok/tokenizer.json"
            args = {"model_dir": "model", "tokenizer_dir": "tok", "data": ["stories.txt"], "out_dir": "run", "steps": 100000,
                    "batch": 2, "seq": 32, "save_every": 100000, "eval_samples": 4}
            started = await call(client, "start_training", args)
            pids.append(started["pid"])
            assert started["run_dir"] == "run"
            await wait_for(client, lambda s: s["step"] >= 3)
            await call(client, "stop_training", {"out_dir": "run"})
            stopped = await wait_for(client, lambda s: s["state"] == "stopped" and not s["alive"])
            n = stopped["step"]
            assert stopped["checkpoints"] == [f"step_{n:06d}"]  # saved where it stopped
            assert [r["step"] for r in stopped["last"]] == list(range(max(1, n - 49), n + 1))
            assert stopped["last_eval"]["step"] == n  # it evaluated before it saved
            again = await client.call_tool("start_training", args)
            assert again.is_error and "holds another run" in again.content[0].text
            bad = await client.call_tool("start_training", {**args, "out_dir": "run2", "resume": True})
            assert bad.is_error and "no complete checkpoint" in bad.content[0].text and not (tmp_path / "run2").exists()

    try:
        anyio.run(main)
    finally:
        for pid in pids:  # never leave a run behind, whatever failed
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file() and (tmp_path / "run" / "report.md").is_file()


# ---- the capacity plan's launch command ---------------------------------------------------------

@pytest.mark.parametrize("params, gpus, strategy, nodes", [("1B", 8, "ddp", 1), ("7B", 16, "fsdp", 2), ("125M", 1, "single", 1)])
def test_capacity_plan_prints_the_launch_command(tmp_path, params, gpus, strategy, nodes):
    import math
    import re
    import shlex

    import typer

    from archsmith.cli import app
    from archsmith.design import design_from_text
    from archsmith.report import render_design

    result = design_from_text(params=params, gpus=gpus)
    plan = render_design(result, "runs/x")["capacity_plan.md"]
    section = plan.split("## Launch", 1)[1]
    assert f"Strategy: **{strategy}**" in section
    command = shlex.split(re.search(r"```bash\n(.*?)\n```", section, re.S).group(1).replace("$MASTER_ADDR", "node0"))
    if strategy == "single":
        assert command[:2] == ["archsmith", "train"]
        args = command[2:]
    else:
        assert command[0] == "torchrun" and command[command.index("--nproc_per_node") + 1] == str(gpus // nodes)
        assert ("--nnodes" in command) == (nodes > 1) and ("--standalone" in command) == (nodes == 1)
        args = command[command.index("archsmith.train") + 1:]
        assert args[args.index("--strategy") + 1] == strategy
    ctx = typer.main.get_command(app).commands["train"].make_context("train", list(args))  # the train CLI accepts them
    p = ctx.params
    rec, setup, recipe = result["recommended"], result["training"], result["recipe"]
    assert p["model"] == "runs/x" and p["seq"] == setup["seq"] and p["batch"] == gpus * p["micro_batch"] * recipe["grad_accum"]
    assert p["micro_batch"] == setup["micro_batch"] and (p["lr"], p["warmup"]) == (recipe["lr"], recipe["warmup_steps"])
    assert p["steps"] == math.ceil(rec.summary["train_tokens"] / (p["batch"] * p["seq"]))  # the plan's tokens
    assert p["checkpointing"] == setup["checkpointing"]  # what the capacity plan sized, not a second choice
    assert (strategy == "ddp") == (setup["strategy"] == "ddp") or gpus == 1


# ---- options: precision, activation checkpointing, document masking, schedules ------------------

def test_training_options(tmp_path, tiny_lm):
    base = [*common(tiny_lm), "--steps", 3, "--eval-fraction", 0, "--save-every", 0, "--json"]

    def train(name: str, *extra) -> tuple[dict, dict[int, float]]:
        summary = json.loads(cli("train", *base, *extra, "--out", tmp_path / name))
        return summary, losses(tmp_path / name)

    fp32, reference = train("fp32")
    assert fp32["precision"] == "float32"
    _, ckpt = train("checkpointing", "--checkpointing")
    assert max(abs(ckpt[s] - reference[s]) for s in reference) < 1e-5  # recomputation changes memory, not results
    for precision in ("bf16", "fp16"):  # autocast on the CPU; fp16 with a grad scaler
        summary, low = train(precision, "--precision", precision)
        assert summary["precision"] == {"bf16": "bfloat16", "fp16": "float16"}[precision]
        assert abs(low[1] - reference[1]) < 0.05 and all(v == v for v in low.values())  # close, finite
        assert weights(tmp_path / precision / "final")["model.embed_tokens.weight"].dtype == torch.float32  # fp32 master weights
    _, masked = train("mask", "--document-mask")
    assert masked[1] != reference[1] and abs(masked[1] - reference[1]) < 0.5  # other attention, same task
    _, wsd = train("wsd", "--schedule", "wsd", "--warmup", 1)
    lrs = [r["lr"] for r in read_metrics(tmp_path / "wsd")]
    assert lrs[0] == lrs[1] == 3e-3 and lrs[2] < 3e-3  # warmup 1, stable, then the decay


@pytest.mark.slow
def test_compiled_blocks_train_like_eager(tmp_path, tiny_lm):
    base = [*common(tiny_lm), "--steps", 3, "--eval-fraction", 0, "--save-every", 0]
    cli("train", *base, "--out", tmp_path / "eager")
    cli("train", *base, "--compile", "--out", tmp_path / "compiled")
    eager, compiled = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert max(abs(eager[s] - compiled[s]) for s in eager) < 1e-4

"""The training recipe of a design (DeepSeek LLM's batch-size and learning-rate fits, micro-batch x accumulation x GPUs,
warmup and decay, the launch command) and data-constrained sizing (Muennighoff et al. 2023), against the formulas
written out here, and the recipe's command run on two processes."""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from archsmith import scaling
from archsmith.cli import app
from archsmith.design import design_from_text, summary
from archsmith.spec import ArchitectureSpec

from test_train import losses


def design_json(*args) -> dict:
    result = CliRunner().invoke(app, ["design", *map(str, args), "--json"])
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout)


def three_digits(x: float) -> float:
    return float(f"{x:.3g}")


# ---- the fits, by hand ------------------------------------------------------------------------------------

def test_batch_and_learning_rate_fits_by_hand():
    for c in (1e17, 7.2e20, 3e23):
        fit = scaling.batch_and_lr(c)
        assert fit["batch_tokens"] == pytest.approx(0.2920 * c**0.3271, rel=1e-12)
        assert fit["lr"] == three_digits(0.3118 * c**-0.1250) and not fit["lr_clamped"]
    big = scaling.batch_and_lr(1e27)  # B_opt ~ 2e8 tokens: beyond any published batch
    assert big["batch_tokens_fit"] > 2**24 and big["batch_tokens"] == 2**24 and big["batch_clamped"]
    tiny = scaling.batch_and_lr(1e10)  # eta_opt ~ 0.018: clamped to the range small decoders train in
    assert tiny["lr_fit"] == pytest.approx(0.3118 * 1e10**-0.125) and tiny["lr"] == 3e-3 and tiny["lr_clamped"]
    assert [scaling.warmup_steps(n) for n in (10, 400, 30_000, 10**6)] == [0, 20, 1500, 2000]  # 5%, at most 2000


def test_non_embedding_flops_per_token_by_hand():
    """DeepSeek LLM's M: 6 x the layers' matmul weights + causal attention, 6 x layers x heads x head_dim x (seq + 1)."""
    spec = ArchitectureSpec(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, ffn_size=128, vocab_size=512,
                            context_length=256)
    h, layers, heads, kv, hd, ffn, seq = 64, 2, 4, 2, spec.head_dim, 128, 128
    per_layer = 2 * h * heads * hd + 2 * h * kv * hd + 3 * h * ffn  # q, o; k, v; gate, up, down
    assert scaling.non_embedding_flops(spec, seq) == 6 * layers * per_layer + 6 * layers * heads * hd * (seq + 1)


# ---- the recipe of a 2B design on 8 GPUs ------------------------------------------------------------------

def test_2b_capacity_plan_states_the_recipe(tmp_path):
    import typer

    data = design_json("--params", "2B", "--tokens", "60B", "--gpus", 8, "--out", tmp_path / "d")
    r, setup = data["recipe"], data["training"]
    assert {"tokens_per_step", "micro_batch", "grad_accum", "gpus", "seq", "steps", "lr", "warmup_steps", "launch"} <= set(r)
    assert r["micro_batch"] * r["grad_accum"] * r["gpus"] * r["seq"] == r["tokens_per_step"] and r["data_parallel"] == 8
    assert (r["micro_batch"], r["gpus"], r["seq"]) == (setup["micro_batch"], 8, setup["seq"])  # the memory plan's split
    spec = ArchitectureSpec.from_dict(data["candidates"][0]["spec"])
    m = scaling.non_embedding_flops(spec, r["seq"])
    asked = 0.2920 * (m * 60e9) ** 0.3271  # B_opt in tokens
    assert r["grad_accum"] == round(asked / (r["micro_batch"] * 8 * r["seq"])) > 1
    assert r["steps"] == math.ceil(60e9 / r["tokens_per_step"])
    assert r["lr"] == three_digits(0.3118 * (m * r["steps"] * r["tokens_per_step"]) ** -0.125)
    assert r["warmup_steps"] == min(2000, r["steps"] // 20)
    plan = (tmp_path / "d" / "capacity_plan.md").read_text()
    assert f"| tokens per step | **{r['tokens_per_step']:,}** |" in plan and "DeepSeek LLM" in plan
    assert f"| gradient accumulation per GPU | {r['grad_accum']} micro-batches of {r['micro_batch']} |" in plan
    assert f"| peak learning rate | {r['lr']:g} |" in plan and f"| warmup | {r['warmup_steps']:,} steps, linear |" in plan
    assert f"```bash\n{r['launch']}\n```" in plan
    command = shlex.split(r["launch"])
    assert command[:2] == ["torchrun", "--standalone"] and command[command.index("--nproc_per_node") + 1] == "8"
    args = command[command.index("archsmith.train") + 1:]
    p = typer.main.get_command(app).commands["train"].make_context("train", list(args)).params  # train takes every flag
    assert (p["batch"] * p["seq"], p["micro_batch"], p["steps"]) == (r["tokens_per_step"], r["micro_batch"], r["steps"])
    assert (p["lr"], p["warmup"], p["schedule"], p["min_lr_ratio"]) == (r["lr"], r["warmup_steps"], "cosine", 0.1)
    assert len(args) == len(set(a for a in args if a.startswith("--"))) * 2 + 1  # every flag once, with its value


def test_given_global_batch_is_rounded_and_said_so():
    result = design_from_text(params="125M", gpus=4, seq=1024, global_batch=str(7 * 1024))
    r = result["recipe"]  # 7 sequences do not split over 4 GPUs: 2 accumulation steps of 1 on each, 8 sequences
    assert (r["tokens_per_step"], r["grad_accum"]) == (8 * 1024, 2) and "rounded to whole accumulation steps" in r["words"][0]


def test_train_defaults_for_a_design_follow_the_recipe(tmp_path, tiny_lm):
    """`archsmith train DESIGN` without --lr / --warmup takes the recipe's learning rate and warmup for the same run;
    explicit flags are kept; weights to continue from keep 3e-4."""
    import shutil

    from archsmith.train.run import CONTINUE_LR, RunArgs

    design = tmp_path / "d"
    data = design_json("--params", "1M", "--tokenizer", tiny_lm["tokenizer"], "--gpus", 2, "--context", 128, "--out", design)
    r = data["recipe"]
    base = dict(model=str(design), data=[str(tiny_lm["corpus"])], out=str(tmp_path / "run"), steps=r["steps"],
                batch=r["sequences_per_step"], seq=r["seq"])
    resolved = RunArgs(**base).resolved()
    assert (resolved.lr, resolved.warmup) == (r["lr"], r["warmup_steps"])
    assert (RunArgs(**base, lr=1e-3, warmup=7).resolved().lr, RunArgs(**base, lr=1e-3, warmup=7).resolved().warmup) == (1e-3, 7)
    shutil.copytree(design, tmp_path / "weights")
    (tmp_path / "weights" / "model.safetensors").write_bytes(b"")
    assert RunArgs(**{**base, "model": str(tmp_path / "weights")}).resolved().lr == CONTINUE_LR


def test_recipe_launch_runs_on_two_processes(tmp_path, tiny_lm):
    """The recipe's torchrun command of a tiny 2-GPU design, run as printed on 2 CPU processes; only --data, --out,
    --steps and --warmup take other values (a global batch of 4 sequences: 2 accumulation steps per process)."""
    design = tmp_path / "d"
    data = design_json("--params", "1M", "--tokenizer", tiny_lm["tokenizer"], "--gpus", 2, "--context", 128,
                       "--global-batch", 4 * 128, "--out", design)
    r = data["recipe"]
    assert (r["micro_batch"], r["grad_accum"], r["gpus"], r["seq"], r["tokens_per_step"]) == (1, 2, 2, 128, 512)
    command = shlex.split(r["launch"])
    assert command[:2] == ["torchrun", "--standalone"]
    values = {"--data": str(tiny_lm["corpus"]), "--out": str(tmp_path / "run"), "--steps": "2", "--warmup": "1"}
    for flag, value in values.items():
        command[command.index(flag) + 1] = value
    command[0] = str(Path(sys.executable).with_name("torchrun"))
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*command, "--no-progress"], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    summary_ = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary_["world"], summary_["accumulation"], summary_["strategy"]) == (2, 2, "ddp")
    from archsmith.train.metrics import read_metrics

    lrs = [row["lr"] for row in read_metrics(tmp_path / "run") if row["kind"] == "train"]
    assert lrs[0] == r["lr"] and lrs[1] == pytest.approx(r["lr"] * r["min_lr_ratio"])  # peak after 1 warmup step, decayed
    assert sorted(losses(tmp_path / "run")) == [1, 2]


# ---- data-constrained sizing ------------------------------------------------------------------------------

def test_muennighoff_formulas_by_hand():
    u = 20e9
    for d in (10e9, 20e9, 80e9, 400e9):
        r = d / u - 1
        expected = d if d <= u else u + u * 15.4 * (1 - math.exp(-r / 15.4))
        assert scaling.effective_tokens(d, u) == pytest.approx(expected, rel=1e-12)
    for n in (0.5e9, 1e9, 3e9, 10e9):
        base = min(n, u / 20)
        expected = base + base * 5.3 * (1 - math.exp(-(n / base - 1) / 5.3))
        assert scaling.effective_params(n, u) == pytest.approx(expected, rel=1e-12)
    assert 0 < 1 - scaling.effective_tokens(4 * u, u) / (4 * u) < 0.1 < 0.5 < 1 - scaling.effective_tokens(40 * u, u) / (40 * u)
    e, a, b, alpha, beta = 1.82, 482.01, 2085.43, 0.3478, 0.3658  # Epoch AI's Chinchilla refit, the base loss
    n, d = 3e9, 75e9
    n_eff, d_eff = scaling.effective_params(n, u), scaling.effective_tokens(d, u)
    assert scaling.data_constrained_loss(n, d, u) == pytest.approx(e + a / n_eff**alpha + b / d_eff**beta, rel=1e-12)


def test_data_constrained_optimum_minimises_the_loss():
    c, u = 1.2e21, 20e9
    opt = scaling.data_constrained_optimum(c, u)
    assert 6 * opt["params"] * opt["tokens"] == pytest.approx(c) and opt["epochs"] == pytest.approx(opt["tokens"] / u)

    def loss(n: float) -> float:
        return scaling.data_constrained_loss(n, c / (6 * n), u)

    assert all(opt["loss"] <= loss(opt["params"] * f) for f in (0.9, 0.99, 1.01, 1.1))
    free = scaling.data_constrained_optimum(c, 1e15)  # data never repeats: the base fit's own optimum
    assert free["params"] == pytest.approx(scaling.optimal_for_compute(c, "epoch")["params"], rel=1e-3)


def test_compute_with_20b_tokens(tmp_path):
    """The finding: --compute 1.2e21 with 20B tokens sized 3.2B parameters for 20B tokens and said nothing. As --tokens
    it now warns; as --unique-tokens the data-constrained law sizes the model and states the epochs."""
    given = summary(design_from_text(compute="1.2e21", tokens="20B"))  # what --json prints
    n = given["candidates"][0]["params"]
    warning = next(w for w in given["warnings"] if "disagree" in w)
    assert f"{20e9 / n:.1f} tokens per parameter" in warning and f"{6 * n * 20e9 / 1.2e21:.0%} of the budget" in warning
    assert "--unique-tokens" in warning
    runner = CliRunner()
    done = runner.invoke(app, ["design", "--compute", "1.2e21", "--unique-tokens", "20B", "--out", str(tmp_path / "u")])
    assert done.exit_code == 0, done.output
    text = " ".join(done.stdout.split())
    data = summary(design_from_text(compute="1.2e21", unique_tokens="20B"))
    opt = scaling.data_constrained_optimum(1.2e21, 20e9)
    dc, params = data["data_constrained"], data["candidates"][0]["params"]
    assert params == pytest.approx(opt["params"], rel=0.02) and data["candidates"][0]["train_tokens"] == int(opt["tokens"])
    assert dc["epochs"] == pytest.approx(opt["tokens"] / 20e9, rel=1e-6) and 1 < dc["epochs"] < 4
    assert dc["tokens_lost"] == pytest.approx(dc["tokens"] - scaling.effective_tokens(dc["tokens"], 20e9))
    assert not any("disagree" in w for w in data["warnings"]) and "data-constrained law" in data["rationale"][1]
    assert f"{dc['epochs']:.2f} epochs" in text and f"{dc['tokens_lost_fraction']:.1%} lost to repetition" in text
    plan = (tmp_path / "u" / "capacity_plan.md").read_text()
    assert "## Data" in plan and f"{dc['epochs']:.2f} epochs" in plan


def test_repetition_past_four_epochs_warns_in_json_terminal_and_mcp(tmp_path):
    import anyio
    from mcp import Client

    from archsmith.mcp_server.server import build_server

    args = {"params": "100M", "unique_tokens": "200M"}  # Chinchilla's 2B tokens: 10 epochs
    data = summary(design_from_text(**args))
    epochs = data["data_constrained"]["epochs"]
    assert 9 < epochs < 11 and any(w.startswith(f"{epochs:.1f} epochs of 200M unique tokens") for w in data["warnings"])
    done = CliRunner().invoke(app, ["design", "--params", "100M", "--unique-tokens", "200M", "--out", str(tmp_path / "t")])
    assert f"warning: {epochs:.1f} epochs" in " ".join(done.stderr.split())

    async def main():
        async with Client(build_server(tmp_path)) as client:
            answer = await client.call_tool("design_architecture", args)
            assert not answer.is_error, answer.content
            same = json.loads(json.dumps(data))
            assert all(answer.structured_content[k] == same[k] for k in ("recipe", "data_constrained", "warnings", "candidates"))
            bad = await client.call_tool("design_architecture", {"params": "1B", "unique_tokens": "1e3"})
            assert bad.is_error and "unique_tokens: must be" in bad.content[0].text, bad.content

    anyio.run(main)

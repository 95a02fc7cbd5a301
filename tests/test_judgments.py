"""The smaller judgments of issue 25, one test per finding: the MoE 6N rule of thumb counts active parameters, a tied
output layer holds no parameters of its own in the build tree, generated commands name each flag once, a heavy tool
stops at its time limit, and export finds the user's sibling modules and names the input that breaks dynamic shapes."""

from __future__ import annotations

import re
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

import anyio
import pytest
import torch
from mcp import Client

from archsmith.errors import ArchsmithError
from archsmith.mcp_server.server import build_server
from conftest import TINY_FAMILIES

HERE = Path(__file__).resolve().parent
FACTORIES = HERE / "factories.py"


# ---- the 6N rule of thumb of an MoE counts the parameters a token runs through -------------------------------------

def test_six_n_of_an_moe_counts_active_parameters_not_all_experts():
    from archsmith import estimate
    from archsmith.hfconfig import spec_from_hf

    moe = spec_from_hf({**TINY_FAMILIES["mixtral"], "num_local_experts": 8, "num_experts_per_tok": 2})
    counts, per_token = estimate.count_params(moe), estimate.flops(moe, seq=64)
    active_body = counts["active"] - counts["embedding"] - counts["lm_head"]
    assert counts["active"] < counts["total"]  # 2 of 8 experts run per token
    assert per_token["six_n_per_token"] == 6 * active_body < 6 * counts["non_embedding"]
    dense = spec_from_hf(TINY_FAMILIES["llama"])
    assert estimate.flops(dense, seq=64)["six_n_per_token"] == 6 * estimate.count_params(dense)["non_embedding"]
    # the words say so where the figure is shown and explained
    root = HERE.parent
    template = (root / "templates" / "architecture_report.md.j2").read_text()
    assert re.search(r"6N rule of thumb.*active non-embedding", template)
    for words in ("reading-the-reports.md", "sizing-rules.md"):
        text = (root / "skills" / "model-architect" / "references" / words).read_text()
        assert re.search(r"6N[^.]*\(N: [^)]*active|MoE, N in 6N is the active parameters", text), words


# ---- a tied output layer shows as tied, with no parameters of its own ------------------------------------------------

@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_the_build_tree_counts_a_tied_lm_head_once(tied):
    from archsmith.hfconfig import spec_from_hf
    from archsmith.network import CausalLM, describe

    spec = spec_from_hf({**TINY_FAMILIES["llama"], "tie_word_embeddings": tied})
    built = describe(spec, depth=1)
    rows = {r["name"]: r for r in built["tree"]}
    head, embedding = rows["lm_head"], spec.vocab_size * spec.hidden_size
    assert head["parameters"] == (0 if tied else embedding)
    assert head.get("tied_to") == ({"weight": "model.embed_tokens.weight"} if tied else None)
    assert built["matches_estimate"] and rows["(root)"]["parameters"] == built["parameters"]
    assert rows["model"]["parameters"] + head["parameters"] == built["parameters"]  # the tree adds up to the distinct count
    # analyze's per-module table counts the same way
    from archsmith.analyze import Target, analyze

    model = CausalLM.from_spec(spec)
    ids = torch.randint(0, spec.vocab_size, (1, 8))
    layers = {r["name"]: r for r in analyze(Target(model, (), {"input_ids": ids}, "tiny", "archsmith", meta=True))["layers"]}
    assert layers["lm_head"]["params"] == head["parameters"] and layers["lm_head"].get("tied_to") == head.get("tied_to")
    assert layers["model"]["params"] + layers["lm_head"]["params"] == layers["(root)"]["params"] == model.num_parameters()


# ---- a heavy tool stops at its time limit and says after how long --------------------------------------------------

def test_a_heavy_call_past_its_limit_is_stopped_there(tmp_path, monkeypatch):
    from archsmith import network

    real, calls, ended = network.describe, [], []

    def describe(spec, depth=4):  # the first build spins in Python until something stops it (60 s at most)
        calls.append(1)
        if len(calls) == 1:
            try:
                spins, until = 0, time.monotonic() + 60
                while time.monotonic() < until:
                    spins += 1
                ended.append("ran out its 60 s")
            except BaseException as exc:
                ended.append(type(exc).__name__)
                raise
        return real(spec, depth)

    monkeypatch.setattr(network, "describe", describe)
    server = build_server(tmp_path, per_client=1, timeout_s=2)

    async def main():
        async with Client(server) as client:
            first = await client.call_tool("build_model", {"config": TINY_FAMILIES["llama"]})
            second = await client.call_tool("estimate_config", {"config": TINY_FAMILIES["llama"]})  # the client's one slot
            return first, second

    first, second = anyio.run(main)
    assert re.match(r"timeout: build_model did not finish within 2 s \(timeout after \d+\.\d s\); its work was stopped;",
                    first.content[0].text), first.content[0].text
    assert ended == ["Stopped"]  # interrupted where it stood, not abandoned to run on
    assert not second.is_error and second.structured_content["params"]["total"] > 0, second.content[0].text  # its slot is back


# ---- generated commands name each flag once -------------------------------------------------------------------------

def repeatable_flags() -> set[str]:
    """The options of `archsmith train` meant to be given more than once (--data per corpus path)."""
    import typer

    from archsmith.cli import app

    train = typer.main.get_command(app).commands["train"]
    return {opt for p in train.params if getattr(p, "multiple", False) for opt in p.opts}


def repeated_flags(command: str) -> list[str]:
    """Flags a command line names more than once, counting --flag=value as --flag (torchrun's and archsmith's)."""
    flags = Counter(token.split("=", 1)[0] for token in shlex.split(command) if token.startswith("--"))
    return sorted(f for f, n in flags.items() if n > 1 and f not in repeatable_flags())


def test_generated_commands_name_each_flag_once(tmp_path):
    from archsmith import layouts
    from archsmith.design import layout_launch, training_recipe
    from archsmith.hfconfig import spec_from_hf
    from archsmith.train.parallel import launch_plan
    from archsmith.train.run import RunArgs, resume_command

    commands = []
    for args in (RunArgs(model="m", data=["a.txt", "b.txt"], out="run"),
                 RunArgs(model="m", data=["a.txt"], out="run", steps=50, resume=True, nproc=2, strategy="fsdp",
                         checkpointing=True, progress=False, eval_tasks="hellaswag", warmup=5),
                 RunArgs(model="m", data=["a.txt"], out="run", tp=2, pp=2, pp_schedule="gpipe", seq=128, micro_batch=2)):
        commands += [resume_command(args), resume_command(args, steps="N")]
    assert shlex.split(commands[0]).count("--data") == 2  # a repeatable flag keeps every value
    spec = spec_from_hf({**TINY_FAMILIES["llama"], "hidden_size": 1024, "num_hidden_layers": 16, "num_attention_heads": 16,
                         "num_key_value_heads": 4, "intermediate_size": 2816, "max_position_embeddings": 4096})
    setup = {"strategy": "zero3", "checkpointing": True, "micro_batch": 2, "seq": 2048, "dtype": "bf16", "optimizer": "adamw",
             "fits": True, "strategy_set_by": "auto", "checkpointing_set_by": "auto"}
    for gpus, strategy in ((1, "ddp"), (8, "ddp"), (16, "zero3")):
        run = {**setup, "gpus": gpus, "strategy": strategy}
        commands.append(launch_plan(run, "runs/1b", 10**9)["command"])
        commands.append(launch_plan(run, "runs/1b", 10**9, training_recipe(spec, run, 10**9))["command"])  # + lr, warmup
    plan = layouts.plan(spec, "h100", 16, 4096, global_batch=64 * 4096)
    rows = [r for r in plan["layouts"] if r["pp"] > 1][:2] + [r for r in plan["layouts"] if r["pp"] == 1][:2]
    assert any(r["pp"] > 1 for r in rows)  # a pipeline layout adds --pp-schedule
    commands += [layouts.launch(row, "runs/1b", 10**9)["command"] for row in rows]
    recipe = training_recipe(spec, {**setup, "gpus": 16, "seq": 4096}, 10**9)
    commands.append(layout_launch({"layouts": {**plan, "train_tokens": 10**9}, "recipe": recipe}, "runs/1b")["command"])
    for command in commands:
        assert not repeated_flags(command), f"{command}: {repeated_flags(command)} repeated"
    assert repeated_flags("archsmith train m --steps 5 --resume --steps N") == ["--steps"]  # the check catches a repeat


# ---- export: the factory's sibling modules import; dynamic shapes that break are named, fixed shapes offered ---------

def test_a_factory_imports_the_modules_beside_it(tmp_path):
    from archsmith.analyze import load
    from archsmith.export import export

    for project, scale in (("one", 2.0), ("two", 3.0)):  # two projects, each with its own layers.py
        (tmp_path / project).mkdir()
        (tmp_path / project / "layers.py").write_text(
            f"import torch\n\nclass Scale(torch.nn.Module):\n    def forward(self, x):\n        return x * {scale}\n")
        (tmp_path / project / "model.py").write_text(
            "import torch\nfrom layers import Scale\n\n\ndef build():\n    from layers import Scale as Lazy  # imported when called\n"
            "    return torch.nn.Sequential(torch.nn.Linear(4, 4), Scale(), Lazy()), (torch.randn(2, 4),)\n")
    path = list(sys.path)
    one, two = (load(f"{tmp_path / p / 'model.py'}:build") for p in ("one", "two"))
    assert sys.path == path  # the directory was on it only while the user's code ran
    x = torch.ones(1, 4)
    assert torch.allclose(one.module(x), one.module[0](x) * 4) and torch.allclose(two.module(x), two.module[0](x) * 9)
    report = export(f"{tmp_path / 'one' / 'model.py'}:build", "pt2", tmp_path / "out", repeats=1)
    assert all(r["ok"] for r in report["validation"]) and (tmp_path / "out" / "model.pt2").is_file()


def test_export_names_the_input_whose_dynamic_shape_breaks_it_and_offers_fixed_shapes(tmp_path):
    import onnxruntime as ort
    from typer.testing import CliRunner

    from archsmith.cli import app
    from archsmith.export import export

    with pytest.raises(ArchsmithError) as caught:  # pt2: the same check as ONNX's, at a tenth of the export time
        export(f"{FACTORIES}:graph_readout", "pt2", tmp_path / "dynamic", repeats=1)
    message = str(caught.value)
    assert caught.value.field == "static" and "--static" in message, message
    assert "the dynamic dimensions of input_1 (batch) break it" in message and "input_1 (batch) takes new values" in message
    assert not (tmp_path / "dynamic").exists()  # no wrong file left behind
    result = CliRunner().invoke(app, ["export", f"{FACTORIES}:graph_readout", "--format", "onnx", "--static", "--repeats", "1",
                                      "--out", str(tmp_path / "fixed"), "--json"])
    assert result.exit_code == 0, result.stderr
    session = ort.InferenceSession(str(tmp_path / "fixed" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.shape for i in session.get_inputs()] == [[9, 4], [9]]
    sys.path.insert(0, str(HERE))
    try:
        model, (x, _) = __import__("factories").graph_readout()
    finally:
        sys.path.remove(str(HERE))
    unsorted = torch.tensor([2, 0, 1, 0, 2, 1, 0, 2, 1])
    with torch.no_grad():
        expected = model.eval()(x, unsorted)
    got = session.run(None, {"input_0": x.numpy(), "input_1": unsorted.numpy()})[0]
    assert torch.allclose(torch.from_numpy(got), expected, atol=1e-5)  # right for any order of graph ids

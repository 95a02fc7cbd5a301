"""Hub discovery against a local fake Hub (tests/hubserver.py) with the real huggingface_hub client."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hubserver import FakeHub, Repo, make_index, make_safetensors, safetensors_header, use_fake_hub

from archsmith import hub
from archsmith.errors import ArchsmithError, ConfigError
from archsmith.hfconfig import hf_from_spec
from archsmith.spec import ArchitectureSpec

TINY = ArchitectureSpec(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, ffn_size=128, vocab_size=256, context_length=512)
BIG = ArchitectureSpec(hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=8, ffn_size=14336, vocab_size=128256)


def card(license: str, language: str = "es", **extra) -> bytes:
    meta = {"license": license, "language": [language], **extra}
    body = "\n".join(f"{k}: {json.dumps(v)}" for k, v in meta.items())
    return (f"---\n{body}\n---\n# Model\n\n## Limitations\nTrained on tweets only.\n\n## Bias, Risks\nMay be unfair.\n"
            "\n## Training\nSome details.\n").encode()


def llama_files(spec: ArchitectureSpec, license: str, sharded: bool = False) -> dict:
    from archsmith.estimate import model_tensors

    tensors = {t.name: ("BF16", t.shape) for t in model_tensors(spec)}
    files = {"config.json": json.dumps(hf_from_spec(spec)).encode(), "README.md": card(license),
             "tokenizer_config.json": json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 512,
                                                   "eos_token": "</s>"}).encode()}
    if sharded:
        names = sorted(tensors)
        shards = {f"model-0000{i + 1}-of-00002.safetensors": make_safetensors({n: tensors[n] for n in names[i::2]}, virtual=True)
                  for i in range(2)}
        files.update(shards)
        files["model.safetensors.index.json"] = make_index(shards)
    else:
        files["model.safetensors"] = make_safetensors(tensors, virtual=True)
    return files


def roberta_files(license: str) -> dict:
    h, v = 768, 50265
    tensors = {"roberta.embeddings.word_embeddings.weight": ("F32", (v, h))}
    for i in range(12):
        for leaf in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            tensors[f"roberta.encoder.layer.{i}.{leaf}.weight"] = ("F32", (h, h))
        tensors[f"roberta.encoder.layer.{i}.intermediate.dense.weight"] = ("F32", (3072, h))
        tensors[f"roberta.encoder.layer.{i}.output.dense.weight"] = ("F32", (h, 3072))
        tensors[f"roberta.encoder.layer.{i}.output.LayerNorm.weight"] = ("F32", (h,))
    tensors["classifier.out_proj.weight"] = ("F32", (3, h))
    return {"config.json": json.dumps({"model_type": "roberta", "architectures": ["RobertaForSequenceClassification"]}).encode(),
            "README.md": card(license), "model.safetensors": make_safetensors(tensors, virtual=True)}


def repos() -> list[Repo]:
    cls = {"pipeline_tag": "text-classification", "library_name": "transformers"}
    return [
        Repo("acme/roberta-es-sentiment", {**cls, "downloads": 50_000, "likes": 40}, roberta_files("apache-2.0")),
        Repo("acme/bert-es-sentiment-nc", {**cls, "downloads": 90_000, "likes": 90}, roberta_files("cc-by-nc-4.0")),
        Repo("bigco/llama-es-8b-sentiment", {**cls, "downloads": 70_000, "likes": 10, "gated": "manual"},
             llama_files(BIG, "llama3.1", sharded=True)),
        Repo("acme/tiny-llama-es", {"pipeline_tag": "text-generation", "library_name": "transformers", "downloads": 10, "likes": 1},
             llama_files(TINY, "mit")),
        Repo("acme/odd-es-sentiment", {**cls, "downloads": 5}, {"README.md": card("mit")}),
        Repo("acme/bad-json", {"pipeline_tag": "text-generation", "config": {}}, {"config.json": b"{not json", "README.md": card("mit")}),
    ]


@pytest.fixture
def fake(monkeypatch, tmp_path):
    with FakeHub(repos()) as server:
        use_fake_hub(monkeypatch, tmp_path / "hf", server)
        yield server


def test_search_filters_by_default_and_labels_the_rest(fake):
    result = hub.search(task="text-classification", language="es", license="commercial", gpu="t4", sort="downloads")
    assert [r["id"] for r in result["results"]] == ["acme/roberta-es-sentiment"]  # the only commercial model that fits
    first = result["results"][0]
    assert first["meets_constraints"] and first["reasons"][0] == "meets every constraint" and first["commercial"] == "yes"
    assert first["checked"] == ["task", "language", "license", "gpu"] and first["violated"] == first["unchecked"] == []
    assert first["params"] == 12 * (4 * 768 * 768 + 2 * 3072 * 768 + 768) + 50265 * 768 + 3 * 768
    assert first["memory"]["fits"]["run_fp16"] and first["memory"]["weights_bytes"]["fp16"] == 2 * first["params"]
    assert result["rejected"] == {"count": 3, "violated": {"license": 2, "gpu": 1}, "unchecked": {"gpu": 1}}
    assert result["message"] == ("3 of 4 models rejected (license 2, gpu 1, gpu not checkable 1); "
                                 "include_rejected (--include-rejected) lists them, labelled")
    assert result["constraints"] == ["task", "language", "license", "gpu"] and result["considered"] == 4

    every = hub.search(task="text-classification", language="es", license="commercial", gpu="t4", include_rejected=True)
    ids, rows = [r["id"] for r in every["results"]], {r["id"]: r for r in every["results"]}
    assert ids[0] == "acme/roberta-es-sentiment" and set(ids) == {"acme/roberta-es-sentiment", "acme/bert-es-sentiment-nc",
                                                                  "bigco/llama-es-8b-sentiment", "acme/odd-es-sentiment"}
    assert [r["meets_constraints"] for r in every["results"]] == [True, False, False, False]
    nc = rows["acme/bert-es-sentiment-nc"]
    assert nc["violated"] == ["license"] and nc["reasons"][0] == "license cc-by-nc-4.0 is not in the allowed list"
    big = rows["bigco/llama-es-8b-sentiment"]
    assert big["violated"] == ["license", "gpu"] and big["params"] == 8_030_261_248 and big["gated"]
    assert not big["memory"]["fits"]["run_fp16"] and big["memory"]["fits"]["run_int4"]
    odd = rows["acme/odd-es-sentiment"]  # no weights, no config: the fit cannot be checked, so it is not met
    assert odd["problems"] and odd["params"] is None and odd["violated"] == [] and odd["unchecked"] == ["gpu"]
    assert odd["reasons"][0] == "gpu not checked: parameter count not known"
    assert fake.full_downloads() == [] and fake.full_downloads(".bin") == []
    assert len(fake.requests) <= 2 * 2 * len(ids) + 2  # two searches


def test_license_allow_list_and_max_params_filter(fake):
    result = hub.search(query="es", license="mit,apache-2.0", max_params=200_000_000)
    assert [r["id"] for r in result["results"]] == ["acme/roberta-es-sentiment", "acme/tiny-llama-es"]
    assert all(r["meets_constraints"] and r["checked"] == ["license", "max_params"] for r in result["results"])
    query = fake.find("GET", "/api/models")[0].query
    assert query["search"] == ["es"] and "safetensors" in query["expand"] and query["sort"] == ["downloads"]
    assert "filter" not in query  # two licenses cannot be one Hub filter: checked here
    fake.clear()
    single = hub.search(query="es", license="apache-2.0")  # one license: the Hub filters on its tag, as its own UI does
    assert [r["id"] for r in single["results"]] == ["acme/roberta-es-sentiment"]
    assert fake.find("GET", "/api/models")[0].query["filter"] == ["license:apache-2.0"]
    nothing = hub.search(query="es", max_params=1000)
    assert nothing["results"] == [] and nothing["rejected"] == {"count": 5, "violated": {"max_params": 4},
                                                                "unchecked": {"max_params": 1}}
    assert nothing["message"].startswith("no model meets every constraint: 5 of 5 models rejected (max_params 4, "
                                         "max_params not checkable 1)")


def test_cli_search_filters_and_labels(fake):
    from typer.testing import CliRunner

    from archsmith.cli import app

    runner = CliRunner()
    found = runner.invoke(app, ["search", "es", "--license", "mit,apache-2.0", "--max-params", "200M", "--json"])
    assert found.exit_code == 0, found.output
    assert [(r["id"], r["meets_constraints"]) for r in json.loads(found.stdout)["results"]] == [
        ("acme/roberta-es-sentiment", True), ("acme/tiny-llama-es", True)]
    every = json.loads(runner.invoke(app, ["search", "es", "--license", "mit,apache-2.0", "--max-params", "200M",
                                           "--include-rejected", "--json"]).stdout)
    assert {r["id"] for r in every["results"] if not r["meets_constraints"]} == {
        "acme/bert-es-sentiment-nc", "bigco/llama-es-8b-sentiment", "acme/odd-es-sentiment"}
    shown = runner.invoke(app, ["search", "es", "--max-params", "200M"])
    assert shown.exit_code == 0 and "2 of 5 models rejected (max_params 1, max_params not checkable 1)" in shown.stdout
    none = runner.invoke(app, ["search", "es", "--max-params", "1000"])
    assert none.exit_code == 0 and "no model meets every constraint: 5 of 5 models rejected" in none.stdout


def test_evaluate_reads_metadata_only(fake):
    report = hub.evaluate("acme/tiny-llama-es", gpu="l4")
    from archsmith.estimate import count_params

    assert report["params"] == count_params(TINY)["total"] and report["params_source"] == "safetensors header"
    assert report["architecture"]["spec"]["hidden_size"] == 64 and report["context_length"] == 512
    assert report["license"] == "mit" and report["commercial"] == "yes" and not report["gated"]
    assert set(report["card_sections"]) == {"Limitations", "Bias, Risks"}
    assert report["tokenizer"]["model_max_length"] == 512 and report["provenance"]["language"] == ["es"]
    assert report["estimate"]["bf16"]["weights_bytes"] == 2 * report["params"]
    assert fake.full_downloads() == []
    downloaded = {r.path.rsplit("/", 1)[-1] for r in fake.find("GET", "/resolve/") if "range" not in r.headers}
    assert downloaded == {"config.json", "tokenizer_config.json", "README.md"}


def test_unsupported_architecture_still_gets_parameters(fake):
    report = hub.evaluate("acme/roberta-es-sentiment")
    assert report["params"] > 100_000_000 and report["architecture"]["spec"] is None
    assert any("'roberta' is not one archsmith reads" in p for p in report["problems"])


def test_errors_are_one_line(fake, monkeypatch):
    with pytest.raises(hub.HubError, match="acme/nope: not found on the Hub"):
        hub.evaluate("acme/nope")
    with pytest.raises(ArchsmithError, match="model_id: must look like"):
        hub.evaluate("../etc/passwd")
    gated = hub.evaluate("bigco/llama-es-8b-sentiment")  # info is public, files need accepted terms
    assert any("is gated" in p for p in gated["problems"]) and gated["params"] is None
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")  # a valid token without access: the Hub answers 403
    assert any("is gated" in p for p in hub.evaluate("bigco/llama-es-8b-sentiment")["problems"])
    assert 403 in {r.status for r in fake.find(None, "/bigco/llama-es-8b-sentiment/resolve/")}
    with pytest.raises(hub.HubError, match="is gated: accept its terms"):
        hub.plan_finetune("bigco/llama-es-8b-sentiment")
    monkeypatch.setenv("HF_TOKEN", "hf_good")
    assert hub.evaluate("bigco/llama-es-8b-sentiment")["params"] == 8_030_261_248
    with pytest.raises(hub.HubError, match="file not in the repo: config.json"):
        hub.spec_for("acme/odd-es-sentiment")
    with pytest.raises(ConfigError, match="config.json: acme/bad-json/config.json is not valid JSON"):
        hub.spec_for("acme/bad-json")


def test_rate_limit_is_retried_then_reported(fake, monkeypatch):
    monkeypatch.setattr(hub, "BACKOFF_S", 0.0)
    fake.rate_limit = 2
    assert hub.evaluate("acme/tiny-llama-es")["params"]  # two 429s, then answers
    fake.rate_limit = 100
    with pytest.raises(hub.HubError, match="rate limited"):
        hub.evaluate("acme/tiny-llama-es")
    fake.rate_limit = 0


def test_timeout_is_reported(fake, monkeypatch):
    monkeypatch.setattr(hub, "TIMEOUT_S", 0.2)
    fake.delay = 1.0
    with pytest.raises(hub.HubError, match="the Hub did not answer in time"):
        hub.evaluate("acme/tiny-llama-es")


def test_plan_finetune_uses_real_module_names(fake):
    plan = hub.plan_finetune("acme/tiny-llama-es", task="text-generation", gpu="t4", method="qlora")
    settings = plan["settings"]
    assert settings["target_modules"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert settings["dtype"] == "float16" and settings["peft_task_type"] == "CAUSAL_LM"  # T4 has no bf16
    assert "BitsAndBytesConfig" in plan["script"] and "AutoModelForCausalLM" in plan["script"]
    compile(plan["script"], "finetune.py", "exec")
    assert plan["needs_bytes"] == plan["memory"]["needs_bytes"]["finetune_qlora"] and plan["fits"]
    auto = hub.plan_finetune("acme/roberta-es-sentiment", task="text-classification", gpu="t4")
    assert auto["method"] == "full" and auto["settings"]["target_modules"] == []
    lora = hub.plan_finetune("acme/roberta-es-sentiment", task="text-classification", gpu="t4", method="lora")
    assert lora["settings"]["target_modules"] == ["dense", "key", "query", "value"]  # not a registry family:
    assert lora["settings"]["target_source"] == "the model transformers builds from config.json on the meta device"


def go_offline(fake, monkeypatch) -> dict:
    """Fill the (temporary) HF cache as a user's earlier online session would, then switch HF_HUB_OFFLINE on."""
    from huggingface_hub import constants, hf_hub_download

    online = {m: hub.evaluate(m, gpu="l4") for m in ("acme/tiny-llama-es", "acme/roberta-es-sentiment")}
    hf_hub_download("acme/tiny-llama-es", "model.safetensors")  # its weights too, as from_pretrained would have
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    fake.clear()
    return online


def test_offline_search_checks_every_constraint(fake, monkeypatch):
    go_offline(fake, monkeypatch)
    result = hub.search(task="text-classification", language="es")
    assert result["offline"] and "offline" in result["source"]
    assert [r["id"] for r in result["results"]] == ["acme/roberta-es-sentiment"]  # a cached card and config.json
    row = result["results"][0]
    assert row["task"] == "text-classification" and row["languages"] == ["es"] and row["source"] == "local HF cache"
    assert row["checked"] == ["task", "language"] and row["meets_constraints"]
    from archsmith.catalog import names

    assert result["rejected"]["violated"]["task"] == 1 + len(names())  # the tiny llama and every reference architecture

    spanish = hub.search(task="text-generation", language="es", library="transformers", limit=200)
    ids = {r["id"] for r in spanish["results"]}
    assert {"acme/tiny-llama-es", "meta-llama/Llama-3.1-8B", "mistralai/Mixtral-8x7B-v0.1"} <= ids
    assert not ids & {"openai-community/gpt2", "Qwen/Qwen3-8B", "acme/roberta-es-sentiment"}
    assert all(r["task"] == "text-generation" and "es" in r["languages"] and r["library"] == "transformers"
               for r in spanish["results"])
    every = {r["id"]: r for r in hub.search(language="es", include_rejected=True, limit=200)["results"]}
    qwen3 = every["Qwen/Qwen3-8B"]  # its card has no language field in the catalog: never claimed as met
    assert not qwen3["meets_constraints"] and qwen3["unchecked"] == ["language"] and qwen3["checked"] == []
    assert every["openai-community/gpt2"]["violated"] == ["language"]
    llama = hub.search(query="Llama-3.1-8B", license="llama3.1", max_params=9_000_000_000, gpu="l4", use="run_int4")
    assert [r["id"] for r in llama["results"]] == ["meta-llama/Llama-3.1-8B"]
    assert llama["results"][0]["params"] == 8_030_261_248 and llama["results"][0]["license"] == "llama3.1"
    assert hub.search(query="acme/", library="sentence-transformers")["message"] == (
        "no model meets every constraint: 2 of 2 models rejected (library 2); include_rejected (--include-rejected) "
        "lists them, labelled")
    assert fake.requests == []


def test_offline_evaluate_estimate_and_configure(fake, monkeypatch):
    from typer.testing import CliRunner

    from archsmith.cli import app
    from archsmith.estimate import count_params

    online = go_offline(fake, monkeypatch)
    cached = hub.evaluate("acme/tiny-llama-es", gpu="l4")
    assert cached["source"] == "local HF cache" and cached["params_source"] == "safetensors header (local HF cache)"
    same = ("sha", "params", "architecture", "license", "tokenizer", "provenance", "card_sections", "tensor_names", "memory",
            "estimate")
    assert {k: cached[k] for k in same} == {k: online["acme/tiny-llama-es"][k] for k in same}
    roberta = hub.evaluate("acme/roberta-es-sentiment")  # weights not cached, family not read: no count, but the card
    assert roberta["params"] is None and roberta["license"] == "apache-2.0" and roberta["task"] == "text-classification"

    llama = hub.evaluate("meta-llama/Llama-3.1-8B", gpu="t4")
    assert llama["source"].startswith("archsmith reference architecture") and llama["sha"] is None
    assert llama["params"] == 8_030_261_248 and llama["license"] == "llama3.1" and llama["commercial"] == "restricted"
    assert llama["gated"] is True and llama["context_length"] == 131072 and not llama["memory"]["fits"]["run_fp16"]
    with pytest.raises(hub.HubError, match="acme/nope: HF_HUB_OFFLINE is set and it is neither in the local HF cache"):
        hub.evaluate("acme/nope")

    plan = hub.plan_finetune("acme/tiny-llama-es", method="lora")
    assert plan["settings"]["revision"] == online["acme/tiny-llama-es"]["sha"]
    assert plan["settings"]["target_modules"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    with pytest.raises(hub.HubError, match="script cannot pin a revision"):
        hub.plan_finetune("meta-llama/Llama-3.1-8B")

    runner = CliRunner()
    estimated = runner.invoke(app, ["estimate", "meta-llama/Llama-3.1-8B", "--json"])
    assert estimated.exit_code == 0, estimated.output
    data = json.loads(estimated.stdout)
    assert data["params"]["total"] == 8_030_261_248 and "archsmith reference architecture" in data["source"]
    tiny = json.loads(runner.invoke(app, ["estimate", "acme/tiny-llama-es", "--json"]).stdout)
    assert tiny["params"]["total"] == count_params(TINY)["total"] and tiny["source"] == "config.json from the local HF cache"
    shown = runner.invoke(app, ["evaluate", "meta-llama/Llama-3.1-8B"], terminal_width=200)
    assert shown.exit_code == 0 and "params 8,030,261,248" in shown.stdout and "source: archsmith reference" in shown.stdout
    assert fake.requests == []


def test_no_network_fails_at_once_with_one_line(tmp_path):
    """A closed port on 127.0.0.1: no retries, no library log lines, only our message (the client used to retry 5x)."""
    import socket

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: every connection is refused
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{closed.getsockname()[1]}", "HF_HUB_OFFLINE": "0",
           "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    exe = str(Path(sys.executable).parent / "archsmith")
    try:
        for args, what, tail in ((["search", "llama"], "search", ""), (["estimate", "acme/x"], "acme/x", " (no local path acme/x either)"),
                                 (["evaluate", "acme/x"], "acme/x", "")):
            done = subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
            assert done.returncode == 2 and done.stdout == ""
            assert done.stderr == (f"error: {what}: cannot reach the Hub (no network?); set HF_HUB_OFFLINE=1 to use the "
                                   f"local HF cache and the reference architectures{tail}\n")
    finally:
        closed.close()


def test_cli_session_never_prints_the_token(fake, tmp_path):
    env = {**os.environ, "HF_ENDPOINT": fake.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "cli"),
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_TOKEN": "hf_good"}
    exe = str(Path(sys.executable).parent / "archsmith")
    run = lambda *a: subprocess.run([exe, *a], env=env, capture_output=True, text=True, timeout=120)  # noqa: E731
    found = run("search", "--task", "text-classification", "--license", "commercial", "--gpu", "t4", "--json")
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["results"][0]["id"] == "acme/roberta-es-sentiment"
    evaluated = run("evaluate", "bigco/llama-es-8b-sentiment", "--gpu", "t4")
    configured = run("configure", "bigco/llama-es-8b-sentiment", "--task", "text-classification", "--gpu", "t4",
                     "--out", str(tmp_path / "ft"))
    assert configured.returncode == 0, configured.stderr
    assert "qlora" in (tmp_path / "ft" / "plan.json").read_text()
    estimated = run("estimate", "acme/tiny-llama-es", "--json")
    assert json.loads(estimated.stdout)["params"]["total"] == hub.evaluate("acme/tiny-llama-es")["params"]
    missing = run("estimate", "acme/nope")
    assert missing.returncode == 2 and "acme/nope: not found on the Hub" in missing.stderr
    for result in (found, evaluated, configured, estimated, missing):
        assert "hf_good" not in result.stdout + result.stderr
    env["ARCHSMITH_PROGRESS_EVERY_S"] = "0"  # piped: every stage as a plain line on stderr
    talking = run("search", "--task", "text-classification", "--json")
    lines = talking.stderr.splitlines()
    assert lines[:2] == ["searching", f"listing models on {fake.url}"] and json.loads(talking.stdout)["considered"] == 4
    assert lines[2:] == [f"reading configs and cards: {n}/4 models" for n in range(1, 5)]
    assert run("evaluate", "acme/tiny-llama-es").stderr == "reading acme/tiny-llama-es: config, tokenizer, card and safetensors header\n"


def test_json_from_the_hub_is_size_capped_before_download(fake, monkeypatch):
    """A config.json larger than the cap is refused from the Hub's HEAD, never downloaded or parsed; a card too."""
    big = json.dumps({"model_type": "llama", "padding": "x" * 5000}).encode()
    fake.add(Repo("acme/huge-config", {"pipeline_tag": "text-generation"}, {"config.json": big, "README.md": card("mit") * 200}))
    monkeypatch.setattr(hub, "JSON_BYTES", 4096)
    monkeypatch.setattr(hub, "CARD_BYTES", 8192)
    with pytest.raises(hub.HubError, match=r"config.json: acme/huge-config/config.json is 5,\d+ bytes, over the 4,096-byte cap"):
        hub.spec_for("acme/huge-config")
    report = hub.evaluate("acme/huge-config")
    assert any("README.md is" in p and "8,192-byte cap" in p for p in report["problems"])
    fetched = {r.path.rsplit("/", 1)[-1] for r in fake.find("GET", "/acme/huge-config/resolve/")}
    assert fetched == set()  # HEAD only: nothing over the cap came down


def test_evaluate_shows_the_scores_the_card_reports_with_their_source(fake):
    index = [{"name": "tiny-llama-es", "results": [
        {"task": {"type": "text-classification", "name": "Sentiment"},
         "dataset": {"type": "tass", "name": "TASS 2020", "split": "test"},
         "metrics": [{"type": "accuracy", "value": 0.871, "name": "Accuracy", "verified": True},
                     {"type": "f1", "value": "84.5%"}, {"type": "f1", "value": "n/a"}, {"type": "nan", "value": float("nan")}],
         "source": {"name": "Our paper", "url": "javascript:alert(1)"}},
        {"task": "not a mapping", "dataset": {}, "metrics": []},
    ]}]
    files = {**llama_files(TINY, "mit"), "README.md": card("mit", **{"model-index": index})}
    fake.add(Repo("acme/scored", {"pipeline_tag": "text-generation"}, files))
    report = hub.evaluate("acme/scored")
    rows = report["reported_scores"]
    assert [(r["dataset"], r["metric"], r["value"], r["verified"]) for r in rows] == [("tass", "accuracy", 0.871, True),
                                                                                      ("tass", "f1", 84.5, False)]
    assert rows[0]["source"] == "Our paper" and rows[0]["url"] is None  # only http(s) links are passed on
    assert sum("model-index[0].results[0].metrics[" in p for p in report["problems"]) == 2
    assert any(p.startswith("model-index[0].results[1]: needs task") for p in report["problems"])
    from typer.testing import CliRunner

    from archsmith.cli import app

    shown = CliRunner().invoke(app, ["evaluate", "acme/scored"], env={"COLUMNS": "80"})
    assert shown.exit_code == 0 and "Reported on the card" in shown.stdout and "0.871" in shown.stdout
    assert hub.evaluate("acme/tiny-llama-es")["reported_scores"] == []  # a card without model-index reports none


def test_a_card_cannot_flood_the_scores():
    from archsmith.baselines import MAX_SCORES, reported_scores

    metrics = [{"type": "accuracy", "value": i / 1000} for i in range(500)]
    rows, problems = reported_scores({"model-index": [{"results": [{"task": {"type": "t"}, "dataset": {"type": "d"},
                                                                    "metrics": metrics}]}]})
    assert len(rows) == MAX_SCORES and problems == []  # metrics beyond the cap are not even looked at
    rows, problems = reported_scores({"model-index": "everything is 100%"})
    assert rows == [] and problems == ["model-index: not a list; no reported scores read"]


def test_a_diffusers_pipeline_is_read_component_by_component_from_headers(fake):
    from archsmith.pipelines import BYTES_PER_PARAM

    unet = {"conv_in.weight": ("F32", (320, 4, 3, 3)), "down.0.attn.to_q.weight": ("F32", (320, 320)),
            "mid.resnet.weight": ("F32", (1280, 1280, 3, 3))}
    vae = {"encoder.conv_in.weight": ("F16", (128, 3, 3, 3)), "decoder.conv_out.weight": ("F16", (3, 128, 3, 3))}
    text = {"text_model.embeddings.token_embedding.weight": ("F32", (49408, 768)), "text_model.final_layer_norm.weight": ("F32", (768,))}
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.30.0", "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
             "scheduler": ["diffusers", "PNDMScheduler"], "tokenizer": ["transformers", "CLIPTokenizer"], "safety_checker": [None, None]}
    files = {"model_index.json": json.dumps(index).encode(), "README.md": card("openrail++"),
             "unet/diffusion_pytorch_model.safetensors": make_safetensors(unet, virtual=True),
             "unet/diffusion_pytorch_model.fp16.safetensors": make_safetensors({k: ("F16", s) for k, (_, s) in unet.items()}, virtual=True),
             "vae/diffusion_pytorch_model.fp16.safetensors": make_safetensors(vae, virtual=True),
             "text_encoder/model.safetensors": make_safetensors(text, virtual=True),
             "scheduler/scheduler_config.json": b"{}"}
    fake.add(Repo("acme/tiny-sd", {"pipeline_tag": "text-to-image", "library_name": "diffusers"}, files))
    report = hub.evaluate("acme/tiny-sd", gpu="t4")
    pipe = {r["component"]: r for r in report["pipeline"]["components"]}
    assert list(pipe) == ["unet", "vae", "text_encoder", "scheduler", "tokenizer"] and report["pipeline"]["class"] == "StableDiffusionPipeline"

    def count(tensors):
        return sum(math.prod(shape) for _, shape in tensors.values())

    assert pipe["unet"]["params"] == count(unet) and pipe["unet"]["files"] == ["unet/diffusion_pytorch_model.safetensors"]
    assert pipe["unet"]["bytes_on_disk"] == 4 * count(unet) and pipe["unet"]["dtypes"] == {"F32": count(unet)}
    assert pipe["vae"]["bytes_on_disk"] == 2 * count(vae) and any("vae: only variant weights (fp16)" in p for p in report["problems"])
    assert pipe["text_encoder"]["memory_bytes"] == {p: b * count(text) for p, b in BYTES_PER_PARAM.items()}
    assert pipe["scheduler"]["params"] == 0 and pipe["scheduler"]["memory_bytes"] is None
    assert report["params"] == count(unet) + count(vae) + count(text) == report["pipeline"]["params"]
    assert report["memory"]["needs_bytes"]["run_fp16"] > 0
    assert fake.full_downloads() == []  # headers only, by range requests
    from typer.testing import CliRunner

    from archsmith.cli import app

    shown = CliRunner().invoke(app, ["evaluate", "acme/tiny-sd"], env={"COLUMNS": "80"})
    assert shown.exit_code == 0 and "StableDiffusionPipeline pipeline" in shown.stdout and "text_encoder" in shown.stdout
    assert max(len(line) for line in shown.stdout.splitlines()) <= 80


def test_checkpoint_formats_are_named_with_size_precision_and_what_to_do(fake):
    from archsmith.checkpoints import describe

    files = [("model-Q4_K_M.gguf", 4_000), ("model-IQ2_XS.gguf", 2_000), ("model-f16.gguf", 16_000),
             ("onnx/model_fp16.onnx", 500), ("onnx/model_quantized.onnx", 250), ("onnx/model.onnx", 1000), ("README.md", 10)]
    rows = {r["format"]: r for r in describe(files)["formats"]}
    assert set(rows) == {"gguf", "onnx"} and rows["gguf"]["bytes"] == 22_000 and rows["onnx"]["files"] == 3
    assert [f["precision"] for f in rows["gguf"]["listed"]] == ["Q4_K_M", "IQ2_XS", "F16"]
    assert [f["precision"] for f in rows["onnx"]["listed"]] == ["FP16", "QUANTIZED", None]
    assert describe(files)["notes"][0].startswith("no safetensors or PyTorch weights (gguf, onnx only)")
    tf_only = {"config.json": json.dumps({"model_type": "bert", "architectures": ["TFBertModel"]}).encode(),
               "README.md": card("apache-2.0"), "tf_model.h5": b"\x89HDF\r\n\x1a\n" + bytes(4096)}
    fake.add(Repo("acme/tf-only", {"pipeline_tag": "fill-mask", "library_name": "transformers"}, tf_only))
    report = hub.evaluate("acme/tf-only")
    (row,) = report["checkpoints"]
    assert row["format"] == "tensorflow" and row["bytes"] == 4104 and "from_tf=True" in row["handling"]
    assert any("TensorFlow / Flax weights convert" in p for p in report["problems"])
    assert {r["format"] for r in hub.evaluate("acme/tiny-llama-es")["checkpoints"]} == {"safetensors"}


def modality_repo(config: dict, preprocessor: dict, tensors: dict, task: str) -> Repo:
    files = {"config.json": json.dumps(config).encode(), "README.md": card("apache-2.0"),
             "preprocessor_config.json": json.dumps(preprocessor).encode(), "model.safetensors": make_safetensors(tensors, virtual=True)}
    return Repo(f"acme/{config['model_type']}-{task}", {"pipeline_tag": task, "library_name": "transformers"}, files)


def block(prefix: str, leaves: tuple[str, ...], width: int, layers: int = 2) -> dict:
    return {f"{prefix}.{i}.{leaf}.weight": ("F32", (width, width)) for i in range(layers) for leaf in leaves}


MODALITIES = {
    "vit": (modality_repo(
        {"model_type": "vit", "architectures": ["ViTForImageClassification"], "image_size": 224, "patch_size": 16, "num_channels": 3},
        {"image_processor_type": "ViTImageProcessor", "size": {"height": 224, "width": 224}, "image_mean": [0.5, 0.5, 0.5],
         "image_std": [0.5, 0.5, 0.5], "do_normalize": True, "rescale_factor": float("nan")},
        {**block("vit.encoder.layer", ("attention.attention.query", "attention.attention.key", "attention.attention.value"), 64),
         "vit.embeddings.patch_embeddings.projection.weight": ("F32", (64, 3, 16, 16)), "classifier.weight": ("F32", (1000, 64))},
        "image-classification"), "vision", ("AutoModelForImageClassification", "AutoImageProcessor", "modules_to_save=['classifier']")),
    "whisper": (modality_repo(
        {"model_type": "whisper", "architectures": ["WhisperForConditionalGeneration"], "num_mel_bins": 80},
        {"feature_extractor_type": "WhisperFeatureExtractor", "sampling_rate": 16000, "feature_size": 80, "chunk_length": 30,
         "n_fft": 400, "hop_length": 160, "processor_class": "WhisperProcessor"},
        {**block("model.encoder.layers", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), 64),
         **block("model.decoder.layers", ("encoder_attn.q_proj", "fc1"), 64)},
        "automatic-speech-recognition"), "audio", ("AutoModelForSpeechSeq2Seq", "AutoProcessor", "task_type='SEQ_2_SEQ_LM'")),
    "wav2vec2": (modality_repo(
        {"model_type": "wav2vec2", "architectures": ["Wav2Vec2ForCTC"], "conv_dim": [512]},
        {"feature_extractor_type": "Wav2Vec2FeatureExtractor", "sampling_rate": 16000, "feature_size": 1, "do_normalize": True},
        block("wav2vec2.encoder.layers", ("attention.q_proj", "attention.k_proj"), 64),
        "automatic-speech-recognition"), "audio", ("AutoModelForCTC", "AutoProcessor")),
    "clip": (modality_repo(
        {"model_type": "clip", "architectures": ["CLIPModel"], "vision_config": {"image_size": 224}, "text_config": {}},
        {"image_processor_type": "CLIPImageProcessor", "crop_size": {"height": 224, "width": 224}, "image_mean": [0.48, 0.46, 0.41],
         "image_std": [0.27, 0.26, 0.28]},
        {**block("vision_model.encoder.layers", ("self_attn.q_proj",), 64), **block("text_model.encoder.layers", ("self_attn.q_proj",), 64)},
        "zero-shot-image-classification"), "multimodal", ("AutoModel", "AutoProcessor")),
}


@pytest.mark.parametrize("name", list(MODALITIES))
def test_other_modalities_are_evaluated_and_configured_with_their_processor(fake, name):
    repo, modality, names = MODALITIES[name]
    fake.add(repo)
    report = hub.evaluate(repo.id, gpu="t4")
    tensors = {k: v for k, v in safetensors_header(repo.files["model.safetensors"]).items() if k != "__metadata__"}
    assert report["params"] == sum(math.prod(t["shape"]) for t in tensors.values()) and report["modality"] == modality
    settings = report["processor"]
    preprocessor = json.loads(repo.files["preprocessor_config.json"])
    for key in ("size", "crop_size", "sampling_rate", "image_mean"):
        if key in preprocessor:
            assert settings[key] == preprocessor[key]  # what the model sees, as its processor says
    assert all(isinstance(v, float) and not math.isnan(v) or not isinstance(v, float) for v in settings.values())
    plan = hub.plan_finetune(repo.id, task=repo.info["pipeline_tag"], gpu="t4", method="lora")
    compile(plan["script"], "finetune.py", "exec")
    assert all(n in plan["script"] for n in names), plan["script"]
    assert plan["settings"]["target_modules"] and "PROCESSOR_SETTINGS = " in plan["script"]


def scored(dataset: str, metric: str, value, source: str = "the authors") -> list:
    return [{"name": "m", "results": [{"task": {"type": "text-generation"}, "dataset": {"type": dataset, "name": dataset},
                                       "metrics": [{"type": metric, "value": value}],
                                       "source": {"name": source, "url": "https://example.org/scores"}}]}]


def test_sort_by_a_reported_benchmark_score(monkeypatch, tmp_path):
    """--sort score:hellaswag ranks by what each card's model-index reports for it (percentages read as such), never
    inventing one: a card without the score comes after, says so and carries score null."""
    gen = {"pipeline_tag": "text-generation", "library_name": "transformers"}
    files = lambda **extra: {**llama_files(TINY, "mit"), "README.md": card("mit", **extra)}  # noqa: E731
    repos = [Repo("acme/popular-unscored", {**gen, "downloads": 9_000}, files()),
             Repo("acme/half", {**gen, "downloads": 10}, files(**{"model-index": scored("hellaswag", "acc", 0.55)})),
             Repo("acme/percent", {**gen, "downloads": 5}, files(**{"model-index": scored("HellaSwag", "acc_norm", 61.2, "Leaderboard")})),
             Repo("acme/other-task", {**gen, "downloads": 50}, files(**{"model-index": scored("arc_easy", "acc", 0.9)}))]
    with FakeHub(repos) as server:
        use_fake_hub(monkeypatch, tmp_path / "hf", server)
        result = hub.search(task="text-generation", sort="score:hellaswag")
        popular = hub.search(task="text-generation")
        code = subprocess.run([str(Path(sys.executable).parent / "archsmith"), "search", "--task", "text-generation",
                               "--sort", "score:hellaswag"], capture_output=True, text=True, env={**os.environ, "COLUMNS": "80",
                               "HF_ENDPOINT": server.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf2")})
    ids = [r["id"] for r in result["results"]]
    assert ids[:2] == ["acme/percent", "acme/half"] and set(ids[2:]) == {"acme/popular-unscored", "acme/other-task"}
    assert ids[2:] == ["acme/popular-unscored", "acme/other-task"]  # no score: popularity decides among them
    top = result["results"][0]["score"]
    assert top["value"] == 61.2 and top["fraction"] == pytest.approx(0.612) and top["metric"] == "acc_norm"
    assert "hellaswag: acc_norm 61.2 (Leaderboard; reported, not measured)" in result["results"][0]["reasons"]
    assert result["results"][2]["score"] is None and "the card reports no score for hellaswag" in result["results"][2]["reasons"]
    assert [r["id"] for r in popular["results"]][0] == "acme/popular-unscored" and popular["results"][0]["score"] is None
    assert code.returncode == 0, code.stderr
    assert "61.2 acc_norm" in code.stdout and code.stdout.index("acme/percent") < code.stdout.index("acme/half")
    with pytest.raises(ArchsmithError, match="^sort: score:TASK names a benchmark"):
        hub.search(sort="score:bad task!")


def test_a_diffusion_pipeline_gets_a_unet_fine_tune_that_runs(monkeypatch, tmp_path):
    """configure for a diffusers pipeline: the UNet learns, the rest is frozen; memory from the components' headers
    (full: 16 bytes a UNet parameter + 2 per frozen one; LoRA: 2 each + adapters). The script for a real tiny DDPM
    pipeline served by our fake Hub runs: two train_step calls on images lower nothing to NaN and change the UNet."""
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    from archsmith.pipelines import LORA_FRACTION

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, attention_head_dim=8)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=50)).save_pretrained(tmp_path / "ddpm")
    files = {str(p.relative_to(tmp_path / "ddpm")): p.read_bytes() for p in (tmp_path / "ddpm").rglob("*") if p.is_file()}
    params = sum(p.numel() for p in unet.parameters())
    with FakeHub([Repo("acme/tiny-ddpm", {"pipeline_tag": "unconditional-image-generation", "library_name": "diffusers"},
                       {**files, "README.md": card("mit")})]) as server:
        use_fake_hub(monkeypatch, tmp_path / "hf", server)
        plan = hub.plan_finetune("acme/tiny-ddpm", task="unconditional-image-generation", method="full", gpu="t4")
        assert plan["method"] == "full" and plan["needs_bytes"] == params * 16 and plan["fits"]
        assert plan["memory"]["needs_bytes"]["finetune_lora"] == params * 2 + int(params * LORA_FRACTION) * 16
        assert plan["settings"]["denoiser_class"] == "UNet2DModel" and not plan["settings"]["text_encoder"]
        namespace: dict = {"__name__": "finetune"}
        exec(compile(plan["script"], "finetune.py", "exec"), namespace)
        before = [p.detach().clone() for p in namespace["unet"].parameters()]
        losses = [namespace["train_step"](torch.rand(2, 3, 8, 8) * 2 - 1) for _ in range(2)]
    assert all(math.isfinite(x) and x > 0 for x in losses)
    assert any(not torch.equal(a, b) for a, b in zip(before, namespace["unet"].parameters()))


def test_text_to_image_lora_script_and_the_pipelines_it_leaves_to_diffusers(fake):
    """A Stable-Diffusion-shaped repository (headers only): a LoRA script on the attention projections, conditioned on
    its text encoder; two text encoders (SDXL-like) are refused with what to do instead."""
    from archsmith.pipelines import LORA_TARGETS

    unet = {"conv_in.weight": ("F16", (320, 4, 3, 3)), "down.0.attn.to_q.weight": ("F16", (320, 320))}
    text = {"text_model.embeddings.token_embedding.weight": ("F16", (49408, 768))}
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "scheduler": ["diffusers", "PNDMScheduler"]}
    files = {"model_index.json": json.dumps(index).encode(), "README.md": card("openrail++"),
             "unet/diffusion_pytorch_model.safetensors": make_safetensors(unet, virtual=True),
             "vae/diffusion_pytorch_model.safetensors": make_safetensors({"decoder.conv_out.weight": ("F16", (3, 128, 3, 3))}, virtual=True),
             "text_encoder/model.safetensors": make_safetensors(text, virtual=True)}
    fake.add(Repo("acme/sd", {"pipeline_tag": "text-to-image", "library_name": "diffusers"}, files))
    plan = hub.plan_finetune("acme/sd", task="text-to-image", method="lora", gpu="t4")
    script = plan["script"]
    compile(script, "finetune.py", "exec")
    assert plan["settings"]["text_encoder"] == "text_encoder" and plan["settings"]["target_modules"] == LORA_TARGETS
    assert f"target_modules={LORA_TARGETS!r}" in script and "encoder_hidden_states=context" in script
    assert "pipe.text_encoder.requires_grad_(False)" in script and "pipe.vae.requires_grad_(False)" in script
    assert plan["settings"]["dtype"] == "float16"  # a T4 has no bf16
    fake.add(Repo("acme/sdxl", {"pipeline_tag": "text-to-image", "library_name": "diffusers"},
                  {**files, "model_index.json": json.dumps({**index, "_class_name": "StableDiffusionXLPipeline",
                                                            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}).encode(),
                   "text_encoder_2/model.safetensors": make_safetensors(text, virtual=True)}))
    with pytest.raises(ArchsmithError, match="^task: StableDiffusionXLPipeline .*2 text encoders.*diffusers' training examples"):
        hub.plan_finetune("acme/sdxl", task="text-to-image")
    with pytest.raises(ArchsmithError, match="^task: acme/tiny-llama-es is not a diffusers pipeline"):
        hub.plan_finetune("acme/tiny-llama-es", task="text-to-image")
    with pytest.raises(ArchsmithError, match="^task: acme/sd is a diffusers pipeline; text-generation is not a pipeline task"):
        hub.plan_finetune("acme/sd", task="text-generation")


# ---- licences as users read them ----------------------------------------------------------------

LICENCE_CLASSES = {  # license id -> (class, the `commercial` verdict)
    "mit": ("permissive", "yes"), "apache-2.0": ("permissive", "yes"), "bsd-3-clause": ("permissive", "yes"),
    "cc-by-4.0": ("permissive", "yes"), "cc0-1.0": ("permissive", "yes"),
    "gpl-3.0": ("copyleft", "yes"), "agpl-3.0": ("copyleft", "yes"), "lgpl-3.0": ("copyleft", "yes"),
    "cc-by-sa-4.0": ("copyleft", "yes"), "mpl-2.0": ("copyleft", "yes"),
    "openrail": ("restricted-use", "restricted"), "openrail++": ("restricted-use", "restricted"),
    "bigscience-openrail-m": ("restricted-use", "restricted"), "creativeml-openrail-m": ("restricted-use", "restricted"),
    "bigcode-openrail-m": ("restricted-use", "restricted"), "llama3.1": ("restricted-use", "restricted"),
    "gemma": ("restricted-use", "restricted"),
    "cc-by-nc-4.0": ("non-commercial", "no"), "cc-by-nc-sa-4.0": ("non-commercial", "no"),
    "fair-noncommercial-research-license": ("non-commercial", "no"),
    "other": ("unknown", "unknown"), "my-own-terms": ("unknown", "unknown"), None: ("unknown", "unknown"),
}
PRESET_CLASSES = {"permissive": {"permissive"}, "commercial-ok": {"permissive", "restricted-use"},
                  "copyleft-ok": {"permissive", "copyleft"}}


def test_licences_are_classed_as_users_read_them_and_presets_say_what_they_allow():
    for lic, (cls, verdict) in LICENCE_CLASSES.items():
        assert (hub.license_class(lic), hub.commercial_use(lic)) == (cls, verdict), lic
        assert hub.license_class(lic.upper() if lic else lic) == cls  # model cards spell ids in any case
    assert "use-based restrictions" in hub.license_terms("bigcode-openrail-m")
    assert "700M monthly active users" in hub.license_terms("llama3.1")
    assert "no commercial use" in hub.license_terms("cc-by-nc-4.0") and "share-alike" in hub.license_terms("gpl-3.0")
    named = {k for k in LICENCE_CLASSES if k}
    for preset, classes in PRESET_CLASSES.items():
        allowed = set(hub.resolve_licenses(preset))
        assert allowed & named == {k for k in named if LICENCE_CLASSES[k][0] in classes}, preset
    notes: list[str] = []
    both = hub.resolve_licenses("commercial-ok, copyleft-ok,my-own-terms", notes)
    assert {"gpl-3.0", "bigcode-openrail-m", "mit", "my-own-terms"} <= set(both) and "cc-by-nc-4.0" not in both
    assert notes == ["license 'my-own-terms' is neither a preset (permissive, commercial-ok, copyleft-ok) nor a license id "
                     "archsmith knows; matched as given"]
    old: list[str] = []
    assert hub.resolve_licenses("commercial", old) == hub.resolve_licenses("permissive") and "gpl-3.0" not in hub.resolve_licenses("commercial")
    assert len(old) == 1 and "deprecated and now means 'permissive'" in old[0] and "commercial-ok, copyleft-ok" in old[0]


def test_search_filters_by_licence_class_offline(monkeypatch, tmp_path):
    """The shipped catalog offline: StarCoder2's bigcode-openrail-m is restricted use, allowed by commercial-ok only."""
    from typer.testing import CliRunner

    from huggingface_hub import constants

    from archsmith.cli import app

    use_fake_hub(monkeypatch, tmp_path / "hf")  # an empty HF cache
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    for preset, classes in PRESET_CLASSES.items():
        rows = hub.search(license=preset, include_rejected=True, limit=200)["results"]
        assert {r["license_class"] for r in rows} >= {"permissive", "restricted-use", "non-commercial"}
        for r in rows:
            assert ("license" in r["violated"]) == (r["license_class"] not in classes), (preset, r["id"], r["license"])
    coder = next(r for r in hub.search(query="starcoder2", license="commercial-ok")["results"])
    assert coder["license"] == "bigcode-openrail-m" and coder["license_class"] == "restricted-use" and coder["meets_constraints"]
    assert any("bigcode-openrail-m (restricted-use): OpenRAIL" in why for why in coder["reasons"])
    shown = CliRunner().invoke(app, ["search", "starcoder2", "--license", "commercial", "--include-rejected", "--json"])
    assert shown.exit_code == 0 and "deprecated and now means 'permissive'" in shown.stderr
    result = json.loads(shown.stdout)
    assert result["notes"] and result["results"][0]["violated"] == ["license"]


# ---- fine-tuning that runs ---------------------------------------------------------------------------

ROUTING_GATES = {"gate", "router", "shared_expert_gate"}  # MoE routers (and Qwen2-MoE's 1-output shared-expert gate)


def test_lora_targets_of_every_registry_family_are_the_modules_transformers_builds():
    """Each row's names exist in the model transformers builds (meta device), and every linear layer of its blocks but
    the routers is one of them (the Llama names are no fallback for another layout)."""
    from conftest import TINY_CONFIGS

    from archsmith.families import NAMES, lora_modules

    built: dict[str, set[str]] = {}
    for name, cfg in TINY_CONFIGS.items():
        found = set(hub._meta_linear_names(cfg, "AutoModelForCausalLM"))
        targets = set(lora_modules(cfg["model_type"]))
        assert found - targets <= ROUTING_GATES, (name, sorted(found - targets))
        built.setdefault(cfg["model_type"], set()).update(found)
    assert set(built) == set(NAMES)
    for family, found in built.items():
        assert set(lora_modules(family)) <= found, (family, sorted(set(lora_modules(family)) - found))
    assert lora_modules("not-a-family") is None


def test_a_phi_like_model_gets_its_own_module_names_offline(tmp_path):
    """phi-2's layers are q/k/v_proj, dense, fc1, fc2: from the registry and from transformers on the meta device alike,
    for a local directory holding only its config.json (no weights, no Hub)."""
    from transformers import PhiConfig

    config = PhiConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=256).to_dict()
    (tmp_path / "phi").mkdir()
    (tmp_path / "phi" / "config.json").write_text(json.dumps(config))
    plan = hub.plan_finetune(str(tmp_path / "phi"), method="lora", gpu="t4")
    phi = ["dense", "fc1", "fc2", "k_proj", "q_proj", "v_proj"]
    assert plan["settings"]["target_modules"] == phi and plan["settings"]["revision"] is None
    assert plan["settings"]["target_source"] == "the families registry's module names for model_type phi"
    assert hub._meta_linear_names(config, "AutoModelForCausalLM") == phi
    assert f"target_modules={phi!r}" in plan["script"] and plan["source"] == f"the local directory {tmp_path / 'phi'}"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArchsmithError, match="^model_id: .*empty is not a model directory"):
        hub.plan_finetune(str(tmp_path / "empty"))
    from test_boundary import call  # the MCP tool, in process: a directory inside the workspace root, shown relative

    tool = call(tmp_path, "plan_finetune", {"model_id": "phi", "method": "lora"}).structured_content
    assert tool["settings"]["target_modules"] == phi and tool["settings"]["model_id"] == "phi" and str(tmp_path) not in tool["script"]
    assert "leaves the workspace root" in call(tmp_path / "phi", "plan_finetune", {"model_id": "../empty"}).content[0].text


@pytest.fixture(scope="module")
def chat_model(tiny_lm, tmp_path_factory) -> Path:
    """A tiny random Llama (transformers weights) with the tests' BPE tokenizer and a chat template, in a directory."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    root = tmp_path_factory.mktemp("chat") / "model"
    shutil.copytree(tiny_lm["model"], root)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(**json.loads((root / "config.json").read_text()))).save_pretrained(root)
    tok = json.loads((root / "tokenizer_config.json").read_text())
    tok["chat_template"] = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>\n{% endfor %}"
                            "{% if add_generation_prompt %}<s>assistant: {% endif %}")
    (root / "tokenizer_config.json").write_text(json.dumps(tok))
    return root


def stories(n: int) -> list[str]:
    from conftest import STORIES

    return [p.strip() for p in STORIES.read_text().split("\n\n") if p.strip()][:n]


def test_configure_writes_a_script_that_fine_tunes_a_local_model_offline(chat_model, tmp_path, one_thread):
    """configure on a local directory (HF_HUB_OFFLINE=1): the script reads chats, masks the prompt through the chat
    template, trains LoRA adapters a few steps (finite loss, held-out loss down) and saves adapter and tokenizer."""
    import runpy

    from safetensors.torch import load_file
    from transformers import AutoTokenizer
    from typer.testing import CliRunner

    from archsmith.cli import app

    shown = CliRunner().invoke(app, ["configure", str(chat_model), "--method", "lora", "--gpu", "l4", "--out", str(tmp_path / "ft")])
    assert shown.exit_code == 0, shown.output
    assert "run: cd" in shown.stdout and "python finetune.py --data train.jsonl --out finetuned" in shown.stdout
    plan = json.loads((tmp_path / "ft" / "plan.json").read_text())
    assert plan["script_complete"] and plan["settings"]["revision"] is None and plan["method"] == "lora"
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": "Tell me a story."},
                                                     {"role": "assistant", "content": s}]}) + "\n" for s in stories(40)))
    script = runpy.run_path(str(tmp_path / "ft" / "finetune.py"), run_name="finetune")

    tokenizer = AutoTokenizer.from_pretrained(chat_model)
    row = json.loads(data.read_text().splitlines()[0])
    example = script["encode"](row, tokenizer, 512)
    kept = [t for t in example["labels"] if t != -100]
    assert example["labels"][0] == -100 and example["input_ids"][-len(kept):] == kept  # the prompt is masked, then all counts
    assert tokenizer.decode(kept).strip() == f"{row['messages'][1]['content']}</s>"  # the reply and its end of turn

    metrics = script["main"](["--data", str(data), "--out", str(tmp_path / "adapter"), "--max-steps", "8", "--batch-size", "4",
                              "--grad-accum", "1", "--lr", "3e-3", "--max-length", "96"])
    losses = [s["loss"] for s in metrics["train_loss"]]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert metrics["eval"][-1]["loss"] < metrics["eval"][0]["loss"] and metrics["eval_examples"] == 4
    saved = tmp_path / "adapter"
    adapter = json.loads((saved / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == plan["settings"]["target_modules"] and adapter["r"] == 16
    lora_b = [t for name, t in load_file(saved / "adapter_model.safetensors").items() if "lora_B" in name]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b)  # B starts at zero: these trained
    assert (saved / "tokenizer.json").is_file() and json.loads((saved / "metrics.json").read_text())["steps"] == 8


def test_a_classification_script_reads_labels_from_csv_and_reports_accuracy(chat_model, tmp_path, one_thread):
    import csv
    import runpy

    plan = hub.plan_finetune(str(chat_model), task="text-classification", method="lora", gpu="t4")
    assert plan["script_complete"] and plan["settings"]["kind"] == "classify" and plan["settings"]["amp_dtype"] == "float16"
    (tmp_path / "finetune.py").write_text(plan["script"])
    with open(tmp_path / "train.csv", "w", newline="") as fh:
        rows = csv.DictWriter(fh, ["text", "label"])
        rows.writeheader()
        rows.writerows({"text": s, "label": "calm" if "calm" in s else "other"} for s in stories(30))
    script = runpy.run_path(str(tmp_path / "finetune.py"), run_name="finetune")
    metrics = script["main"](["--data", str(tmp_path / "train.csv"), "--out", str(tmp_path / "out"), "--max-steps", "3",
                              "--grad-accum", "1"])
    assert all(math.isfinite(s["loss"]) for s in metrics["train_loss"]) and len(metrics["train_loss"]) == 3
    assert 0 <= metrics["eval"][-1]["accuracy"] <= 1 and metrics["eval"][-1]["examples"] == 3
    saved = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert saved["task_type"] == "SEQ_CLS" and "score" in saved["modules_to_save"]
    with pytest.raises(SystemExit, match="--out: .* is not empty"):
        script["main"](["--data", str(tmp_path / "train.csv"), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="--label-field: every example needs 'label'"):  # a held-out row without one
        script["encode"]({"text": "A calm day."}, None, 16, "text", "label", {"calm": 0, "other": 1})

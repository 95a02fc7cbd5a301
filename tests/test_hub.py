"""Hub discovery against a local fake Hub (tests/hubserver.py) with the real huggingface_hub client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hubserver import FakeHub, Repo, make_index, make_safetensors, use_fake_hub

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


def test_search_ranks_constraints_first_and_never_downloads_weights(fake):
    result = hub.search(task="text-classification", language="es", license="commercial", gpu="t4", sort="downloads")
    ids = [r["id"] for r in result["results"]]
    assert ids[0] == "acme/roberta-es-sentiment"  # the only commercial model that fits, though not the most downloaded
    assert set(ids) == {"acme/roberta-es-sentiment", "acme/bert-es-sentiment-nc", "bigco/llama-es-8b-sentiment", "acme/odd-es-sentiment"}
    first, rows = result["results"][0], {r["id"]: r for r in result["results"]}
    assert first["reasons"][0] == "meets every constraint" and first["commercial"] == "yes"
    assert first["params"] == 12 * (4 * 768 * 768 + 2 * 3072 * 768 + 768) + 50265 * 768 + 3 * 768
    assert first["memory"]["fits"]["run_fp16"] and first["memory"]["weights_bytes"]["fp16"] == 2 * first["params"]
    assert any("cc-by-nc-4.0 is not in the allowed list" in r for r in rows["acme/bert-es-sentiment-nc"]["reasons"])
    big = rows["bigco/llama-es-8b-sentiment"]
    assert big["params"] == 8_030_261_248 and big["gated"] and not big["memory"]["fits"]["run_fp16"]
    assert big["memory"]["fits"]["run_int4"]
    assert rows["acme/odd-es-sentiment"]["problems"] and rows["acme/odd-es-sentiment"]["params"] is None  # odd, not fatal
    assert fake.full_downloads() == [] and fake.full_downloads(".bin") == []
    assert len(fake.requests) <= 2 * len(ids) + 1


def test_license_allow_list_and_max_params(fake):
    result = hub.search(query="es", license="mit,apache-2.0", max_params=200_000_000)
    top = [r["id"] for r in result["results"] if r["reasons"][0] == "meets every constraint"]
    assert top == ["acme/roberta-es-sentiment", "acme/tiny-llama-es"]
    query = fake.find("GET", "/api/models")[0].query
    assert query["search"] == ["es"] and "safetensors" in query["expand"] and query["sort"] == ["downloads"]


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
    assert lora["settings"]["target_modules"] == ["dense", "key", "query", "value"]


def test_offline_search_uses_the_cache_and_the_catalog(fake, monkeypatch):
    hub.evaluate("acme/tiny-llama-es")  # puts its config.json into the (temporary) HF cache
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    fake.clear()
    result = hub.search(query="llama")
    assert result["offline"] and "offline" in result["source"]
    rows = {r["id"]: r for r in result["results"]}
    assert rows["acme/tiny-llama-es"]["params_source"] == "local HF cache"
    assert rows["meta-llama/Llama-3.1-8B"]["params"] == 8_030_261_248 and rows["meta-llama/Llama-3.1-8B"]["license"] == "llama3.1"
    assert fake.requests == []
    with pytest.raises(hub.HubError, match="HF_HUB_OFFLINE is set"):
        hub.evaluate("acme/tiny-llama-es")


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

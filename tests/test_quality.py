"""Measured quality: lm-evaluation-harness tasks on our models (network.py and transformers), the measurement beside a
card's model-index, image classifiers on an image folder, text encoders on local data, and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from archsmith.errors import ArchsmithError
from archsmith.quality import evaluate
from conftest import minilm_path
from hubserver import FakeHub, Repo, use_fake_hub

TASKS = Path(__file__).resolve().parent / "data" / "tasks"  # story_end: made by tests/data/make_tasks.py
HELDOUT = TASKS.parent / "stories_heldout.txt"


def cli(*args) -> tuple[int, str, str]:
    from typer.testing import CliRunner

    from archsmith.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_lm) -> dict[str, Path]:
    """`trained`: 80 steps of `archsmith train` on the stories (a run directory; story_end measured at every
    evaluation); `untrained`: the same network with its initial weights, saved by transformers."""
    from transformers import AutoConfig, AutoModelForCausalLM

    root = tmp_path_factory.mktemp("quality")
    code, _, err = cli("train", tiny_lm["model"], "--data", tiny_lm["corpus"], "--batch", 8, "--seq", 64, "--lr", "3e-3",
                       "--steps", 80, "--eval-samples", 16, "--no-progress", "--out", root / "run", "--eval-every", 40,
                       "--eval-tasks", "story_end", "--eval-include", TASKS, "--eval-limit", 30)
    assert code == 0, err
    untrained = root / "untrained"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_lm["model"])).save_pretrained(untrained)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (untrained / name).write_bytes((tiny_lm["model"] / name).read_bytes())
    return {"trained": root / "run", "untrained": untrained}


def direct_accuracy(model_dir: Path, limit: int | None = None) -> float:
    """story_end accuracy computed here without the harness: the choice with the highest log p(" " + choice | context)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    rows = [json.loads(line) for line in (TASKS / "story_end.jsonl").read_text().splitlines()][:limit]
    hits = []
    for row in rows:
        scores = []
        for choice in row["choices"]:
            context, whole = tok.encode(row["context"]), tok.encode(row["context"] + " " + choice)
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)
            scores.append(sum(float(logp[i - 1, whole[i]]) for i in range(len(context), len(whole))))
        hits.append(scores.index(max(scores)) == row["answer"])
    return sum(hits) / len(hits)


def test_trained_network_model_through_the_harness(models, tmp_path):
    """`archsmith eval RUN --engine network`: the harness's accuracy equals the direct computation, transformers on
    the same weights agrees, and the trained model beats the untrained one on accuracy and held-out perplexity."""
    code, out, err = cli("eval", models["trained"], "--tasks", "story_end", "--include", TASKS, "--text", HELDOUT,
                         "--engine", "network", "--json", "--out", tmp_path / "ev")
    assert code == 0, err
    ours = json.loads(out)
    story = ours["results"]["story_end"]
    assert set(story) == {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "samples"} and story["samples"] == 60
    assert story["acc"] == pytest.approx(direct_accuracy(models["trained"] / "final"))
    assert story["acc"] > 0.9
    assert ours["settings"]["engine"] == "network" and ours["settings"]["harness"].startswith("lm-evaluation-harness 0.4")
    assert ours["path"].endswith("final") and ours["kind"] == "language"
    assert json.loads((tmp_path / "ev" / "results.json").read_text())["results"] == ours["results"]
    assert (tmp_path / "ev" / "quality.png").read_bytes()[:4] == b"\x89PNG"

    reference = evaluate(str(models["trained"]), ["story_end"], [TASKS], HELDOUT, engine="transformers")
    for task in ("story_end", "heldout_text"):
        for metric, value in ours["results"][task].items():
            assert reference["results"][task][metric] == (None if value is None else pytest.approx(value, rel=1e-4)), metric
    text = ours["results"]["heldout_text"]
    assert text["bits_per_byte"] == pytest.approx(math.log2(text["byte_perplexity"]))

    untrained = evaluate(str(models["untrained"]), ["story_end"], [TASKS], HELDOUT)
    assert untrained["results"]["story_end"]["acc"] == pytest.approx(direct_accuracy(models["untrained"]))
    assert untrained["results"]["story_end"]["acc"] < story["acc"]
    assert untrained["results"]["heldout_text"]["bits_per_byte"] > text["bits_per_byte"] + 1


CARD = """---
license: mit
model-index:
  - name: tiny-story
    results:
      - task: {type: multiple-choice, name: Story endings}
        dataset: {type: story_end, name: Story End, split: test}
        metrics:
          - {type: accuracy, value: %(acc)s, name: Accuracy}
          - {type: acc_norm, value: %(norm)s}
        source: {name: Our own leaderboard, url: https://example.org/board}
---
# tiny-story
"""


def test_train_measures_tasks_at_every_evaluation(models):
    """`train --eval-tasks`: each evaluation row carries the harness's story_end metrics on the model of that step; the
    last equals `eval` of the final model on the same examples; the report tabulates them."""
    from archsmith.train.metrics import read_metrics

    rows = [r for r in read_metrics(models["trained"]) if r["kind"] == "eval"]
    assert [r["step"] for r in rows] == [0, 40, 80]
    assert all({"story_end/acc", "story_end/acc_stderr", "story_end/acc_norm"} <= set(r) for r in rows)
    final = evaluate(str(models["trained"]), ["story_end"], [TASKS], limit=30, engine="network")["results"]["story_end"]
    assert rows[-1]["story_end/acc"] == pytest.approx(final["acc"]) and rows[-1]["story_end/acc"] > rows[0]["story_end/acc"]
    report = (models["trained"] / "report.md").read_text()
    assert "| step | loss | perplexity | story_end/acc | story_end/acc_norm |" in report
    assert f"| {rows[-1]['story_end/acc']:.4f} |" in report
    code, _, err = cli("train", models["untrained"], "--data", TASKS.parent / "stories.txt", "--out", models["trained"].parent / "x",
                       "--eval-tasks", "story_endd", "--eval-include", TASKS, "--steps", 1)
    assert code == 2 and err.startswith("error: eval_tasks: unknown task 'story_endd'"), err
    assert not (models["trained"].parent / "x").exists()


def test_compress_reports_teacher_and_student_task_metrics(models, tmp_path):
    """compress --eval-tasks: the teacher's row equals `eval` of the teacher, the student's equals `eval` of the
    student directory compress wrote."""
    from archsmith.compress import compress

    teacher = models["trained"] / "final"
    report = compress(teacher, 0.3, tmp_path / "student", eval_tasks=["story_end"], eval_include=[TASKS], eval_limit=30,
                      repeats=1, grid=[(1, 16)])
    rows = {r["metric"]: r for r in report["quality"]["rows"]}
    assert set(rows) == {"acc", "acc_norm"} and report["quality"]["kind"] == "language"
    alone = evaluate(str(tmp_path / "student"), ["story_end"], [TASKS], limit=30)["results"]["story_end"]
    assert rows["acc"]["teacher"] == pytest.approx(direct_accuracy(teacher, 30))
    assert rows["acc"]["student"] == pytest.approx(alone["acc"])
    assert rows["acc"]["student_over_teacher"] == pytest.approx(alone["acc"] / rows["acc"]["teacher"])
    with pytest.raises(ArchsmithError, match="^eval_tasks: unknown task"):
        compress(teacher, 0.3, tmp_path / "other", eval_tasks=["nope"], eval_include=[TASKS])
    assert not (tmp_path / "other").exists()


def test_measured_against_the_card_of_a_hub_model(models, monkeypatch, tmp_path):
    """A Hub id (our fake Hub on 127.0.0.1) is downloaded (config, tokenizer, safetensors, card) and measured; the card
    reports one score within the stderr and one (a percentage) far outside it, which is flagged."""
    limit = 30
    acc = direct_accuracy(models["untrained"], limit)
    files = {p.name: p.read_bytes() for p in models["untrained"].iterdir() if p.is_file()}
    files["README.md"] = (CARD % {"acc": round(acc, 3), "norm": 99.0}).encode()
    with FakeHub([Repo("acme/tiny-story", {"pipeline_tag": "text-generation"}, files)]) as hub:
        use_fake_hub(monkeypatch, tmp_path / "hf", hub)
        code, out, err = cli("eval", "acme/tiny-story", "--tasks", "story_end", "--include", TASKS, "--limit", limit)
        result = evaluate("acme/tiny-story", ["story_end"], [TASKS], limit=limit)
    assert code == 0, err
    assert result["hub_id"] == "acme/tiny-story" and result["results"]["story_end"]["acc"] == pytest.approx(acc)
    rows = {r["metric"]: r for r in result["comparison"]}
    assert set(rows) == {"acc", "acc_norm"}
    assert not rows["acc"]["flagged"] and abs(rows["acc"]["gap"]) < 0.001 and rows["acc"]["source"] == "Our own leaderboard"
    norm = rows["acc_norm"]
    assert norm["reported_as_percent"] and norm["reported"] == pytest.approx(0.99) and norm["flagged"]
    assert norm["gap_in_stderr"] == pytest.approx((norm["measured"] - 0.99) / norm["stderr"])
    said = " ".join(out.split())
    assert f"gap: story_end acc_norm measured {norm['measured']:.4f} vs reported 0.9900 (Our own leaderboard)" in said


def test_image_classifier_top1_top5_on_a_folder(tmp_path):
    """top-1/top-5 on a folder of class folders equal transformers' image-classification pipeline on the same files;
    the processor's settings are reported; a folder no label matches is named."""
    from PIL import Image
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor, pipeline

    labels = ["red", "green", "blue", "black", "white", "grey"]
    colours = [(220, 20, 20), (20, 200, 20), (20, 20, 220), (5, 5, 5), (250, 250, 250), (128, 128, 128)]
    model = tmp_path / "vit"
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, num_labels=6, id2label=dict(enumerate(labels)))
    torch.manual_seed(0)
    ViTForImageClassification(config).save_pretrained(model)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(model)
    photos = tmp_path / "photos"
    for label, colour in zip(labels, colours):
        (photos / label.capitalize()).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40 + 3 * i, 36), tuple(min(255, c + 9 * i) for c in colour)).save(photos / label.capitalize() / f"{i}.png")

    result = evaluate(str(model), images=str(photos), batch=4)
    got = result["results"]["photos"]
    classify = pipeline("image-classification", model=str(model), top_k=5)
    top1, top5 = [], []
    for folder in sorted(photos.iterdir()):
        for image in sorted(folder.iterdir()):
            ranked = [r["label"] for r in classify(str(image))]
            top1.append(ranked[0] == folder.name.lower())
            top5.append(folder.name.lower() in ranked)
    assert got["samples"] == 18 and got["top1"] == pytest.approx(sum(top1) / 18) and got["top5"] == pytest.approx(sum(top5) / 18)
    assert result["kind"] == "image-classification" and result["settings"]["processor"]["size"] == {"height": 32, "width": 32}
    assert result["settings"]["processor"]["image_mean"] == [0.5, 0.5, 0.5]

    (photos / "purple").mkdir()
    with pytest.raises(ArchsmithError, match="^images: class folder.*purple.*match no label"):
        evaluate(str(model), images=str(photos))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


PAIRS = [("A man is playing a guitar.", "A man plays the guitar.", 5.0), ("A cat sits on the mat.", "A kitten rests on a rug.", 4.0),
         ("The stock market fell today.", "A child is eating an apple.", 0.0), ("A woman is cooking dinner.", "Someone prepares a meal.", 4.5),
         ("The train leaves at noon.", "Dogs bark at night.", 0.5), ("He is reading a book.", "A man reads a novel.", 3.5)]
QUERIES = [("How do I bake bread?", "Mix flour, water and yeast, then bake the dough."),
           ("What is the capital of France?", "Paris is the capital of France."),
           ("How fast is light?", "Light travels at about 300,000 km per second."),
           ("Who wrote Hamlet?", "Hamlet is a play by William Shakespeare.")]
TOPICS = {"sport": ["The team won the match.", "He scored a goal.", "The runner finished first.", "They played tennis all day."],
          "food": ["The soup was delicious.", "She baked a cake.", "We ate pasta for dinner.", "The bread is fresh."]}


def test_encoder_metrics_on_local_data(tmp_path):
    """The real all-MiniLM-L6-v2: gold similarity ranks its cosines, reversed gold anti-ranks them; each query finds its
    own answer and not a shuffled one; a linear probe separates two topics."""
    model = str(minilm_path())
    sim = evaluate(model, data=str(write_jsonl(tmp_path / "sts.jsonl", [{"sentence1": a, "sentence2": b, "score": s} for a, b, s in PAIRS])))
    flipped = evaluate(model, data=str(write_jsonl(tmp_path / "flip.jsonl", [{"sentence1": a, "sentence2": b, "score": -s} for a, b, s in PAIRS])))
    assert sim["kind"] == "encoder-similarity" and sim["results"]["sts"]["spearman"] > 0.7
    assert flipped["results"]["flip"]["spearman"] == pytest.approx(-sim["results"]["sts"]["spearman"])

    found = evaluate(model, data=str(write_jsonl(tmp_path / "qa.jsonl", [{"query": q, "positive": p} for q, p in QUERIES])))
    assert found["results"]["qa"]["recall@1"] == 1.0 and found["results"]["qa"]["mrr@10"] == 1.0
    wrong = [{"query": q, "positive": QUERIES[(i + 1) % 4][1]} for i, (q, _) in enumerate(QUERIES)]
    assert evaluate(model, data=str(write_jsonl(tmp_path / "wrong.jsonl", wrong)))["results"]["wrong"]["recall@1"] == 0.0

    probe = evaluate(model, data=str(write_jsonl(tmp_path / "topics.jsonl", [{"text": t, "label": k} for k, ts in TOPICS.items() for t in ts])))
    assert probe["kind"] == "encoder-classification" and probe["results"]["topics"]["acc"] >= 0.75
    assert probe["results"]["topics"]["samples"] == 8 and probe["settings"]["folds"] == 4


def test_bad_input_names_the_field(models, tmp_path):
    model = str(models["untrained"])
    cases = [
        (dict(), "^tasks: give one of"),
        (dict(tasks=["story_end"], images=str(tmp_path)), "^tasks: give one of .*got tasks, images"),
        (dict(tasks=["story_endd"], include=[TASKS]), "^tasks: unknown task 'story_endd' \\(did you mean story_end"),
        (dict(tasks=["story_end"], include=[tmp_path / "none"]), "^include: .* is not a directory"),
        (dict(tasks=["story_end"], include=[TASKS], limit=0), "^limit: must be at least 1"),
        (dict(tasks=["story_end"], include=[TASKS], engine="vllm"), "^engine: must be one of transformers, network"),
        (dict(tasks=["story_end"], include=[TASKS], batch=0), "^batch: must be 1 to 512"),
        (dict(text=tmp_path / "missing.txt"), "^text: .* is not a file"),
        (dict(data=str(write_jsonl(tmp_path / "odd.jsonl", [{"x": 1}]))), "^data: .* rows need the fields of one of"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ArchsmithError, match=message):
            evaluate(model, **kwargs)
    with pytest.raises(ArchsmithError, match="^model: 'no such model' is neither a model directory nor a Hub id"):
        evaluate("no such model", ["story_end"])
    coded = tmp_path / "coded"
    coded.mkdir()
    (coded / "t.yaml").write_text((TASKS / "story_end.yaml").read_text().replace('"{{answer}}"', "!function utils.answer"))
    with pytest.raises(ArchsmithError, match="^include: .*t.yaml loads Python \\(!function\\)"):
        evaluate(model, ["story_end"], [coded], allow_code=False)
    code, _, err = cli("eval", model, "--tasks", "story_end", "--include", TASKS, "--out", tmp_path, "--limit", 2)
    assert code == 2 and err.startswith("error: out:") and "--overwrite" in err and len(err.strip().splitlines()) == 1


def test_the_mcp_tool_measures_inside_the_workspace(models, tmp_path):
    """evaluate_quality through a real MCP client: the same numbers as the engine, files written under the root, task
    YAMLs that load Python refused (the server runs without code allowed), data files outside the root refused."""
    import shutil

    import anyio
    from mcp import Client

    from archsmith.mcp_server.server import build_server

    root = tmp_path / "ws"
    shutil.copytree(models["untrained"], root / "model")
    shutil.copytree(TASKS, root / "tasks")
    (root / "coded").mkdir()
    (root / "coded" / "t.yaml").write_text((TASKS / "story_end.yaml").read_text().replace('"{{answer}}"', "!function u.a"))
    (root / "outside").mkdir()
    (root / "outside" / "story_end.yaml").write_text((TASKS / "story_end.yaml").read_text()
                                                     .replace("test: story_end.jsonl", f"test: {TASKS / 'story_end.jsonl'}"))
    expected = evaluate(str(models["untrained"]), ["story_end"], [TASKS], limit=12)

    async def main():
        async with Client(build_server(root)) as client:
            ok = await client.call_tool("evaluate_quality", {"model": "model", "tasks": ["story_end"], "include": ["tasks"],
                                                             "limit": 12, "out_dir": "ev"})
            assert not ok.is_error, ok.content
            assert ok.structured_content["results"] == expected["results"]
            assert ok.structured_content["files"] == ["ev/results.json", "ev/quality.png"]
            coded = await client.call_tool("evaluate_quality", {"model": "model", "tasks": ["story_end"], "include": ["coded"]})
            assert coded.is_error and coded.content[0].text.startswith("include: ") and "!function" in coded.content[0].text
            away = await client.call_tool("evaluate_quality", {"model": "model", "tasks": ["story_end"], "include": ["outside"]})
            assert away.is_error and away.content[0].text.startswith("include: ") and "workspace" in away.content[0].text
    anyio.run(main)
    assert json.loads((root / "ev" / "results.json").read_text())["results"] == expected["results"]

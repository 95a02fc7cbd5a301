"""Write tests/data/tasks/: local lm-evaluation-harness tasks over new stories of the training corpus's grammar.

    python tests/data/make_tasks.py

`story_end` is multiple choice: a held-out story (a seed other than the corpus's) cut before a word the grammar
fixes, and three endings, one right (a model that learned the stories prefers it; an untrained one is at chance).
`stories_heldout.txt` is held-out text for perplexity. Seeded, so the files are reproducible.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from make_corpus import story

SEED = 7  # not the corpus's seed: these stories are held out
ROWS = 60
# (cut before, [right, wrong, wrong]): words of one token each in a 400-token BPE of the corpus, of one length per
# cut, so that neither token counts nor byte lengths give the answer away
CUTS = [(" You are a good", [" friend.", " wanted.", " there."]),
        ("Once upon a", [" time,", " felt,", " came,"]),
        (", who said, \"I will come with", [" you.", " she.", " was."])]
YAML = """task: story_end
dataset_path: json
dataset_kwargs:
  data_files:
    test: story_end.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{context}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{answer}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def main() -> None:
    rng = random.Random(SEED)
    out = Path(__file__).with_name("tasks")
    out.mkdir(exist_ok=True)
    rows = []
    for i in range(ROWS):
        text = story(rng)
        cut, endings = CUTS[i % len(CUTS)]
        context = text[:text.index(cut) + len(cut)]
        choices = [e.lstrip() for e in endings]  # the harness joins context and choice with its target_delimiter " "
        rng.shuffle(choices)
        rows.append({"context": context, "choices": choices, "answer": choices.index(endings[0].lstrip())})
    (out / "story_end.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (out / "story_end.yaml").write_text(YAML, encoding="utf-8")
    (out.parent / "stories_heldout.txt").write_text("\n\n".join(story(rng) for _ in range(20)) + "\n", encoding="utf-8")
    print(f"wrote {out}/story_end.yaml, story_end.jsonl ({ROWS} rows) and stories_heldout.txt")


if __name__ == "__main__":
    main()

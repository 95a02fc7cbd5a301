"""Write tests/data/stories.txt: short generated stories (public domain, made here) for training tests.

    python tests/data/make_corpus.py

Seeded, so the file is reproducible. Stories follow a small grammar (characters, places, wants,
obstacles, endings) so a small model learns real structure from ~200 KB within a few dozen steps.
Documents are separated by one blank line.
"""

from __future__ import annotations

import random
from pathlib import Path

SEED = 2024  # any fixed value: the file must be the same on every run
STORIES = 450  # about 220 KB: big enough to learn from, small enough to ship in the repository

NAMES = ["Mia", "Tom", "Lena", "Sam", "Ada", "Ben", "Ivy", "Leo", "Nora", "Max", "Ruth", "Owen", "Zoe", "Hugo", "Clara", "Finn"]
ANIMALS = ["cat", "dog", "fox", "owl", "rabbit", "duck", "bear", "mouse", "frog", "goat", "horse", "crow"]
ADJECTIVES = ["little", "old", "brave", "shy", "happy", "sleepy", "clever", "small", "kind", "curious", "tired", "busy"]
PLACES = ["the forest", "the river", "the old barn", "the garden", "the hill", "the village", "the beach", "the market",
          "the meadow", "the lake", "the bakery", "the library"]
THINGS = ["a red ball", "a blue kite", "a shiny key", "a warm coat", "a big apple", "a tiny boat", "a lost hat",
          "a golden coin", "a paper map", "a wooden box", "a green leaf", "a silver bell"]
WEATHER = ["It was a sunny day.", "It was raining.", "The wind was cold.", "Snow covered the ground.",
           "The sky was grey.", "It was a warm evening."]
FEELINGS = ["happy", "sad", "scared", "proud", "surprised", "worried", "excited", "calm"]
OBSTACLES = ["a deep hole", "a locked gate", "a fallen tree", "a wide stream", "a tall fence", "a dark cave"]
HELPS = ["jumped over it", "asked a friend for help", "found another way", "waited until morning", "built a small bridge",
         "sang a song to stay brave"]
ENDINGS = ["From that day on, {name} always smiled when {pron} saw {thing}.",
           "{name} went home and told the story to everyone.",
           "That night, {name} slept well and dreamed of {place}.",
           "And so {name} learned that friends make every road shorter.",
           "The end."]


def story(rng: random.Random) -> str:
    name, pron = rng.choice(NAMES), rng.choice(["she", "he"])
    animal, adj = rng.choice(ANIMALS), rng.choice(ADJECTIVES)
    place, thing, other = rng.choice(PLACES), rng.choice(THINGS), rng.choice(NAMES)
    lines = [
        f"Once upon a time, there was a {adj} {animal} named {name}.",
        rng.choice(WEATHER),
        f"{name} wanted to find {thing} in {place}.",
        f"On the way, {pron} met {other}, who said, \"I will come with you.\"",
    ]
    for _ in range(rng.randint(1, 3)):
        lines.append(f"Then they came to {rng.choice(OBSTACLES)}, so {name} {rng.choice(HELPS)}.")
        lines.append(f"{name} felt {rng.choice(FEELINGS)}.")
    lines.append(f"At last, they found {thing} near {rng.choice(PLACES)}.")
    lines.append(f"{other} said, \"Thank you, {name}. You are a good friend.\"")
    lines.append(rng.choice(ENDINGS).format(name=name, pron=pron, thing=thing, place=place))
    return " ".join(lines)


def main() -> None:
    rng = random.Random(SEED)
    out = Path(__file__).with_name("stories.txt")
    out.write_text("\n\n".join(story(rng) for _ in range(STORIES)) + "\n", encoding="utf-8")
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()

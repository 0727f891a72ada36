"""Instruction prompts for chat-formatted teacher samples (`samples.chat_fraction`).

An instruct teacher distilled on plain text alone leaves the student unused to its chat template:
the SmolLM2 run in docs/results.md trained on Shakespeare and continuations of Shakespeare, and its
students answered chat prompts with loops. With no dataset hub to draw UltraChat-style prompts from
(MambaInLlama's SFT data), the prompts are built here from task templates x topics, and the
teacher's own answers become the training text. Deterministic in the seed; the evaluation prompts of
`zebra_jax.eval.report.PROMPTS` are never produced (checked in tests/test_samples.py).
"""

from __future__ import annotations

import numpy as np

TEMPLATES = (
    "Explain {t} to a ten-year-old.",
    "Write a short story about {t}.",
    "Give me three facts about {t}.",
    "What are the pros and cons of {t}?",
    "Write a haiku about {t}.",
    "Summarise what you know about {t} in one paragraph.",
    "How would you teach someone about {t}?",
    "List five questions a student might ask about {t}, with short answers.",
    "Describe {t} in the style of a news report.",
    "What is a common misconception about {t}?",
    "Write a friendly email inviting a colleague to a talk on {t}.",
    "Compare {t} with something from everyday life.",
    "Give step-by-step advice for someone new to {t}.",
    "Write a limerick about {t}.",
    "Why does {t} matter? Answer in three sentences.",
    "Write a dialogue between two friends discussing {t}.",
)

TOPICS = (
    "volcanoes", "photosynthesis", "the moon", "honey bees", "the printing press", "rainbows",
    "gardening", "chess", "the water cycle", "electric cars", "the Roman Empire", "recycling",
    "sleep", "coffee", "the human heart", "earthquakes", "penguins", "the internet", "music theory",
    "baking bread", "saving money", "the solar system", "learning a language", "bicycles",
    "mountains", "the ocean tides", "vaccines", "friendship", "public libraries", "clouds",
    "dinosaurs", "cooking pasta", "time management", "the Olympic Games", "trees", "robots",
    "the desert", "painting", "running a marathon", "birds migrating", "magnets", "the weather",
    "writing poetry", "trains", "lighthouses", "the brain", "kindness", "deserts at night",
    "ancient Egypt", "volunteering", "camping", "snow", "bridges", "the periodic table",
    "theatre", "a rainy day", "windmills", "octopuses", "the history of maps", "solar panels",
    "yoga", "the Amazon rainforest", "chocolate", "memory", "fireflies", "sailing", "glaciers",
    "museums", "jazz", "the immune system", "origami", "honesty", "city parks", "the stars",
)


def instruction_prompts(num: int, seed: int, exclude=()) -> list[str]:
  """`num` user messages (template x topic pairs in a seeded order, repeating once all are used),
  none equal to a string in `exclude`."""
  if num <= 0:
    return []
  excluded = {e.strip().lower() for e in exclude}
  pool = [tpl.format(t=t) for tpl in TEMPLATES for t in TOPICS]
  pool = [p for p in pool if p.strip().lower() not in excluded]
  order = np.random.default_rng(seed).permutation(len(pool))
  return [pool[int(order[i % len(pool)])] for i in range(num)]


__all__ = ["instruction_prompts", "TEMPLATES", "TOPICS"]

"""Instruction prompts for chat-formatted teacher samples (`samples.chat_fraction`): task templates x
topics, and tasks about a passage cut from a training document (`samples.passage_fraction`).

An instruct teacher distilled on plain text alone leaves the student unused to its chat template:
the SmolLM2 run in docs/results.md trained on Shakespeare and continuations of Shakespeare, and its
students answered chat prompts with loops. With no dataset hub to draw UltraChat-style prompts from
(MambaInLlama's SFT data), the prompts are built here from task templates x topics, and the
teacher's own answers become the training text. Deterministic in the seed; the evaluation prompts of
`zebra_jax.data.prompts.REPORT_PROMPTS` are never produced (checked in tests/test_samples.py).
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
  "volcanoes",
  "the moon",
  "honey bees",
  "the printing press",
  "rainbows",
  "gardening",
  "chess",
  "the water cycle",
  "electric cars",
  "the Roman Empire",
  "recycling",
  "sleep",
  "coffee",
  "the human heart",
  "earthquakes",
  "penguins",
  "the internet",
  "music theory",
  "baking bread",
  "saving money",
  "the solar system",
  "learning a language",
  "bicycles",
  "mountains",
  "the ocean tides",
  "vaccines",
  "friendship",
  "public libraries",
  "clouds",
  "dinosaurs",
  "cooking pasta",
  "time management",
  "the Olympic Games",
  "trees",
  "robots",
  "the desert",
  "painting",
  "running a marathon",
  "birds migrating",
  "magnets",
  "writing poetry",
  "trains",
  "lighthouses",
  "the brain",
  "kindness",
  "deserts at night",
  "ancient Egypt",
  "volunteering",
  "camping",
  "snow",
  "bridges",
  "the periodic table",
  "theatre",
  "a rainy day",
  "windmills",
  "octopuses",
  "the history of maps",
  "solar panels",
  "yoga",
  "the Amazon rainforest",
  "chocolate",
  "memory",
  "fireflies",
  "sailing",
  "glaciers",
  "museums",
  "jazz",
  "the immune system",
  "origami",
  "honesty",
  "city parks",
  "the stars",
  "databases",
  "spreadsheets",
  "password security",
  "version control",
  "web browsers",
  "operating systems",
  "email etiquette",
  "writing a resume",
  "public speaking",
  "budgeting",
  "first aid",
  "healthy breakfasts",
  "composting",
  "renting an apartment",
  "the French Revolution",
  "the Industrial Revolution",
  "democracy",
  "taxes",
  "inflation",
  "climate change",
  "electricity",
  "batteries",
  "airplanes",
  "satellites",
  "DNA",
  "bacteria",
  "fractions",
  "probability",
  "the Pythagorean theorem",
  "grammar",
  "Shakespeare's plays",
  "film music",
  "photography",
  "knitting",
  "woodworking",
  "the postal service",
  "football",
  "tennis",
  "board games",
  "meditation",
  "pets",
  "dogs",
  "cats",
  "rivers",
  "islands",
  "coral reefs",
  "wind power",
  "nuclear energy",
  "the stock market",
  "insurance",
  "libraries",
  "newspapers",
  "translation",
  "programming languages",
  "sorting algorithms",
  "the command line",
  "unit testing",
  "spreadsheets formulas",
  "cloud computing",
  "search engines",
  "social media",
)

# Tasks about a passage of real text (summarise, explain, continue, answer questions): the teacher's
# answers ground the distillation data in the training sources' subjects and registers.
PASSAGE_TEMPLATES = (
  "Summarise the following passage in two or three sentences.\n\n{p}",
  "Explain what this text is about to someone new to the subject.\n\n{p}",
  "Read the passage below and say what its main point is.\n\n{p}",
  "Continue this text for another paragraph, in the same style.\n\n{p}",
  "Write three questions about this passage and answer each one.\n\n{p}",
  "List the key terms in this passage and define each briefly.\n\n{p}",
  "Rewrite this passage in plain, simple English.\n\n{p}",
  "{p}\n\nWhat would a reader learn from the text above?",
  "{p}\n\nExplain the text above step by step.",
  "{p}\n\nWhat is the tone of this passage, and why?",
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


def cut_passage(text: str, rng: np.random.Generator, min_chars: int = 300, max_chars: int = 1200) -> str:
  """A passage of `text` that starts at a paragraph (or line) boundary and ends at the last
  paragraph, line or sentence boundary before `max_chars`; '' when the text is shorter than
  `min_chars`."""
  text = text.strip()
  if len(text) < min_chars:
    return ""
  starts = [0] + [i + 1 for i, ch in enumerate(text[:-min_chars]) if ch == "\n"]
  start = starts[int(rng.integers(len(starts)))]
  window = text[start : start + max_chars]
  if len(window) < max_chars:
    return window.strip()
  for sep in ("\n\n", "\n", ". "):
    cut = window.rfind(sep, min_chars)
    if cut > 0:
      return window[: cut + (1 if sep == ". " else 0)].strip()
  return window.strip()


def passage_prompts(documents, num: int, seed: int, min_chars: int = 300, max_chars: int = 1200) -> list[str]:
  """`num` user messages, each a passage template around a passage of a random document of
  `documents` (plain-text ones; chats are skipped), deterministic in `seed`."""
  if num <= 0:
    return []
  texts = [d for d in documents if isinstance(d, str) and len(d.strip()) >= min_chars]
  if not texts:
    raise ValueError(f"passage prompts need documents of at least {min_chars} characters; none found")
  rng = np.random.default_rng(seed)
  out = []
  while len(out) < num:
    passage = cut_passage(texts[int(rng.integers(len(texts)))], rng, min_chars, max_chars)
    if passage:
      out.append(PASSAGE_TEMPLATES[int(rng.integers(len(PASSAGE_TEMPLATES)))].format(p=passage))
  return out


__all__ = [
  "instruction_prompts",
  "passage_prompts",
  "cut_passage",
  "TEMPLATES",
  "TOPICS",
  "PASSAGE_TEMPLATES",
]

"""Choosing between two recipes on validation data only; the held-out rows are read after the choice.

A recipe change is kept or dropped by how its student does on the validation splits of the training
sources (the suite's "in-domain:<source>" rows, documents training never reads), never by the
held-out sources, the multiple-choice tasks or the suite's chat prompts, which are what the project
reports. This module is that rule as code, so a sweep's decisions are reproducible from its suite
files (`python scripts/evaluate.py compare A/suite.json:label B/suite.json:label`):

* "perplexity" (the default criterion): B replaces A when its pooled validation perplexity ratio
  (student / teacher, token-weighted geometric mean over the splits both suites scored) is lower
  than A's by more than `min_gain` (NOISE: the spread of one recipe scored twice);
* "chat" (a change aimed at the answers, e.g. pairs + DPO): B replaces A when its answers to the
  validation chat prompts (`eval/chat_validation.py`) repeat less (mean repeated-4-gram share) and
  its pooled validation ratio is not worse than A's by more than `min_gain`.

The held-out rows (pooled and per source) are computed for the same pair and returned apart from
the decision; `markdown` prints them after it, under a heading that says they played no part.
"""

from __future__ import annotations

import math

VALIDATION = "in-domain:"
HELD_OUT = "held-out:"
NOISE = 0.004  # run 10's recipe scored on guarded and unguarded data: x1.169 vs x1.173 pooled
CRITERIA = ("perplexity", "chat")


ROW_FIELDS = ("perplexity", "teacher_perplexity", "top1", "kl", "tokens")


def _check_rows(domains: dict, keys) -> None:
  for k in keys:
    missing = [f for f in ROW_FIELDS if not isinstance(domains[k].get(f), (int, float))]
    if missing:
      raise ValueError(f"suite row {k!r} has no numeric {', '.join(missing)} (not a suite.json domain row)")


def pooled(domains: dict, keys) -> dict:
  """Token-weighted pool of suite domain rows: ratio = exp(mean log(ppl / teacher ppl)), top-1, KL."""
  keys = list(keys)
  _check_rows(domains, keys)
  tokens = sum(domains[k]["tokens"] for k in keys)
  if not keys or tokens <= 0:
    raise ValueError("nothing to pool: no rows with tokens")
  w = lambda k: domains[k]["tokens"] / tokens
  log_ratio = sum(w(k) * math.log(domains[k]["perplexity"] / domains[k]["teacher_perplexity"]) for k in keys)
  return {
    "ratio": math.exp(log_ratio),
    "top1": sum(w(k) * domains[k]["top1"] for k in keys),
    "kl": sum(w(k) * domains[k]["kl"] for k in keys),
    "tokens": tokens,
    "splits": len(keys),
  }


def model_domains(suite: dict, label: str) -> dict:
  """The domain rows of model `label` in a suite.json dict; ValueError naming the labels it has."""
  models = suite.get("models", {})
  if label not in models or "domains" not in models[label]:
    students = [m for m in models if m != "teacher"]
    raise ValueError(
      f"no model {label!r} with domain rows in this suite (it has: {', '.join(students) or 'none'})"
    )
  return models[label]["domains"]


def compare(
  domains_a: dict,
  domains_b: dict,
  *,
  criterion: str = "perplexity",
  min_gain: float = NOISE,
  chat_a: dict | None = None,
  chat_b: dict | None = None,
) -> dict:
  """The decision between recipe A (the current one) and B on their shared validation splits, and
  the held-out rows apart. chat_a / chat_b: `chat_validation` stats of each (criterion "chat")."""
  if criterion not in CRITERIA:
    raise ValueError(f"criterion={criterion!r} must be one of {CRITERIA}")
  if criterion == "chat" and (chat_a is None or chat_b is None):
    raise ValueError("criterion 'chat' needs both models' chat-validation results")
  shared = sorted(k for k in domains_a if k.startswith(VALIDATION) and k in domains_b)
  if not shared:
    raise ValueError("the two suites share no validation split (in-domain:<source> rows)")
  held = sorted(k for k in domains_a if k.startswith(HELD_OUT) and k in domains_b)
  pa, pb = pooled(domains_a, shared), pooled(domains_b, shared)  # each checks the rows it reads
  held_a, held_b = (pooled(d, held) if held else None for d in (domains_a, domains_b))
  ratio = lambda d, k: d[k]["perplexity"] / d[k]["teacher_perplexity"]
  splits = [
    {"split": k[len(VALIDATION) :], "ratio_a": ratio(domains_a, k), "ratio_b": ratio(domains_b, k)}
    for k in shared
  ]
  if criterion == "perplexity":
    choose_b = pb["ratio"] < pa["ratio"] - min_gain
    why = (
      f"pooled validation ratio x{pb['ratio']:.4f} vs x{pa['ratio']:.4f} (B must be lower by > {min_gain})"
    )
  else:
    choose_b = chat_b["repetition"] < chat_a["repetition"] and pb["ratio"] <= pa["ratio"] + min_gain
    why = (
      f"validation chat repetition {100 * chat_b['repetition']:.1f}% vs {100 * chat_a['repetition']:.1f}% "
      f"(B must be lower) with the pooled validation ratio x{pb['ratio']:.4f} vs x{pa['ratio']:.4f} "
      f"(B at most {min_gain} worse)"
    )
  held_out = None
  if held:
    held_out = {
      "a": held_a,
      "b": held_b,
      "sources": [
        {"source": k[len(HELD_OUT) :], "ratio_a": ratio(domains_a, k), "ratio_b": ratio(domains_b, k)}
        for k in held
      ],
    }
  return {
    "criterion": criterion,
    "min_gain": min_gain,
    "choose": "b" if choose_b else "a",
    "why": why,
    "validation": {
      "a": pa,
      "b": pb,
      "b_better_on": sum(s["ratio_b"] < s["ratio_a"] for s in splits),
      "splits": splits,
    },
    "chat": None if chat_a is None or chat_b is None else {"a": chat_a, "b": chat_b},
    "held_out": held_out,
  }


def markdown(result: dict, label_a: str, label_b: str) -> str:
  v = result["validation"]
  chosen = label_b if result["choose"] == "b" else label_a
  lines = [
    f"### {label_a} (A) vs {label_b} (B), chosen on validation data: **{chosen}**",
    "",
    f"Criterion {result['criterion']}: {result['why']}. B better on {v['b_better_on']} of {len(v['splits'])} splits.",
    "",
    "| validation split | A ratio | B ratio |",
    "|---|---:|---:|",
  ]
  lines += [f"| {s['split']} | x{s['ratio_a']:.3f} | x{s['ratio_b']:.3f} |" for s in v["splits"]]
  for side, label in (("a", label_a), ("b", label_b)):
    p = v[side]
    lines.append(
      f"| **pooled {label}** | x{p['ratio']:.4f} | top-1 {100 * p['top1']:.1f}%, KL {p['kl']:.3f} |"
    )
  if result["chat"]:
    lines += ["", "| validation chat | repetition | loops | stopped |", "|---|---:|---:|---:|"]
    for side, label in (("a", label_a), ("b", label_b)):
      c = result["chat"][side]
      lines.append(
        f"| {label} | {100 * c['repetition']:.1f}% | {100 * c['loops']:.1f}% | {100 * c['stopped']:.1f}% |"
      )
  h = result["held_out"]
  if h:
    lines += [
      "",
      "Held-out sources (read after the choice; no part of it):",
      "",
      "| held-out source | A ratio | B ratio |",
      "|---|---:|---:|",
    ]
    lines += [f"| {s['source']} | x{s['ratio_a']:.3f} | x{s['ratio_b']:.3f} |" for s in h["sources"]]
    lines.append(f"| **pooled** | x{h['a']['ratio']:.4f} | x{h['b']['ratio']:.4f} |")
  return "\n".join(lines)


__all__ = ["compare", "markdown", "model_domains", "pooled", "NOISE", "CRITERIA"]

"""Evaluation: perplexity, teacher agreement, KV-cache report, needle in a haystack, lm-eval adapter.

    from zebra_jax import eval as zeval
    zeval.perplexity_of_files(model, tokenizer, ["a.txt"], max_length=2048)
    zeval.teacher_agreement(student, teacher, token_lists, max_length=2048)   # top-1, mean KL
    print(zeval.format_kv_report(zeval.kv_cache_report(model.config)))
    print(zeval.format_needle_grid(zeval.needle_in_a_haystack(model, tok, [1024, 4096])))

Multi-domain suite (held-out sources, zero-shot tasks through lm-eval, chat): `run_suite`, see
docs/evaluation.md.
The lm-eval-harness model ("zebra_jax") lives in `zebra_jax.eval.lm_eval_adapter` (needs lm-eval).
CLI: scripts/evaluate.py. See docs/export.md.
"""

import importlib

_EXPORTS = {
  "TokenScorer": "zebra_jax.eval.scoring",
  "rolling_windows": "zebra_jax.eval.scoring",
  "perplexity": "zebra_jax.eval.ppl",
  "perplexity_of_files": "zebra_jax.eval.ppl",
  "teacher_agreement": "zebra_jax.eval.agreement",
  "kv_cache_report": "zebra_jax.eval.kv_report",
  "format_kv_report": "zebra_jax.eval.kv_report",
  "needle_in_a_haystack": "zebra_jax.eval.needle",
  "make_needle_prompt": "zebra_jax.eval.needle",
  "format_needle_grid": "zebra_jax.eval.needle",
  "run_suite": "zebra_jax.eval.suite",
  "build_tasks": "zebra_jax.eval.tasks",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f"module 'zebra_jax.eval' has no attribute {name!r}")

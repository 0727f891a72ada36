"""`scripts/bench.py samples` (zebra_jax/bench/samples.py): the samples stage's generate call with and
without the windowed cache. Its timing is for the GPU; here, that it measures the call it claims to:
every row decodes all its tokens, the windowed runs give the full cache's tokens (float32), and the
cache length is the samples stage's."""

from __future__ import annotations

import pytest

from zebra_jax.bench import samples
from zebra_jax.distill.samples import PROMPT_BUCKET


def test_bench_samples_rows_decode_every_token_and_windows_equal_the_full_cache():
  argv = "--teacher tiny --dtype float32 --batch 3 --prompt-len 5 --longest 12 --new-tokens 20 --windows 0,8"
  md, rows = samples.main(argv.split())
  assert [r["window"] for r in rows] == [0, 8]
  for r in rows:
    assert r["new_tokens"] == 3 * 20 and all(len(t) == 20 for t in r["tokens"])  # no stop token
    assert r["cold_s"] > 0 and r["warm_s"] > 0
  assert rows[1]["tokens"] == rows[0]["tokens"]
  # the samples stage's cache: the longest prompt padded to the bucket, plus the new tokens, padded
  cache = -(-(-(-12 // PROMPT_BUCKET) * PROMPT_BUCKET + 20) // PROMPT_BUCKET) * PROMPT_BUCKET
  assert f"cache {cache} rows" in md
  assert "| 8 |" in md and md.rstrip().endswith("| yes |")


def test_bench_samples_refuses_a_negative_window():
  with pytest.raises(SystemExit, match="--windows"):
    samples.main(["--teacher", "tiny", "--windows", "0,-8"])

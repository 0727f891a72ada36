"""Kill-and-resume trials of the tiny pipeline (issue 18's red-team check, rerun on demand; not a
pytest file: it takes ~1 minute per trial on 2 CPU cores).

    python tests/resume_trials.py --trials 20 [--seed 0] [--out trials.json]

One uninterrupted run of configs/tiny.py (the FAST settings of tests/test_distill.py) is the
reference. Each trial starts a fresh workdir and sends SIGKILL or SIGTERM once a randomly chosen
training stage (ild_mla, ild_mamba, kd, dpo) has logged a randomly chosen step (a third of them at a
checkpoint step, when the save starts), sometimes twice in a row, then reruns the same command to
the end. A trial passes when SIGTERM exited 143, the finished run's loss curves (timing columns
left out) and every stage's parameters are identical to the reference, and the SMART placement is
the same. Prints one line per trial and a summary; exit 1 if any trial failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import test_distill as td  # noqa: E402  (the tiny-run helpers: command, environment, comparisons)

STEPS = {"ild_mla": 16, "ild_mamba": 16, "kd": 16, "dpo": 4}


def same_as(work, ref) -> str | None:
  """None when `work` finished identical to `ref`, else what differs."""
  for stage in td.TRAINED:
    if td.curve(work, stage) != td.curve(ref, stage):
      return f"{stage} loss curve differs"
  for stage in ("teacher", "ild_mla", "ild_mamba", "assemble", "kd", "dpo"):
    try:
      td.assert_same_params(work / stage / "model", ref / stage / "model")
    except AssertionError as e:
      return f"{stage} params: {e}"
  with open(work / "select" / "placement.json") as a, open(ref / "select" / "placement.json") as b:
    if json.load(a) != json.load(b):
      return "SMART placement differs"
  return None


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--trials", type=int, default=20)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None, help="write every trial as JSON here")
  a = p.parse_args(argv)
  rng = random.Random(a.seed)
  root = tempfile.mkdtemp(prefix="resume_trials_")
  from pathlib import Path

  root = Path(root)
  cache = str(root / "jax_cache")
  t0 = time.time()
  ref = root / "ref"
  td.distill(ref, cache)
  print(f"reference run: {time.time() - t0:.0f} s", flush=True)
  results = []
  for i in range(a.trials):
    work = root / f"t{i}"
    kills = []
    for _ in range(2 if rng.random() < 0.25 else 1):
      # a stage the workdir has not finished (a finished one would be signalled at startup)
      open_stages = [s for s in STEPS if not (work / s / "model").exists()]
      if not open_stages:
        break
      stage = rng.choice(open_stages)
      step = rng.choice(
        [s for s in range(4, STEPS[stage] + 1, 4)] if rng.random() < 1 / 3 else range(1, STEPS[stage] + 1)
      )
      sig = rng.choice([signal.SIGKILL, signal.SIGTERM])
      try:
        rc, out = td.kill_when(work, cache, stage, step, sig)
      except AssertionError as e:  # the run finished or passed the stage before the signal: no kill
        kills.append({"stage": stage, "step": step, "signal": sig.name, "skipped": str(e).splitlines()[0]})
        continue
      ok = rc == (143 if sig == signal.SIGTERM else -signal.SIGKILL)
      kills.append({"stage": stage, "step": step, "signal": sig.name, "rc": rc, "rc_ok": ok})
    r = td.distill(work, cache, check=False)
    diff = "final run exited %d" % r.returncode if r.returncode else same_as(work, ref)
    passed = diff is None and all(k.get("rc_ok", True) for k in kills)
    results.append({"trial": i, "kills": kills, "identical": diff is None, "passed": passed, "diff": diff})
    print(f"trial {i}: {'PASS' if passed else 'FAIL'} {kills} {diff or ''}", flush=True)
    shutil.rmtree(work, ignore_errors=True)
  n_pass = sum(r["passed"] for r in results)
  n_kills = sum(1 for r in results for k in r["kills"] if "rc" in k)
  print(
    f"{n_pass} of {len(results)} trials identical to the uninterrupted run ({n_kills} signals delivered), "
    f"{time.time() - t0:.0f} s"
  )
  if a.out:
    with open(a.out, "w") as f:
      json.dump(results, f, indent=2)
  shutil.rmtree(root, ignore_errors=True)
  return 0 if n_pass == len(results) else 1


if __name__ == "__main__":
  sys.exit(main())

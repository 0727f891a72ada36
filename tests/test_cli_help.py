"""`--help` of every script (issue 17 item 5): distill.py and report.py exit 0 and list their flags
(distill.py its `--config.*` fields too; absl's own --help exits 1), every argparse option has a help
text and shows its default."""

import os
import re
import subprocess
import sys

import pytest

from _runs import ROOT, load_script

from zebra_jax.distill.config import base_config


def test_distill_help_exits_0_and_lists_every_config_section():
  r = subprocess.run(
    [sys.executable, os.path.join(ROOT, "scripts", "distill.py"), "--help"],
    env=dict(os.environ, PYTHONPATH=ROOT),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert r.returncode == 0, r.stderr[-2000:]
  out = r.stdout
  assert "--workdir" in out and "--config.<section>.<field>=VALUE" in out
  sections = [k for k, v in base_config().items() if hasattr(v, "items") and len(v)]
  for section in sections:
    assert f"\n  {section}: " in out, section
  assert "loss_impl='logits'" in out and "round_tokens=0" in out


def test_a_one_point_loss_curve_is_visible(tmp_path):
  """A 1-step stage's loss_curve.png shows its point (it was a blank plot)."""
  import json

  import numpy as np
  from PIL import Image

  from zebra_jax.train.metrics import plot_loss_curve

  (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.5}) + "\n")
  img = np.asarray(Image.open(plot_loss_curve(str(tmp_path), "one step")).convert("RGB"))
  # matplotlib's default line colour (C0, #1f77b4) is drawn somewhere inside the axes
  blue = np.all(np.abs(img.astype(int) - [31, 119, 180]) < 30, axis=-1)
  assert blue.sum() > 10


ARGPARSE_SCRIPTS = (
  "bench",
  "convert",
  "evaluate",
  "export",
  "generate",
  "init_hybrid",
  "pretokenize",
  "scaling",
)


class _Parsed(Exception):
  pass


def _parsers_of(name, argv, monkeypatch):
  """The argparse parser(s) a script's main builds (parsing is stopped before anything runs),
  with their sub-command parsers."""
  import argparse

  def stop(self, *a, **k):
    raise _Parsed(self)

  monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
  monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", stop)
  mod = load_script(name)
  try:
    mod.main(argv)
  except _Parsed as e:
    parsers = [e.args[0]]
  else:
    raise AssertionError(f"{name}: main returned without parsing its arguments")
  for action in parsers[0]._actions:
    if isinstance(action, argparse._SubParsersAction):
      parsers += list(action.choices.values())
  return parsers


@pytest.mark.parametrize("name", ARGPARSE_SCRIPTS)
def test_every_option_of_every_script_says_what_it_is(name, monkeypatch):
  """Issue 17 item 5: each option of each script and sub-command has a help text, and the
  defaults are shown (zebra_jax.cli.HelpFormatter); docstring examples keep their line breaks."""
  from zebra_jax.cli import HelpFormatter

  missing = []
  for p in _parsers_of(name, [], monkeypatch):
    if p.add_help and p._actions:  # bench's pass-through sub-commands have their own parsers
      assert issubclass(p.formatter_class, HelpFormatter), (name, p.prog)
    for a in p._actions:
      if a.option_strings and a.dest != "help" and not (a.help or "").strip():
        missing.append(f"{p.prog} {a.option_strings[0]}")
    # a `\` continuation in a non-raw docstring joins two lines: "...   --flag" on one line
    assert not re.search(r"\S {5,}(--|\[)", p.description or ""), p.prog
  assert not missing, missing


def test_bench_subcommands_and_evaluate_lm_eval_have_help(monkeypatch, capsys):
  from zebra_jax.bench import decode, samples, speculative, train_step

  for mod in (decode, samples, speculative, train_step):
    with pytest.raises(SystemExit) as e:
      mod.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "(default: " in out, mod.__name__
  r = subprocess.run(
    [sys.executable, os.path.join(ROOT, "scripts", "evaluate.py"), "--help"],
    env=dict(os.environ, PYTHONPATH=ROOT),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert r.returncode == 0 and "lm-eval --model zebra_jax --model_args checkpoint=CKPT" in r.stdout


def test_report_help_exits_0_and_lists_its_flags():
  r = subprocess.run(
    [sys.executable, os.path.join(ROOT, "scripts", "report.py"), "--help"],
    env=dict(os.environ, PYTHONPATH=ROOT),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert r.returncode == 0, r.stderr[-2000:]
  assert "--budgets" in r.stdout and "--ablation_list" in r.stdout

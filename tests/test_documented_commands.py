"""Every `python scripts/<name>.py ...` command written in README.md, docs/*.md and the scripts'
own docstrings parses as written (issue 17 item 5): its sub-command and flags exist, and each
`--config.x.y=v` override names a config field. Nothing runs: argparse scripts stop right after
parsing (in this process), the absl ones (distill.py, report.py) parse their flags and build their
config in one subprocess each. Commands with shell variables or placeholders (`$O`, `<dir>`, `...`,
`[--opt]`, `a|b`) cannot be parsed as written and are left out; the tiny run that README shows is
run for real by tests/test_distill.py's fixture."""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from _runs import ROOT, load_config_file, load_script

ABSL_SCRIPTS = ("distill", "report")
_PLACEHOLDER = re.compile(r"\$|<[^>]*>|\.\.\.|\[-|\|")
_COMMAND = re.compile(r"(?:^|&&|;|`|\$ )\s*((?:[A-Z_]+=\S+\s+)*python3? scripts/(\w+)\.py\b[^`&;]*)")


def documented_commands() -> list[tuple[str, str, list[str]]]:
  """(where, script name, argv) for every parseable command in the docs and script docstrings."""
  files = (
    [os.path.join(ROOT, "README.md")]
    + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
    + sorted(glob.glob(os.path.join(ROOT, "scripts", "*.py")))
  )
  out = []
  for path in files:
    lines = open(path, encoding="utf-8").read().splitlines()
    i = 0
    while i < len(lines):
      start, text = i, lines[i]
      while text.rstrip().endswith("\\") and i + 1 < len(lines):  # shell line continuations
        i += 1
        text = text.rstrip()[:-1] + " " + lines[i].strip()
      i += 1
      for m in _COMMAND.finditer(text):
        command, name = m.group(1).strip(), m.group(2)
        if _PLACEHOLDER.search(command):
          continue
        try:
          words = shlex.split(command, comments=True)
        except ValueError:  # an unbalanced quote: prose, not a command
          continue
        while words and re.match(r"[A-Z_]+=", words[0]):  # VAR=value prefixes
          words.pop(0)
        if any(a == "--config" and re.fullmatch(r"[A-Z_]+", b) for a, b in zip(words, words[1:])):
          continue  # `--config CONFIG`: a placeholder for the reader's config file
        out.append((f"{os.path.relpath(path, ROOT)}:{start + 1}", name, words[2:]))
  return out


COMMANDS = documented_commands()


def test_the_docs_hold_commands_of_every_kind():
  """The extraction itself: most documented commands are found (it would pass vacuously
  otherwise)."""
  names = {name for _, name, _ in COMMANDS}
  assert {"distill", "report", "evaluate", "generate", "bench", "export"} <= names
  assert len(COMMANDS) >= 40


class _Parsed(Exception):
  """Raised by the patched argparse once a script's command line has parsed."""

  def __init__(self, namespace, rest=()):
    super().__init__("parsed")
    self.namespace, self.rest = namespace, list(rest)


def _stop_after_parsing(monkeypatch, pass_known: bool):
  """argparse stops the script right after its command line parses (SystemExit 2 as usual when
  it does not). A script's own parse_known_args (bench.py hands the rest to a sub-benchmark,
  and parses it) continues the first time when `pass_known`."""
  parse_args, parse_known = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args
  depth = {"n": 0, "direct": 0}

  def patched_parse_args(self, args=None, namespace=None):
    depth["n"] += 1
    try:
      ns = parse_args(self, args, namespace)
    finally:
      depth["n"] -= 1
    raise _Parsed(ns)

  def patched_parse_known(self, args=None, namespace=None):
    depth["n"] += 1
    try:
      ns, rest = parse_known(self, args, namespace)
    finally:
      depth["n"] -= 1
    if depth["n"] == 0:  # the script's own call, not argparse's internal one
      depth["direct"] += 1
      if not (pass_known and depth["direct"] == 1):
        raise _Parsed(ns, rest)
    return ns, rest

  monkeypatch.setattr(argparse.ArgumentParser, "parse_args", patched_parse_args)
  monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", patched_parse_known)


def _config_fields(cfg) -> set[str]:
  out = set()
  for k, v in cfg.items():
    out.add(k)
    if hasattr(v, "items"):
      out |= {f"{k}.{f}" for f in _config_fields(v)}
  return out


@pytest.mark.parametrize(
  "where, name, argv",
  [c for c in COMMANDS if c[1] not in ABSL_SCRIPTS],
  ids=lambda x: x if isinstance(x, str) else None,
)
def test_documented_argparse_command_parses(where, name, argv, monkeypatch, capsys):
  _stop_after_parsing(monkeypatch, pass_known=(name == "bench"))
  main = load_script(name).main
  try:
    main(argv)
  except _Parsed as e:
    parsed = e
  except SystemExit as e:
    if e.code == 0 and {"-h", "--help"} & set(argv):  # a documented --help
      return
    pytest.fail(
      f"{where}: `{name}.py {' '.join(argv)}` does not parse (exit {e.code}): "
      f"{capsys.readouterr().err.strip()[-500:]}"
    )
  else:
    pytest.fail(f"{where}: `{name}.py` returned without parsing its command line")
  rest = parsed.rest
  # scaling.py passes --config.x.y=v overrides through to distill: they must name config fields
  overrides = [a for a in rest if a.startswith("--config.")]
  assert len(overrides) == len(rest), f"{where}: arguments no parser took: {rest}"
  if overrides:
    ns = parsed.namespace
    stem = os.path.splitext(os.path.basename(ns.config))[0]
    fields = _config_fields(load_config_file(stem))
    for a in overrides:
      field = a[len("--config.") :].split("=", 1)[0]
      assert field in fields, f"{where}: {a} names no field of {ns.config}"


_ABSL_DRIVER = r"""
import importlib.util, json, sys
from absl import flags
spec = importlib.util.spec_from_file_location("_doc_script", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
errors = []
for argv in json.loads(sys.argv[2]):
  try:
    for name in [n for n in flags.FLAGS if n.startswith("config.")]:  # the last command's overrides
      delattr(flags.FLAGS, name)
    flags.FLAGS.unparse_flags()
    sys_argv, sys.argv = sys.argv, [sys.argv[1]] + argv  # config_flags reads overrides from sys.argv
    try:
      flags.FLAGS(sys.argv)
    finally:
      sys.argv = sys_argv
    flags.FLAGS.config.to_json()  # the config file built with its overrides
    errors.append(None)
  except BaseException as e:  # noqa: BLE001  reported with its command
    errors.append(f"{type(e).__name__}: {e}")
print(json.dumps(errors))
"""


@pytest.mark.parametrize("name", ABSL_SCRIPTS)
def test_documented_absl_commands_parse(name):
  cmds = [(where, argv) for where, n, argv in COMMANDS if n == name]
  assert cmds, f"no documented {name}.py command found"
  r = subprocess.run(
    [
      sys.executable,
      "-c",
      _ABSL_DRIVER,
      os.path.join(ROOT, "scripts", f"{name}.py"),
      json.dumps([argv for _, argv in cmds]),
    ],
    cwd=ROOT,
    env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert r.returncode == 0, r.stderr[-2000:]
  errors = json.loads(r.stdout.strip().splitlines()[-1])
  bad = [f"{where}: `{name}.py {' '.join(argv)}`: {err}" for (where, argv), err in zip(cmds, errors) if err]
  assert not bad, "\n".join(bad)


def test_the_readme_library_snippet_runs_as_written(tmp_path, smollm2_gguf):
  """README.md's "Using the library" block, run as a newcomer would paste it: a fresh HOME (no
  state of ours but the download cache, which the other tests share so the 98 MB GGUF is fetched
  once per machine: ZEBRA_JAX_CACHE names the directory the fixture fetched it into)."""
  readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
  section = readme[readme.index("## Using the library") :]
  code = section[section.index("```python\n") + len("```python\n") :]
  code = code[: code.index("```")]
  assert 'from_pretrained("smollm2")' in code
  home = tmp_path / "home"
  home.mkdir()
  env = dict(
    os.environ,
    HOME=str(home),
    PYTHONPATH=ROOT,
    JAX_PLATFORMS="cpu",
    ZEBRA_JAX_CACHE=os.path.dirname(smollm2_gguf),
  )
  env.pop("XDG_CACHE_HOME", None)
  r = subprocess.run(
    [sys.executable, "-c", code], cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600
  )
  assert r.returncode == 0, r.stderr[-3000:]
  lines = r.stdout.split()
  assert round(float(lines[-1]), 4) == 0.0391, r.stdout  # Zebra-1B's KV fraction, as commented
  assert 0 < float(lines[-2]) < 1, r.stdout

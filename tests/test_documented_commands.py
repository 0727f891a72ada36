"""Every `python scripts/<name>.py ...` command written in README.md, docs/*.md and the scripts'
own docstrings parses as written, and the fast ones run as written (issue 17 item 5).

Parsing: its sub-command and flags exist, and each `--config.x.y=v` override names a config field.
argparse scripts stop right after parsing (in this process), the absl ones (distill.py, report.py)
parse their flags and build their config in one subprocess each. Commands with shell variables or
placeholders (`$O`, `<dir>`, `...`, `[--opt]`, `a|b`) cannot be parsed as written and are left out.

Running: RULES classifies every extracted command, first matching rule wins: RUN (fast on a 2-core
CPU: no GPU / TPU, no model bigger than SmolLM2-135M, no run's output) or not run, with the reason
(a GPU, a 1B-8B model, a full smollm2 distillation, a placeholder path, or a test elsewhere that
runs the same: the tiny run is tests/test_distill.py's fixture, the CPU scaling smoke run
tests/test_scaling.py's). A new documented command that no rule matches fails
`test_every_documented_command_is_classified` until its author adds a rule. The RUN commands (today
`evaluate.py lm-eval run --help`, `evaluate.py kv --preset ...`, `generate.py --checkpoint smollm2 ...
--chat` and `init_hybrid.py --teacher smollm2 ...`, about 75 s together on 2 cores) run as
subprocesses with their argv as written, in a fresh directory holding symlinks `scripts` and
`configs` to the repo's (so relative paths resolve and outputs such as `workdir/...` land there),
with a fresh HOME and the shared download cache ($ZEBRA_JAX_CACHE: `smollm2` resolves without
network), PYTHONPATH the repo (as a clone's root would give), JAX on the CPU and JAX's persistent
compilation cache off (it would write into the shared cache). Two things differ from a reader's
paste: an absolute `/tmp/...` path in a command is rewritten into the test's temporary directory,
and a `VAR=value` prefix is applied to the environment. Each must exit 0 and print or write one
thing it promises (`_CHECKS`)."""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shlex
import subprocess
import sys
from typing import Callable

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
        env = {}
        while words and re.match(r"[A-Z_]+=", words[0]):  # VAR=value prefixes
          env.update([words.pop(0).split("=", 1)])
        if any(a == "--config" and re.fullmatch(r"[A-Z_]+", b) for a, b in zip(words, words[1:])):
          continue  # `--config CONFIG`: a placeholder for the reader's config file
        where = f"{os.path.relpath(path, ROOT)}:{start + 1}"
        out.append((where, name, words[2:]))
        if env:
          ENV_PREFIXES[(where, name, tuple(words[2:]))] = env
  return out


ENV_PREFIXES: dict[tuple[str, str, tuple[str, ...]], dict[str, str]] = {}  # a command's `VAR=value`s


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


def _fresh_home_env(home, smollm2_gguf, **extra) -> dict:
  """A newcomer's environment: a fresh HOME, the repo importable, JAX on the CPU, and the shared
  download cache (so `smollm2` resolves without the network)."""
  env = dict(
    os.environ,
    HOME=str(home),
    PYTHONPATH=ROOT,
    JAX_PLATFORMS="cpu",
    ZEBRA_JAX_CACHE=os.path.dirname(smollm2_gguf),
    **extra,
  )
  env.pop("XDG_CACHE_HOME", None)
  return env


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
  env = _fresh_home_env(home, smollm2_gguf)
  r = subprocess.run(
    [sys.executable, "-c", code], cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600
  )
  assert r.returncode == 0, r.stderr[-3000:]
  lines = r.stdout.split()
  assert round(float(lines[-1]), 4) == 0.0391, r.stdout  # Zebra-1B's KV fraction, as commented
  assert 0 < float(lines[-2]) < 1, r.stdout


# -- running the fast ones -------------------------------------------------------------------------
def _check_lm_eval_help(r, argv, cwd):
  assert "--model_args" in r.stdout, r.stdout[-2000:]  # lm-eval's own parser lists a run's options


def _check_kv(r, argv, cwd):
  m = re.search(r"KV cache per token: .* -> ([\d.]+)% of the GQA teacher", r.stdout)
  assert m and 0 < float(m.group(1)) < 100, r.stdout[-2000:]


def _check_generate(r, argv, cwd):
  assert "Paris" in r.stdout, r.stdout[-2000:]  # greedy SmolLM2 answers the documented question


def _check_compare(r, argv, cwd):
  # run 11 was kept over run 10 on the validation splits (docs/results.md)
  assert "chosen on validation data: **mixer_lr2**" in r.stdout, r.stdout[-2000:]


def _check_init_hybrid(r, argv, cwd):
  out = cwd / argv[argv.index("--output") + 1]
  for name in ("params", "config.json", "tokenizer.json", "generation_config.json", "provenance.json"):
    assert (out / name).exists(), f"{out} has no {name}: {sorted(os.listdir(out))}"
  assert json.loads((out / "provenance.json").read_text())["stage"] == "init"


_TINY_RUN = "the tiny run (every stage, ~2 min on 2 cores): tests/test_distill.py's tiny_run fixture runs it"
_PLACEHOLDER_PATH = "a placeholder path for the reader's own"
# (script, pattern searched in shlex.join(argv), verdict): a check function = RUN it and check its
# output; a string = not run, and why. The first rule that matches a command decides.
RULES: list[tuple[str, str, Callable | str]] = [
  ("evaluate", r"^lm-eval run --help$", _check_lm_eval_help),
  ("evaluate", r"^kv --preset [\w.-]+$", _check_kv),
  ("evaluate", r"^suite ", "scores a distilled checkpoint on lm-eval tasks whose datasets it downloads"),
  ("evaluate", r"^(agreement|needle) --checkpoint (CKPT|STUDENT) ", f"{_PLACEHOLDER_PATH} checkpoint"),
  ("evaluate", r"^compare docs/results/smollm2_135m_h100_run10_suite.json:mla9_smart ", _check_compare),
  (
    "evaluate",
    r"^compare A/suite.json:(LABEL|kd) B/suite.json:(LABEL|dpo)",
    f"{_PLACEHOLDER_PATH} suites; tests/test_compare.py runs it on the recorded run 10 / 11 suites",
  ),
  (
    "evaluate",
    r"^chat-validation --checkpoint kd=WD/kd/model ",
    f"{_PLACEHOLDER_PATH} workdir (a run's kd and dpo models; tests/test_chat_validation.py checks the parts)",
  ),
  ("generate", r"^--checkpoint smollm2 --prompt '[^']+' --chat$", _check_generate),
  (
    "generate",
    r"^--checkpoint /tmp/zebra_tiny/kd/model .*--mesh 2,1,1$",
    "a tiny run's KD model (a 2-min run) on 2 simulated devices: tests/test_generate_sharded.py::"
    "test_generate_cli_with_mesh_prints_the_unsharded_text runs generate.py --mesh on CPU devices, "
    "tests/test_distill.py::test_a_newcomers_path_from_a_run_to_transformers on the tiny KD model",
  ),
  ("generate", r"^--checkpoint saved_hybrid/ ", f"{_PLACEHOLDER_PATH} checkpoint"),
  ("init_hybrid", r"^--teacher smollm2 --output [\w./-]+$", _check_init_hybrid),
  ("init_hybrid", r"^--teacher /path/to/", f"{_PLACEHOLDER_PATH} 1B Llama teacher"),
  (
    "distill",
    r"--aot-topology ",
    "TPU AOT compilation of a 3B / 8B config for a pod slice (minutes and GBs of host memory per "
    "stage); tests/test_aot.py compiles the tiny config",
  ),
  ("distill", r"--config configs/zebra_(3b|8b)\.py", "a 3B / 8B distillation on a TPU pod or 8 GPUs"),
  (
    "distill",
    r"--config configs/smollm2_135m\.py",
    "a smollm2 distillation (49k teacher samples, up to 1,900 steps of a 135M student: a GPU)",
  ),
  ("distill", r"^--config configs/tiny\.py --workdir ", _TINY_RUN),
  ("report", r"", "a whole report: several smollm2 distillations and their evaluations (a GPU, hours)"),
  (
    "scaling",
    r"^--config configs/tiny\.py .*--platform cpu$",
    "tests/test_scaling.py::test_cpu_smoke_run_measures_both_device_counts_and_appends_the_table "
    "runs it (3 steps instead of 6)",
  ),
  ("scaling", r"^--config configs/smollm2_135m\.py ", "a smollm2 stage on 1 to 8 GPUs"),
  ("bench", r"^kernels ", "a GPU kernel benchmark (Pallas / Triton kernels)"),
  ("bench", r"^generate --size 1b ", "decode throughput of a 1B model (a GPU)"),
  ("bench", r"^speculative\b", "distils a SmolLM2 draft for hundreds of steps, then times decoding (a GPU)"),
  (
    "bench",
    r"^samples\b",
    "times the samples stage's decode of a 135M teacher, 256 x 960 tokens per call (a GPU); "
    "tests/test_bench_samples.py runs it on a tiny teacher",
  ),
  ("bench", r"^train .*--student PRESET$", f"{_PLACEHOLDER_PATH} preset (PRESET)"),
  ("bench", r"^train ", "a training-step benchmark of a 135M-1B student at 2048 tokens (a GPU)"),
  ("pretokenize", r"--input corpus\.jsonl ", f"{_PLACEHOLDER_PATH} corpus and teacher"),
  (
    "export",
    r"^--checkpoint runs/zebra_1b/",
    "a 1B run's output; tests/test_distill.py::test_a_newcomers_path_from_a_run_to_transformers "
    "exports the tiny run's KD model",
  ),
]


def _rule(name: str, argv: list[str]) -> int | None:
  """The index in RULES of the first rule that matches (None: no rule does)."""
  text = shlex.join(argv)
  return next((i for i, (n, pattern, _) in enumerate(RULES) if n == name and re.search(pattern, text)), None)


def classify(name: str, argv: list[str]) -> Callable | str | None:
  """The verdict of the first rule that matches (None: no rule does)."""
  i = _rule(name, argv)
  return None if i is None else RULES[i][2]


def _kind(name, argv):
  return f"{name} {argv[0]}" if argv and not argv[0].startswith("-") else name


def _run_commands() -> list[tuple[str, str, list[str]]]:
  """The RUN commands, each distinct one once, named by every place that documents it."""
  seen: dict[tuple[str, tuple[str, ...]], list[str]] = {}
  for where, name, argv in COMMANDS:
    if callable(classify(name, argv)):
      seen.setdefault((name, tuple(argv)), []).append(where)
  return [(",".join(wheres), name, list(argv)) for (name, argv), wheres in seen.items()]


RUN_COMMANDS = _run_commands()


def test_every_documented_command_is_classified():
  """A command no rule matches fails here: decide whether it runs in CI (a check in RULES) or not
  (the reason). Every rule still decides a command, and the RUN set holds the kinds expected."""
  unclassified = [
    f"{where}: python scripts/{name}.py {shlex.join(argv)}"
    for where, name, argv in COMMANDS
    if classify(name, argv) is None
  ]
  assert not unclassified, "add a rule to RULES for each of these documented commands:\n" + "\n".join(
    unclassified
  )
  used = {_rule(name, argv) for _, name, argv in COMMANDS}
  unused = [RULES[i][:2] for i in range(len(RULES)) if i not in used]
  assert not unused, f"rules that decide no documented command (remove them): {unused}"
  assert {_kind(name, argv) for _, name, argv in RUN_COMMANDS} == {
    "evaluate lm-eval",
    "evaluate kv",
    "evaluate compare",
    "generate",
    "init_hybrid",
  }


def _into(tmp, word: str) -> str:
  """`word` with an absolute /tmp/... path (alone or after `=`) moved under `tmp`."""
  return re.sub(r"(^|=)/tmp/", lambda m: f"{m.group(1)}{tmp}/", word)


def test_absolute_tmp_paths_move_into_the_test_directory():
  assert _into("/x", "/tmp/zebra_tiny") == "/x/zebra_tiny"
  assert _into("/x", "--out=/tmp/a/b") == "--out=/x/a/b"
  assert _into("/x", "workdir/tmp/a") == "workdir/tmp/a" and _into("/x", "/tmpfoo") == "/tmpfoo"


@pytest.mark.parametrize("where, name, argv", RUN_COMMANDS, ids=lambda x: x if isinstance(x, str) else None)
def test_documented_fast_command_runs_as_written(where, name, argv, tmp_path, smollm2_gguf):
  """The command's own argv, from a fresh directory with `scripts` and `configs` linked to the repo's
  and a fresh HOME; /tmp/... paths rewritten into the test's directory (see the module docstring)."""
  cwd, home = tmp_path / "cwd", tmp_path / "home"
  for d in (cwd, home, tmp_path / "tmp"):
    d.mkdir()
  for d in ("scripts", "configs", "docs"):  # docs: the recorded results some commands read
    os.symlink(os.path.join(ROOT, d), cwd / d)
  check = classify(name, argv)
  prefix = ENV_PREFIXES.get((where.split(",")[0], name, tuple(argv)), {})
  argv = [_into(tmp_path / "tmp", a) for a in argv]
  env = _fresh_home_env(home, smollm2_gguf, ZEBRA_JAX_COMPILATION_CACHE="0")  # not in the shared cache
  env.update({k: _into(tmp_path / "tmp", v) for k, v in prefix.items()})
  r = subprocess.run(
    [sys.executable, f"scripts/{name}.py", *argv],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert r.returncode == 0, f"{where}: exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
  check(r, argv, cwd)

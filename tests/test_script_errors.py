"""Errors a person can read (issue 18 item 10): every script ends on a config, path, checkpoint,
data or workdir problem with one line `error: ...` naming the file / field / flag, exit 2 and no
traceback (zebra_jax/cli.py); ZEBRA_JAX_DEBUG=1 shows the traceback. The scripts' `main(argv)` run
in this process (one subprocess: absl parses distill.py's flags before `main`)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from _runs import ROOT, load_config_file, load_script

from zebra_jax.cli import EXIT_ERROR, ScriptError, script_errors
from zebra_jax.config import LlamaConfig

SCRIPTS = (
  "bench",
  "convert",
  "distill",
  "evaluate",
  "export",
  "generate",
  "init_hybrid",
  "pretokenize",
  "report",
  "scaling",
)
TINY = dict(
  vocab_size=64,
  hidden_size=32,
  intermediate_size=48,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
)


def _fails(capsys, main, argv) -> str:
  """main(argv) must exit 2 with one `error:` line on stderr; returns that line."""
  with pytest.raises(SystemExit) as e:
    main(argv)
  err = capsys.readouterr().err
  assert e.value.code == EXIT_ERROR, err
  lines = [line for line in err.splitlines() if line.strip()]
  assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
  return lines[0]


HF = {"model_type": "llama", **TINY, "hidden_act": "silu"}


@pytest.mark.parametrize(
  "config, needle",
  [
    ([1, 2], "config.json: a config must be a JSON object of fields, got a list"),
    (
      {k: v for k, v in HF.items() if k != "vocab_size"},
      "config.json: HF config cannot be converted faithfully: missing field(s) ['vocab_size']",
    ),
    (
      {**HF, "tie_word_embeddings": "false"},
      "config.json: tie_word_embeddings must be true or false, got 'false'",
    ),
  ],
  ids=["json_list", "no_vocab_size", "tie_string"],
)
def test_a_bad_hf_config_is_one_line_naming_the_file_and_field(tmp_path, capsys, config, needle):
  """A config.json that is a list (was a TypeError traceback), one without vocab_size (a KeyError
  traceback), `tie_word_embeddings: "false"` (read as true: a confusing error about tied weights).
  The directory holds config.json alone: the config is read before any weight."""
  d = tmp_path / "hf"
  d.mkdir()
  (d / "config.json").write_text(json.dumps(config))
  line = _fails(capsys, load_script("convert").main, ["--input", str(d), "--output", str(tmp_path / "out")])
  assert line == f"error: {d}/{needle}" + (" (a Llama config needs them)" if "missing" in needle else "")
  assert not (tmp_path / "out").exists()


def test_a_saved_directory_without_params_says_so(tmp_path, capsys):
  """It was read as an HF config: "unsupported config field(s) ['__class__', ...]"."""
  d = tmp_path / "saved"
  d.mkdir()
  (d / "config.json").write_text(LlamaConfig(**TINY).to_json())
  line = _fails(
    capsys, load_script("generate").main, ["--checkpoint", str(d), "--prompt", "hi", "--tokenizer", "byte"]
  )
  assert line == (
    f"error: {d}: a save_model directory without its parameter checkpoint params/ "
    "(the save did not finish, or params/ was moved)"
  )


@pytest.mark.parametrize(
  "extra, needle",
  [
    (["--repetition-penalty", "0"], "--repetition-penalty 0.0: must be a finite number > 0 (1 = off)"),
    (
      ["--repetition-penalty", "1.2", "--draft", "x"],
      "--repetition-penalty with --draft: speculative decoding has none; drop one of them",
    ),
  ],
)
def test_generate_refuses_an_impossible_repetition_penalty_before_loading(extra, needle, capsys):
  line = _fails(capsys, load_script("generate").main, ["--checkpoint", "nowhere", "--prompt", "hi", *extra])
  assert line == f"error: {needle}"


def test_the_suite_names_a_mistyped_checkpoint_before_anything_else(tmp_path, capsys):
  """It said "--teacher is required (no teacher recorded next to the checkpoint)", hiding the typo."""
  missing = tmp_path / "wokrdir" / "kd" / "model"
  line = _fails(
    capsys,
    load_script("evaluate").main,
    ["suite", "--checkpoint", str(missing), "--out", str(tmp_path / "s")],
  )
  assert line == f"error: --checkpoint {missing}: no such file or directory"
  assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
  "args, needle",
  [
    (["--tasks", "wn_definitionz"], "error: tasks: unknown task(s) ['wn_definitionz']; tasks: ['wn_"),
    (["--limit", "0"], "error: limit must be a whole number >= 1, got 0"),
    (["--max_tokens", "-1"], "error: max_tokens must be >= 0 tokens per domain (0 or None: all), got -1"),
    (["--seq_len", "0"], "error: seq_len must be a whole number >= 2, got 0"),
    (["--batch_size", "0"], "error: batch_size must be a whole number >= 1, got 0"),
    (["--chat_tokens", "0"], "error: chat_tokens must be a whole number >= 1, got 0"),
  ],
)
def test_suite_settings_that_cannot_work_are_refused_before_anything_runs(tmp_path, capsys, args, needle):
  """A hostile pass (2026-12-07): a mistyped task was left out after every model was scored (exit
  0), `--limit 0` ran every item, `--max_tokens -1` scored 63 tokens a domain, and a zero
  --seq_len / --batch_size / --chat_tokens failed only after the teacher's domains were scored,
  naming an internal argument."""
  line = _fails(
    capsys,
    load_script("evaluate").main,
    ["suite", "--checkpoint", str(tmp_path), "--teacher", str(tmp_path / "t"), "--tokenizer", "byte"]
    + ["--out", str(tmp_path / "s"), *args],
  )
  assert line.startswith(needle)
  assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
  "text, needle",
  [('{"data": ', "not JSON (Expecting value"), ("[1, 2]", "not a run's config.json (a JSON object)")],
)
def test_a_suite_run_config_that_is_not_a_config_is_one_line(tmp_path, capsys, text, needle):
  """It was a JSONDecodeError / AttributeError traceback."""
  rc = tmp_path / "config.json"
  rc.write_text(text)
  line = _fails(
    capsys,
    load_script("evaluate").main,
    ["suite", "--checkpoint", str(tmp_path), "--teacher", "smollm2", "--run_config", str(rc)]
    + ["--out", str(tmp_path / "s")],
  )
  assert line.startswith(f"error: --run_config {rc}: {needle}")


def test_a_damaged_run_config_next_to_the_checkpoint_is_one_line(tmp_path, capsys):
  """<workdir>/config.json that does not parse was a JSONDecodeError traceback."""
  model = tmp_path / "wd" / "kd" / "model"
  model.mkdir(parents=True)
  (tmp_path / "wd" / "config.json").write_text('{"data": {')
  line = _fails(
    capsys,
    load_script("evaluate").main,
    ["suite", "--checkpoint", str(model), "--teacher", str(tmp_path / "t"), "--tokenizer", "byte"]
    + ["--out", str(tmp_path / "s")],
  )
  recorded = tmp_path / "wd" / "config.json"
  assert line.startswith(f"error: {recorded}: the run config recorded next to {model} is not JSON (")


@pytest.mark.parametrize("flag", ["--batch", "--seq-len", "--steps"])
def test_bench_train_refuses_a_zero_size_before_building_models(capsys, flag):
  """`--batch 0` was a ZeroDivisionError traceback after both models were built."""
  small = ["--student", "zebra_smollm2_135m_9mla21m2", "--teacher", "smollm2-135m-instruct"]
  line = _fails(capsys, load_script("bench").main, ["train", *small, flag, "0"])
  assert line == f"error: {flag} must be >= 1, got 0"


def test_a_binary_data_file_is_named(tmp_path, capsys):
  """A binary file given as text was a UnicodeDecodeError naming no file."""
  data = tmp_path / "corpus.txt"
  data.write_bytes(bytes([0xF8, 0x00, 0x9C]) + os.urandom(256))
  line = _fails(
    capsys,
    load_script("pretokenize").main,
    ["--input", str(data), "--tokenizer", "byte", "--output", str(tmp_path / "shards")],
  )
  assert line.startswith(f"error: {data}: not UTF-8 text (byte 0xf8 at offset 0)")


def test_a_workdir_that_is_a_file_is_one_line(tmp_path, capsys):
  """`--workdir` naming a file was a FileExistsError traceback after the preflight."""
  from zebra_jax.distill.pipeline import run_pipeline

  path = tmp_path / "notes.txt"
  path.write_text("mine")
  cfg = load_config_file("tiny")
  with pytest.raises(SystemExit) as e, script_errors():  # as distill.py's main
    run_pipeline(cfg, str(path), progress=False)
  err = capsys.readouterr().err
  assert e.value.code == EXIT_ERROR and "Traceback" not in err
  assert err == (f"error: workdir {path} exists and is not a directory; choose another --workdir\n")
  assert path.read_text() == "mine"


def test_distill_names_a_config_override_that_is_no_field():
  """`--config.foo.bar=1` was a KeyError traceback from ml_collections (absl parses the flags
  before main, so this one runs the script)."""
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  cmd = [
    sys.executable,
    os.path.join(ROOT, "scripts", "distill.py"),
    "--config",
    os.path.join(ROOT, "configs", "tiny.py"),
  ]
  r = subprocess.run(
    cmd + ["--config.foo.bar=1", "--config.kd.stepz=5"], env=env, capture_output=True, text=True, timeout=300
  )
  assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
  assert r.stderr.strip() == (
    "error: --config.foo.bar=1: the config has no field 'foo' (--help lists the fields)"
  )


def test_report_checks_the_suite_tasks_before_training(tmp_path):
  """`report.py --suite_tasks=bogus` trained every variant, then left the task out of the suite
  with a log line (exit 0); it is refused before the first stage."""
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, os.path.join(ROOT, "scripts", "report.py"), "--config"]
  cmd += [os.path.join(ROOT, "configs", "tiny.py"), "--root", str(tmp_path / "r"), "--suite_tasks=bogus"]
  r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
  assert r.stderr.strip().startswith("error: --suite_tasks: unknown task(s) ['bogus']; tasks: ['wn_")
  assert not (tmp_path / "r").exists()


def test_a_config_file_that_does_not_load_is_one_line(tmp_path):
  """A missing `--config` file was a chained traceback from deep in the run (ml_collections keeps
  a placeholder that raises on first use); a config whose get_config() raises was its traceback
  inside the flag error; a file that does not compile or import was a raw traceback. All: one
  line naming the flag and file, exit 2."""
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  bad = tmp_path / "bad.py"
  bad.write_text("def get_config():\n  raise ValueError('boom')\n")
  typo, missing_import = tmp_path / "typo.py", tmp_path / "imports.py"
  typo.write_text("def get_config()\n  return None\n")
  missing_import.write_text("import no_such_module_zj\n")
  for config, want in [
    (
      str(typo),
      f"error: --config {typo}: the config file did not load (SyntaxError: expected ':', line 1; "
      "ZEBRA_JAX_DEBUG=1 shows the traceback)",
    ),
    (
      str(missing_import),
      f"error: --config {missing_import}: the config file did not load (ModuleNotFoundError: No module "
      "named 'no_such_module_zj'; ZEBRA_JAX_DEBUG=1 shows the traceback)",
    ),
    (
      str(tmp_path / "missing.py"),
      f"error: --config {tmp_path / 'missing.py'}: the config file did not load (no such file)",
    ),
    (
      str(bad),
      f"error: flag --config={bad}: Error whilst parsing config file: "
      "ValueError: boom (ZEBRA_JAX_DEBUG=1 shows the traceback)",
    ),
  ]:
    r = subprocess.run(
      [
        sys.executable,
        os.path.join(ROOT, "scripts", "distill.py"),
        "--config",
        config,
        "--workdir",
        str(tmp_path / "w"),
      ],
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
    )
    assert r.returncode == 2 and r.stderr.strip() == want, r.stderr[-2000:]
  assert not (tmp_path / "w").exists()


def test_a_tokenizer_name_that_is_nothing_is_refused_at_once(tmp_path, capsys):
  """`--tokenizer nope` went to the hub (a minute of retries offline) and ended in a traceback."""
  data = tmp_path / "corpus.txt"
  data.write_text("some text\n")
  line = _fails(
    capsys,
    load_script("pretokenize").main,
    ["--input", str(data), "--tokenizer", "nope", "--output", str(tmp_path / "shards")],
  )
  assert line.startswith(
    "error: could not load a tokenizer from 'nope': expected 'byte', a named checkpoint (smollm2"
  )


def test_init_hybrid_refuses_a_zero_rank(tmp_path, capsys):
  """`--kv-lora-rank 0` was read as "the default" and a hybrid was saved."""
  with pytest.raises(SystemExit) as e:
    load_script("init_hybrid").main(
      ["--teacher", "smollm2", "--kv-lora-rank", "0", "--output", str(tmp_path / "out")]
    )
  assert e.value.code == 2
  assert capsys.readouterr().err.strip().endswith("error: --kv-lora-rank must be >= 1, got 0")
  assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback_and_bugs_keep_theirs(monkeypatch, capsys):
  """ZEBRA_JAX_DEBUG=1: the traceback, then the line, same exit code. An error that is not one of
  ours (a bug) is not turned into a line."""

  def bad():
    raise ScriptError("--x 3: must be even")

  monkeypatch.setenv("ZEBRA_JAX_DEBUG", "1")
  with pytest.raises(SystemExit) as e:
    script_errors()(bad)()
  err = capsys.readouterr().err
  assert e.value.code == 2 and "Traceback" in err and err.endswith("error: --x 3: must be even\n")
  monkeypatch.delenv("ZEBRA_JAX_DEBUG")
  with pytest.raises(ZeroDivisionError):
    with script_errors():
      1 / 0
  missing = os.path.join(ROOT, "no such file")
  with pytest.raises(SystemExit) as e, script_errors():  # a path given wrong: no [Errno 2]
    open(missing)
  assert e.value.code == 2
  assert capsys.readouterr().err == f"error: {missing}: No such file or directory\n"


def test_a_value_our_check_refuses_is_one_line_a_deeper_error_keeps_its_traceback(capsys):
  """A ValueError from a `raise` in zebra_jax (an input check: here SamplingConfig's) was a
  traceback; now one line and exit 2. One raised deeper (jax's broadcasting inside a zebra_jax
  function, numpy's reshape) is still a traceback: it may be a bug."""
  import jax.numpy as jnp
  import numpy as np

  from zebra_jax.infer.sampling import SamplingConfig
  from zebra_jax.models import rope

  with pytest.raises(SystemExit) as e, script_errors():
    SamplingConfig(0.7, top_k=-1)
  assert e.value.code == EXIT_ERROR
  assert capsys.readouterr().err == "error: top_k must be a non-negative int or None, got -1\n"
  with pytest.raises(TypeError), script_errors():
    rope.apply_rope_half(jnp.zeros((1, 4, 2, 8)), jnp.zeros((1, 5, 4)), jnp.zeros((1, 5, 4)))
  with pytest.raises(ValueError), script_errors():
    np.zeros(3).reshape(2)
  assert capsys.readouterr().err == ""


def test_every_script_uses_the_shared_helper():
  """One helper, no per-script copies: each script's main is wrapped in script_errors (the absl
  ones also parse their flags with parse_absl_flags)."""
  for name in SCRIPTS:
    with open(os.path.join(ROOT, "scripts", f"{name}.py")) as f:
      text = f.read()
    assert re.search(r"^@script_errors\(\).*\ndef main\(", text, re.M), name
    if "app.run(" in text:
      assert "flags_parser=parse_absl_flags" in text, name

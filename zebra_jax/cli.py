"""How every script in scripts/ ends on an error: one line a person can act on, and an exit code.

    @script_errors()
    def main(argv=None): ...

| exit | when | stderr |
| ---: | --- | --- |
| 2 | a config, path, checkpoint, data, asset or workdir problem (the project's own error types, a file that is missing / in the way / not readable, a bad flag, a ValueError / TypeError raised by a check in zebra_jax or scripts/) | `error: ...`, one line naming the file, field or flag |
| 3 | a non-finite loss (NonFiniteLossError) | its message |
| 4 | the disk is full (DiskFull) | its message |
| 143 | SIGTERM (Preempted) | its message |

Anything else is a bug and keeps its traceback: a ValueError / TypeError counts as a checked input
only when the statement that raised it is a `raise` in this project's code (so one from numpy, from
jax, or from a bad `int(...)` in our code stays a traceback). `ZEBRA_JAX_DEBUG=1` in the environment prints the
traceback of these errors too (same exit code).

The error classes are looked up in the modules already imported (an error of a module that was
never imported cannot have been raised), so importing this module imports nothing heavy.
"""

from __future__ import annotations

import argparse
import contextlib
import linecache
import os
import sys
import traceback

EXIT_ERROR, EXIT_NON_FINITE, EXIT_DISK_FULL, EXIT_PREEMPTED = 2, 3, 4, 143
DEBUG_ENV = "ZEBRA_JAX_DEBUG"


class ScriptError(Exception):
  """A script's own check of its arguments failed; the message names the flag."""


# (module, class): a person's problem, exit 2 with one line
_USER_ERRORS = (
  ("zebra_jax.cli", "ScriptError"),
  ("zebra_jax._paths", "OutputPathError"),
  ("zebra_jax.config", "ConfigError"),
  ("zebra_jax.convert", "CheckpointError"),
  ("zebra_jax.assets", "AssetError"),
  ("zebra_jax.data.sources", "DataError"),
  ("zebra_jax.data.fetch", "FetchError"),
  ("zebra_jax.distill.config", "RunConfigError"),
  ("zebra_jax.distill.aot", "AOTError"),
  ("zebra_jax.distill.workdir", "WorkdirBusy"),
  ("zebra_jax.train.checkpoint", "CheckpointCorrupt"),
)
# a path given wrong: missing, in the way, not a directory, not readable
_OS_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)
# (module, class, exit code): a run that stopped on purpose, its message as it is
_STOPS = (
  ("zebra_jax.train.trainer", "Preempted", EXIT_PREEMPTED),
  ("zebra_jax.train.trainer", "NonFiniteLossError", EXIT_NON_FINITE),
  ("zebra_jax.train.checkpoint", "DiskFull", EXIT_DISK_FULL),
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
  """Every option's default in its help (unless None / False, or the help already says it), and
  descriptions / epilogs kept as written (their example commands paste as they are)."""

  def _get_help_string(self, action):
    text = action.help or ""
    if action.default in (None, False) or "default" in text.lower():
      return text
    return super()._get_help_string(action)


def argument_parser(description: str, **kwargs) -> argparse.ArgumentParser:
  """The scripts' argparse parser: defaults shown (`HelpFormatter`)."""
  return argparse.ArgumentParser(description=description, formatter_class=HelpFormatter, **kwargs)


def with_help_formatter(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
  """Gives every sub-command parser of `parser` the same formatter (argparse does not pass it on)."""
  for action in parser._actions:  # argparse has no public accessor for the sub-parsers
    if isinstance(action, argparse._SubParsersAction):
      for sp in action.choices.values():
        sp.formatter_class = HelpFormatter
  return parser


HELP_ARGS = ("-h", "-?", "--help", "--helpshort", "-help")


def absl_help(doc: str) -> None:
  """--help of an absl script: its docstring and its own flags, exit 0 (absl's own exits 1)."""
  from absl import flags

  print(doc.strip() + "\n\nflags:\n" + flags.FLAGS.main_module_help())
  sys.exit(0)


def debug() -> bool:
  return os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")


def _cls(module: str, name: str):
  m = sys.modules.get(module)
  return getattr(m, name, None) if m is not None else None


# where the project's own checks live: the package and the scripts beside it
_OWN_DIRS = tuple(
  os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), d) + os.sep
  for d in ("zebra_jax", "scripts")
)


def raised_by_a_check(e: BaseException) -> bool:
  """Whether `e` is a ValueError / TypeError that a `raise` statement of zebra_jax or scripts/
  raised itself: an input check with a message for a person, not a failure deeper down."""
  if type(e) not in (ValueError, TypeError):  # subclasses (e.g. jax's) are other things
    return False
  tb = e.__traceback__
  if tb is None:
    return False
  while tb.tb_next is not None:
    tb = tb.tb_next
  path = os.path.abspath(tb.tb_frame.f_code.co_filename)
  if not path.startswith(_OWN_DIRS):
    return False
  return linecache.getline(path, tb.tb_lineno).lstrip().startswith("raise ")


def exit_code(e: BaseException) -> int | None:
  """The exit code of a script that stops on `e`, None for an error that is a bug."""
  for module, name, code in _STOPS:
    cls = _cls(module, name)
    if cls is not None and isinstance(e, cls):
      return code
  user = tuple(c for c in (_cls(m, n) for m, n in _USER_ERRORS) if c is not None)
  return EXIT_ERROR if isinstance(e, _OS_ERRORS + user) or raised_by_a_check(e) else None


def message(e: BaseException) -> str:
  """`e` as one line for a person: an OSError as `path: reason`, without `[Errno n]`."""
  if isinstance(e, OSError) and e.filename is not None and e.strerror:
    return f"{e.filename}: {e.strerror}"
  return str(e) or type(e).__name__


@contextlib.contextmanager
def script_errors():
  """Ends the script on a known error with its exit code and one line on stderr (the table above);
  usable as a decorator of `main`."""
  try:
    yield
  except Exception as e:  # noqa: BLE001  re-raised below unless it is one of ours
    code = exit_code(e)
    if code is None:
      raise
    if debug():
      traceback.print_exc()
    print(("error: " if code == EXIT_ERROR else "") + message(e), file=sys.stderr)
    sys.exit(code)


def _check_config_files(flag_values) -> None:
  """A `--config FILE` that did not load: ml_collections keeps a placeholder that raises on first
  use, deep in the run, as a two-part traceback. Say so here, naming the flag and the file."""
  for name in list(flag_values):
    value = flag_values[name].value
    if type(value).__name__ != "_ErrorConfig":
      continue
    error = object.__getattribute__(value, "_error")
    text = str(error)
    reason = (
      "no such file"
      if "No such file" in text
      else text.strip().splitlines()[-1].strip()
      if text.strip()
      else type(error).__name__
    )
    path = flag_values[name].serialize().split("=", 1)[-1] or "?"
    print(f"error: --{name} {path}: the config file did not load ({reason})", file=sys.stderr)
    sys.exit(EXIT_ERROR)


def _config_arg(argv: list[str]) -> str:
  """The FILE of `--config FILE` / `--config=FILE` in argv ("?" when absent)."""
  for i, a in enumerate(argv):
    if a == "--config" and i + 1 < len(argv):
      return argv[i + 1]
    if a.startswith("--config="):
      return a.split("=", 1)[1]
  return "?"


def parse_absl_flags(argv: list[str]) -> list[str]:
  """`app.run(main, flags_parser=parse_absl_flags)`: a bad flag, or a `--config.x.y=v` override
  that names no config field (ml_collections raises KeyError / AttributeError, a traceback under
  absl's own parser), is one line and exit 2."""
  from absl import flags

  try:
    rest = flags.FLAGS(argv)
    _check_config_files(flags.FLAGS)
    return rest
  except flags.Error as e:
    if debug():
      traceback.print_exc()
    text = str(e)
    if "Traceback (most recent call last)" in text:  # a config file's get_config() raised
      first = text.split("\n", 1)[0].rstrip(": ")
      last = [line for line in text.splitlines() if line.strip()][-1].strip()
      print(f"error: {first}: {last} ({DEBUG_ENV}=1 shows the traceback)", file=sys.stderr)
    else:
      print(f"error: {text} (--help lists the flags)", file=sys.stderr)
  except (SyntaxError, ImportError, NameError) as e:  # the config file itself does not run
    if debug():
      traceback.print_exc()
    where = f", line {e.lineno}" if isinstance(e, SyntaxError) and e.lineno else ""
    reason = (e.msg if isinstance(e, SyntaxError) else str(e)) or type(e).__name__
    print(
      f"error: --config {_config_arg(argv)}: the config file did not load "
      f"({type(e).__name__}: {reason}{where}; {DEBUG_ENV}=1 shows the traceback)",
      file=sys.stderr,
    )
  except (KeyError, AttributeError) as e:
    if debug():
      traceback.print_exc()
    arg = e.args[0] if e.args else str(e)
    while isinstance(arg, BaseException) and arg.args:  # AttributeError(KeyError(message))
      arg = arg.args[0]
    text = str(arg)
    first, _, hint = text.partition("\n")
    field = first.strip("'\" ")
    hint = f"; {hint[:1].lower()}{hint[1:]}" if hint else ""
    given = [
      a
      for a in argv[1:]
      if a.startswith("--config.") and field in a.split("=", 1)[0][len("--config.") :].split(".")
    ]
    if given:
      print(
        f"error: {given[0]}: the config has no field {field!r}{hint} (--help lists the fields)",
        file=sys.stderr,
      )
    else:
      print(f"error: --config: {type(e).__name__}: {first}{hint}", file=sys.stderr)
  sys.exit(EXIT_ERROR)


__all__ = [
  "ScriptError",
  "script_errors",
  "parse_absl_flags",
  "exit_code",
  "message",
  "debug",
  "DEBUG_ENV",
  "EXIT_ERROR",
  "EXIT_NON_FINITE",
  "EXIT_DISK_FULL",
  "EXIT_PREEMPTED",
]

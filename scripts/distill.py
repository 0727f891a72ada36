"""Staged, sharded, resumable distillation of a Zebra / MambaInLlama hybrid from a Llama teacher.

  python scripts/distill.py --config configs/smollm2_135m.py --workdir workdir/smollm2
  python scripts/distill.py --config configs/tiny.py --workdir /tmp/tiny --config.kd.steps=50
  python scripts/distill.py --config configs/zebra_3b.py --aot-topology v5p:4x4x4

Rerunning the same command resumes: finished stages (their artifact exists in the workdir) are
skipped and an interrupted stage continues from its last checkpoint. SIGTERM saves and exits (143).
"""

from __future__ import annotations

import os
import signal
import sys


def _sigterm_while_starting(*_):
  # a preemption before the run's own handler exists (importing jax takes seconds): one line and
  # exit 143 like any other SIGTERM, not a silent -15; the pipeline installs its handler later.
  # os._exit, not sys.exit: a SystemExit raised inside an import can be swallowed by a library's
  # bare `except:` (seen under load: the run went on to finish with 0). Nothing is written yet but
  # config.json (atomically) and the workdir lock (a dead pid's lock is taken over).
  print(
    "SIGTERM while starting the run: stopped before any stage ran; rerun the same command to "
    "continue (finished stages are kept)",
    file=sys.stderr,
    flush=True,
  )
  os._exit(143)


signal.signal(signal.SIGTERM, _sigterm_while_starting)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from zebra_jax.assets import use_compilation_cache  # noqa: E402
from zebra_jax.cli import parse_absl_flags, script_errors  # noqa: E402
from zebra_jax.convert.orbax_io import flatten_dotted  # noqa: E402
from zebra_jax.distill.aot import aot_report  # noqa: E402
from zebra_jax.distill.config import base_config  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "python config file with get_config()", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (default: workdir/<config name>)")
_AOT = flags.DEFINE_string(
  "aot_topology",
  None,
  "ahead-of-time compile every stage for a TPU topology (e.g. v5p:4x4x4) "
  "with libtpu on this machine, print per-chip memory, then exit",
)
flags.DEFINE_alias("aot-topology", "aot_topology")
_NO_PROGRESS = flags.DEFINE_bool("no_progress", False, "disable progress bars")
_COORD = flags.DEFINE_string(
  "coordinator",
  None,
  "multi-process: coordinator host:port "
  "(jax.distributed.initialize); on TPU pods leave unset, it is automatic",
)
_NPROC = flags.DEFINE_integer("num_processes", None, "multi-process: number of processes")
_PID = flags.DEFINE_integer("process_id", None, "multi-process: this process's id")


_HELP_ARGS = ("-h", "-?", "--help", "--helpshort", "-help")


def print_help() -> None:
  """--help: what absl prints, plus every `--config.*` field with its default; exits 0."""
  import textwrap

  print(__doc__.strip() + "\n\nflags:")
  for name in (
    "config",
    "workdir",
    "aot_topology",
    "no_progress",
    "coordinator",
    "num_processes",
    "process_id",
  ):
    f = flags.FLAGS[name]
    default = "" if f.default is None else f" (default: {f.default})"
    print(f"  --{name}: {f.help}{default}")
  print(
    "\n--config.<section>.<field>=VALUE overrides one field of the config file's get_config(), "
    "e.g. --config.kd.steps=50\n--config.stages=\"('teacher', 'ild_mla')\"; the fields, with "
    "base_config()'s defaults (a config file sets its own):"
  )
  by_section: dict[str, list[str]] = {}
  for k, v in flatten_dotted(base_config().to_dict()).items():
    section, _, field = k.partition(".")
    by_section.setdefault(section if field else "", []).append(f"{field or section}={v!r}")
  for section, fields in by_section.items():
    line = (f"  {section}: " if section else "  ") + ", ".join(fields)
    print(textwrap.fill(line, 100, subsequent_indent="      "))
  print("\nFull descriptions: zebra_jax/distill/config.py; exit codes: docs/reliability.md.")


@script_errors()  # exit 2 with one line for config / workdir / data errors, 3, 4, 143 (cli.py)
def main(argv):
  del argv
  from absl import logging

  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  cfg = _CONFIG.value
  if cfg is None:
    raise app.UsageError("--config is required, e.g. --config configs/tiny.py")
  if _AOT.value:
    report = aot_report(cfg, _AOT.value)  # AOTError (no libtpu, bad topology): exit 2, one line
    sys.exit(0 if report.fits else 1)  # 1: a stage does not fit (named in the report)
  import jax

  use_compilation_cache()  # a resumed run, a rerun and later stages read compiled steps back
  if _COORD.value or _NPROC.value:
    jax.distributed.initialize(
      coordinator_address=_COORD.value, num_processes=_NPROC.value, process_id=_PID.value
    )
  elif "," in os.environ.get("TPU_WORKER_HOSTNAMES", "") or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
    jax.distributed.initialize()  # a multi-host TPU slice: jax finds the coordinator itself
  from zebra_jax.distill.pipeline import run_pipeline  # lazy: --help runs without grain, orbax

  workdir = _WORKDIR.value or cfg.workdir or os.path.join("workdir", cfg.name)
  run_pipeline(cfg, workdir, progress=not _NO_PROGRESS.value)


if __name__ == "__main__":
  if any(a in _HELP_ARGS for a in sys.argv[1:]):  # absl's --help exits 1 and lists no config field
    print_help()
    sys.exit(0)
  app.run(main, flags_parser=parse_absl_flags)  # a --config.x.y naming no field: one line, exit 2

"""Several students from one run config: layer budgets and ablations sharing the budget-free stages.

The teacher conversion, the teacher samples and both ILD students do not depend on the MLA budget
or the placement, so they run once in `<root>/shared`; every variant's workdir links them and runs
only what differs (select, assemble, kd):

  <root>/shared/               teacher, samples, ild_mla, ild_mamba
  <root>/mla8_smart/           links to shared + select (SMART), assemble, kd      (a main result)
  <root>/mla4_smart/           the same at another budget                          (a main result)
  <root>/mla8_uniform/         uniform placement instead of SMART                  (ablation)
  <root>/mla8_smart_no_ild/    SMART's layers, blocks straight from SVD / attention init, no ILD
                               (ablation; X-EcoMLA's recipe: init then KD)

Every piece is a `run_pipeline` call, so a killed run resumes where it stopped when rerun.

`shared_from=<another root>` links `<root>/shared` to that root's finished shared stages instead of
running them (a sweep over KD settings pays for the teacher samples and ILD once); it refuses a
source made with different settings for anything those stages read (`shared_settings_diff`).
"""

from __future__ import annotations

import ast
import contextlib
import copy
import dataclasses
import json
import os
import re

SHARED_STAGES = ("teacher", "samples", "ild_mla", "ild_mamba")


@dataclasses.dataclass(frozen=True)
class Variant:
  budget: int  # MLA layers
  placement: str  # "smart" | "uniform"
  ild: bool = True  # False: blocks from the initialisers (placement from the SMART variant)
  kd_all: bool = False  # True: KD trains every parameter group (kd.freeze=())
  kd_freeze: bool = False  # True: KD freezes embeddings and MLPs (MambaInLlama; kd.freeze=KD_FREEZE)
  kd_set: tuple = ()  # ((field under kd, value), ...): a KD setting swept ("kd:field=value")

  @property
  def name(self) -> str:
    return (
      f"mla{self.budget}_{self.placement}"
      + ("" if self.ild else "_no_ild")
      + ("_kd_all" if self.kd_all else "")
      + ("_kd_freeze" if self.kd_freeze else "")
      + "".join(f"_kd_{_slug(k)}{_slug(v)}" for k, v in self.kd_set)
    )

  @property
  def kind(self) -> str:
    if not self.ild:
      return "ablation: no ILD"
    if self.kd_all:
      return "ablation: KD trains all parameters"
    if self.kd_freeze:
      return "ablation: KD freezes embeddings and MLPs"
    if self.kd_set:
      return "sweep: " + ", ".join(f"kd.{k}={v!r}" for k, v in self.kd_set)
    return "main" if self.placement == "smart" else "ablation: uniform placement"


ABLATIONS = ("uniform", "no_ild", "kd_all", "kd_freeze")
SWEEP_PREFIX = "kd:"  # "kd:ce_weight=0.1", "kd:lr_scale.mixer=2": one KD setting changed


def _slug(x) -> str:
  return (
    re.sub(r"[^A-Za-z0-9.+-]+", "_", str(x)).replace(".", "p")
    if not isinstance(x, str)
    else re.sub(r"[^A-Za-z0-9+-]+", "_", x)
  )


def parse_sweep(name: str) -> tuple:
  """ "kd:field=value" -> (("field", value),), value read as a Python literal (else a string)."""
  body = name[len(SWEEP_PREFIX) :]
  field, eq, text = body.partition("=")
  if not eq or not field or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", field):
    raise ValueError(f"sweep {name!r}: expected kd:<field>=<value>, e.g. kd:ce_weight=0.1")
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  return ((field, value),)


KD_FREEZE = ("embed", "mlp")  # the kd_freeze ablation: MambaInLlama trains only the new mixers


def plan(budgets, ablations=True) -> list[Variant]:
  """The main SMART student per budget, then ablations at the first budget: `ablations` True means
  uniform placement and no ILD, False none, or a list of names from ABLATIONS ("kd_all": KD trains
  every parameter, "kd_freeze": KD freezes embeddings and MLPs; whichever differs from the
  config's kd.freeze measures what freezing buys or costs) and of KD sweeps "kd:field=value" (one
  KD setting changed from the config's; same shared stages and placement rule)."""
  try:
    budgets = [int(b) for b in budgets]
  except ValueError:
    raise ValueError(f"budgets {list(budgets)}: each must be an MLA layer count (a whole number)") from None
  if not budgets:
    raise ValueError("at least one MLA budget is needed")
  if len(set(budgets)) != len(budgets):
    raise ValueError(f"budgets {budgets} repeat a value")
  names = ("uniform", "no_ild") if ablations is True else () if ablations is False else tuple(ablations)
  unknown = [a for a in names if a not in ABLATIONS and not a.startswith(SWEEP_PREFIX)]
  if unknown:
    raise ValueError(
      f"unknown ablation(s) {unknown}; known: {list(ABLATIONS)} and {SWEEP_PREFIX}<field>=<value>"
    )
  b0 = budgets[0]
  made = {
    "uniform": Variant(b0, "uniform"),
    "no_ild": Variant(b0, "smart", ild=False),
    "kd_all": Variant(b0, "smart", kd_all=True),
    "kd_freeze": Variant(b0, "smart", kd_freeze=True),
  }
  out = [Variant(b, "smart") for b in budgets]
  for a in names:
    out.append(made[a] if a in made else Variant(b0, "smart", kd_set=parse_sweep(a)))
  if len({v.name for v in out}) != len(out):
    raise ValueError(f"ablations {list(names)} repeat a variant")
  return out


def _shared_stages(cfg) -> tuple[str, ...]:
  return tuple(s for s in SHARED_STAGES if s in cfg.stages)


def shared_config(cfg):
  c = copy.deepcopy(cfg)
  c.stages = _shared_stages(cfg)
  return c


def variant_config(cfg, v: Variant, smart_layers=None):
  """The run config of one variant (stages after the shared ones)."""
  c = copy.deepcopy(cfg)
  c.name = f"{cfg.name}_{v.name}"
  c.model.n_mla = v.budget
  if v.kd_all or v.kd_freeze:
    freeze = () if v.kd_all else KD_FREEZE
    if tuple(cfg.kd.freeze) == freeze:
      raise ValueError(
        f"ablation {v.name}: the config already has kd.freeze={freeze}, so it would "
        f"train the main variant again; use the other KD ablation (kd_all / kd_freeze)"
      )
    c.kd.freeze = freeze
  for field, value in v.kd_set:
    *parents, leaf = field.split(".")
    node = c.kd
    for part in parents:
      if part not in node or not hasattr(node[part], "keys"):
        raise ValueError(f"sweep {v.name}: kd.{field}: the config has no section kd.{part}")
      node = node[part]
    if leaf not in node:
      raise ValueError(f"sweep {v.name}: the config has no field kd.{field}")
    if node[leaf] == value:
      raise ValueError(
        f"sweep {v.name}: kd.{field} is already {value!r}, so it would train the main variant again"
      )
    with node.unlocked() if hasattr(node, "unlocked") else contextlib.nullcontext():
      try:
        node[leaf] = value
      except TypeError:  # ml_collections refuses another type: "kd:lr=abc"
        raise ValueError(
          f"sweep {v.name}: kd.{field} takes a {type(node[leaf]).__name__}, got {value!r}"
        ) from None
  shared = _shared_stages(cfg)
  tail = ("select", "assemble", "kd")
  if v.ild:
    c.select.method = v.placement
    c.stages = shared + tail
  else:
    if smart_layers is None:
      raise ValueError(f"{v.name}: needs the SMART variant's placement (run it first)")
    c.select.method = "explicit"
    c.model.mla_layers = tuple(int(i) for i in smart_layers)
    c.stages = tuple(s for s in shared if not s.startswith("ild")) + tail
  return c


def link_shared(root: str, workdir: str, stages) -> None:
  """Relative symlinks workdir/<stage> -> ../shared/<stage>, so the pipeline skips those stages."""
  os.makedirs(workdir, exist_ok=True)
  for stage in stages:
    dst = os.path.join(workdir, stage)
    target = os.path.join("..", "shared", stage)
    if os.path.islink(dst):
      if os.readlink(dst) == target:
        continue
      os.remove(dst)
    elif os.path.exists(dst):
      raise FileExistsError(
        f"{dst} exists and is not the link to the shared {stage!r} stage; remove it or use another --root"
      )
    os.symlink(target, dst)


def shared_settings_diff(cfg_a: dict, cfg_b: dict) -> list[str]:
  """The fields read by the shared stages on which two run configs (as JSON dicts) differ, e.g.
  ["ild.lr: 0.0002 != 0.001"]; empty when one root's shared stages can serve the other (the
  placement and the later stages' settings are not read by them: `workdir.stage_reads`)."""
  # lazy: pulls in ml_collections, which importing this module does not
  from zebra_jax.distill.workdir import changed_fields, stage_reads

  return [
    f"{k}: {a!r} != {b!r}"
    for k, (a, b) in changed_fields(cfg_a, cfg_b).items()
    if any(stage_reads(s, k) for s in SHARED_STAGES)
  ]


def borrow_shared(cfg, root: str, source_root: str) -> dict:
  """Links <root>/shared -> <source_root>/shared after checking that the source's shared stages
  are all finished and were made with the same shared settings; returns the source's summary.
  Raises (creating nothing) otherwise."""
  # lazy: pulls in grain, orbax, jax, which importing this module does not
  from zebra_jax.distill import stages

  # lazy: pulls in jax, flax, optax, which importing this module does not
  from zebra_jax.distill.context import RunContext

  root, src = os.path.abspath(root), os.path.abspath(os.path.join(source_root, "shared"))
  if src == os.path.join(root, "shared"):
    raise ValueError(f"shared_from={source_root!r} is this experiment's own root")
  ctx = RunContext(shared_config(cfg), src, progress=False)
  missing = [s for s in _shared_stages(cfg) if not os.path.exists(stages.artifact(ctx, s))]
  if missing:
    raise FileNotFoundError(
      f"{src}: shared stages {missing} are not finished; run that experiment first (or drop shared_from)"
    )
  with open(os.path.join(src, "config.json")) as f:
    theirs = json.load(f)
  diff = shared_settings_diff(json.loads(cfg.to_json()), theirs)
  if diff:
    raise ValueError(
      f"{src} was made with other settings for the shared stages (this config != that one): {'; '.join(diff)}"
    )
  dst = os.path.join(root, "shared")
  if not (os.path.islink(dst) and os.path.realpath(dst) == os.path.realpath(src)):
    if os.path.lexists(dst):
      raise FileExistsError(f"{dst} exists and is not a link to {src}; use another root")
    os.makedirs(root, exist_ok=True)
    os.symlink(src, dst)
  with open(os.path.join(src, "summary.json")) as f:
    return json.load(f)


def placement(workdir: str) -> list[int]:
  with open(os.path.join(workdir, "select", "placement.json")) as f:
    return list(json.load(f)["mla_layers"])


def run_experiment(
  cfg,
  root: str,
  variants: list[Variant],
  *,
  progress: bool = True,
  log=print,
  after_each=None,
  shared_from: str | None = None,
) -> dict:
  """Runs the shared stages and every variant; returns {variant name: its summary} plus "shared".
  With `shared_from`, the shared stages of that root are linked instead (module docstring).

  `after_each(name, summary)`, if given, is called once the shared stages ("shared") and then each
  variant are done (scripts/report.py evaluates each model there, before the next one trains)."""
  # lazy: pulls in grain, orbax, jax, which importing this module does not
  from zebra_jax.distill.pipeline import run_pipeline

  # lazy: pulls in ml_collections, which importing this module does not
  from zebra_jax.distill.config import validate

  # lazy: pulls in jax, flax, optax, which importing this module does not
  from zebra_jax.distill.context import RunContext

  # lazy: pulls in grain, orbax, jax, which importing this module does not
  from zebra_jax.distill.pipeline import preflight

  # lazy: pulls in jax, flax, optax, which importing this module does not
  from zebra_jax.distill.select import uniform_placement

  root = os.path.abspath(root)
  # Every variant's config is checked before the first stage runs (a bad budget fails in seconds,
  # not after the shared ILD stages).
  for v in variants:
    stand_in = (
      None
      if v.ild
      else uniform_placement(
        RunContext(cfg, root, progress=False).teacher_config().num_hidden_layers, v.budget
      )
    )
    vcfg = variant_config(cfg, v, smart_layers=stand_in)
    validate(vcfg)
    preflight(RunContext(vcfg, os.path.join(root, v.name), progress=False))
  summaries = {}
  if shared_from:
    summaries["shared"] = borrow_shared(cfg, root, shared_from)
    log(
      f"[experiment] shared stages {list(_shared_stages(cfg))} linked from "
      f"{os.path.realpath(os.path.join(root, 'shared'))}"
    )
  else:
    os.makedirs(root, exist_ok=True)
    log(f"[experiment] shared stages {list(_shared_stages(cfg))} in {root}/shared")
    summaries["shared"] = run_pipeline(shared_config(cfg), os.path.join(root, "shared"), progress=progress)
  if after_each is not None:
    after_each("shared", summaries["shared"])
  smart = {}
  for v in variants:
    wd = os.path.join(root, v.name)
    vcfg = variant_config(cfg, v, smart_layers=smart.get(v.budget))
    link_shared(root, wd, [s for s in _shared_stages(cfg) if s in vcfg.stages])
    log(f"[experiment] {v.name} ({v.kind}) in {wd}")
    summaries[v.name] = run_pipeline(vcfg, wd, progress=progress)
    if v.placement == "smart" and v.ild:
      smart[v.budget] = placement(wd)
    if after_each is not None:
      after_each(v.name, summaries[v.name])
  return summaries

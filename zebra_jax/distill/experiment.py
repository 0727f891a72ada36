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
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os

SHARED_STAGES = ("teacher", "samples", "ild_mla", "ild_mamba")


@dataclasses.dataclass(frozen=True)
class Variant:
  budget: int               # MLA layers
  placement: str            # "smart" | "uniform"
  ild: bool = True          # False: blocks from the initialisers (placement from the SMART variant)

  @property
  def name(self) -> str:
    return f"mla{self.budget}_{self.placement}" + ("" if self.ild else "_no_ild")

  @property
  def kind(self) -> str:
    if not self.ild:
      return "ablation: no ILD"
    return "main" if self.placement == "smart" else "ablation: uniform placement"


def plan(budgets, ablations: bool = True) -> list[Variant]:
  """The main SMART student per budget, then (at the first budget) uniform placement and no ILD."""
  budgets = [int(b) for b in budgets]
  if not budgets:
    raise ValueError("at least one MLA budget is needed")
  if len(set(budgets)) != len(budgets):
    raise ValueError(f"budgets {budgets} repeat a value")
  out = [Variant(b, "smart") for b in budgets]
  if ablations:
    out += [Variant(budgets[0], "uniform"), Variant(budgets[0], "smart", ild=False)]
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
      raise FileExistsError(f"{dst} exists and is not the link to the shared {stage!r} stage; "
                            "remove it or use another --root")
    os.symlink(target, dst)


def placement(workdir: str) -> list[int]:
  with open(os.path.join(workdir, "select", "placement.json")) as f:
    return list(json.load(f)["mla_layers"])


def run_experiment(cfg, root: str, variants: list[Variant], *, progress: bool = True,
                   log=print, after_each=None) -> dict:
  """Runs the shared stages and every variant; returns {variant name: its summary} plus "shared".

  `after_each(name, summary)`, if given, is called once the shared stages ("shared") and then each
  variant are done (scripts/report.py evaluates each model there, before the next one trains)."""
  from zebra_jax.distill.pipeline import run_pipeline

  from zebra_jax.distill.config import validate
  from zebra_jax.distill.context import RunContext
  from zebra_jax.distill.pipeline import preflight
  from zebra_jax.distill.select import uniform_placement

  root = os.path.abspath(root)
  # Every variant's config is checked before the first stage runs (a bad budget fails in seconds,
  # not after the shared ILD stages).
  for v in variants:
    stand_in = None if v.ild else uniform_placement(
        RunContext(cfg, root, progress=False).teacher_config().num_hidden_layers, v.budget)
    vcfg = variant_config(cfg, v, smart_layers=stand_in)
    validate(vcfg)
    preflight(RunContext(vcfg, os.path.join(root, v.name), progress=False))
  os.makedirs(root, exist_ok=True)
  summaries = {}
  log(f"[experiment] shared stages {list(_shared_stages(cfg))} in {root}/shared")
  summaries["shared"] = run_pipeline(shared_config(cfg), os.path.join(root, "shared"),
                                     progress=progress)
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

"""The distillation run config: an ml_collections ConfigDict built by `configs/*.py:get_config()`.

`base_config()` holds every field with its default; a recipe file overrides what it needs. The
command line overrides any field (`--config.kd.lr=1e-4`). `validate(cfg)` runs before anything is
loaded or compiled and names the offending field.

Fields
  name, seed, workdir
  teacher.path        ILD teacher = the model the student is built from (HF dir, .gguf, .bin, saved
                      zebra-jax dir, "smollm2" for the real SmolLM2-135M-Instruct from PyPI, or
                      "random:<preset>" for a randomly initialised teacher of a preset's shape)
  teacher.overrides   LlamaConfig fields for a random teacher (e.g. a tiny shape)
  teacher.preset      zebra_jax.presets name of the teacher's shape (e.g. "llama-3.2-3b-instruct"),
                      used by `--aot_topology` when teacher.path cannot be read on this machine
  kd_teacher.path     end-to-end KD teacher (None = same as teacher); may be larger, same vocabulary
  kd_teacher.preset   as teacher.preset, for the KD teacher
  model.*             HybridConfig fields of the student (mla_layers, kv_lora_rank, ...); n_mla is the
                      MLA budget when the select stage places layers
  data.*              source, seq_len, heldout_fraction, shuffle seed, ild_fraction (disjoint ILD / KD
                      parts of the train documents; 0 or 1: no split), num_shards (data shards;
                      0: one per process), dpo_path, tokenizer;
                      mix: {name: weight} of registry sources (zebra_jax/data/registry.py) and
                      "teacher_samples", weight = passes per epoch over the source's train documents
                      (also "name=w,name=w" on the command line); empty: data.source alone.
                      data.source may also name one registry source: "source:django_docs".
                      Held-out evaluation sources (registry.heldout_sources()) are refused.
  mesh.data/fsdp/tensor
  train.*             defaults shared by all training stages (dtype, clip, warmup, logging, ckpt);
                      remat: recompute each student block in the backward pass, remat_policy:
                      what such a block keeps ("full": only its input, "dots": also its
                      projections' outputs; `scripts/bench.py train --remat full,dots` compares);
                      keep_checkpoints: keep a stage's optimizer-state checkpoints once its model
                      is saved (False, the default: deleted, a finished stage is skipped on its
                      model alone; True: kept, e.g. to continue training a stage by hand)
  ild/kd/dpo/stepwise.*  per-stage steps, lr, batch_size, grad_accum (+ stage-specific fields;
                      kd.freeze: parameter groups KD does not train, of embed / mlp / norm / mixer;
                      kd.lr_scale.<group>: that group's learning-rate multiplier, default 1)
  select.*            method ("smart" | "explicit" | "uniform"), calibration batches
  samples.*           teacher-generated training text (the `samples` stage; distill/samples.py):
                      num_samples, prompt_tokens, max_new_tokens, temperature, top_p, top_k,
                      batch_size, chat_fraction (share of chat-template instruction prompts),
                      chat_temperature (their sampling temperature; None: temperature),
                      passage_fraction (share of chat prompts that are tasks about a passage of
                      a training document: summarise, explain, continue, questions),
                      round_tokens (0: one generate call per batch; else new tokens per round,
                      the finished rows leaving between rounds), round_batches (batches per
                      part when generating in rounds) and cache_window (0: off; else each batch's
                      decode cache grows in windows of that many rows, `generate`'s cache_window:
                      the same tokens, bookkeeping) and max_repetition (0: keep every sample;
                      else drop the samples whose text repeats more of its word 4-grams than
                      this fraction: the teacher's loops);
                      used when data.source lists "teacher_samples"
  pairs.*             DPO pairs made by the run (the `pairs` stage; distill/pairs.py): the
                      teacher's answer (chosen) and the kd student's (rejected) to num_pairs chat
                      prompts; batch_size, max_new_tokens, temperature (0: greedy), top_p,
                      passage_fraction; data.dpo_path = "pairs" trains dpo on them
  stages              ordered list of stages to run
"""

from __future__ import annotations

import math

import ml_collections

from zebra_jax.config import REMAT_POLICIES

# Parameter groups a stage can freeze (`kd.freeze`); distill/stages.py maps paths to them.
PARAM_GROUPS = ("embed", "mlp", "norm", "mixer")
STAGES = (
  "teacher",
  "samples",
  "ild_mla",
  "ild_mamba",
  "select",
  "assemble",
  "kd",
  "pairs",
  "dpo",
  "stepwise",
)


def _stage(steps, lr, batch_size, grad_accum=1, **extra):
  return ml_collections.ConfigDict(
    dict(steps=steps, lr=lr, batch_size=batch_size, grad_accum=grad_accum, **extra)
  )


def _unset(kind):
  """An unset field of a known type: None until given, and `--config.<field>=...` can set it (a
  plain None default cannot be overridden from the command line by ml_collections)."""
  return ml_collections.config_dict.placeholder(kind)


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "run"
  c.seed = 0
  c.workdir = ""
  # a rerun whose settings differ from the workdir's config.json under stages that already hold
  # artifacts or checkpoints is refused unless this is True (distill/workdir.py)
  c.accept_config_changes = False
  c.teacher = ml_collections.ConfigDict(
    dict(path="smollm2", dtype="bfloat16", overrides={}, preset=_unset(str))
  )
  c.kd_teacher = ml_collections.ConfigDict(
    dict(path=_unset(str), dtype="bfloat16", overrides={}, preset=_unset(str))
  )
  c.model = ml_collections.ConfigDict(
    dict(
      mla_layers=_unset(tuple),
      n_mla=_unset(int),
      attn_layers=(),
      kv_lora_rank=_unset(int),
      q_lora_rank=_unset(int),
      qk_rope_head_dim=_unset(int),
      qk_nope_head_dim=_unset(int),
      v_head_dim=_unset(int),
      use_full_kv_head=False,
      mla_rope_scaling=None,
      d_state=_unset(int),
      headdim=_unset(int),
      ngroups=_unset(int),
      chunk_size=256,
      kv_energy_ratio=_unset(float),
      q_energy_ratio=_unset(float),
    )
  )
  # type_safe=False: data.source is a spec string or a tuple of them (("default", "teacher_samples"));
  # data.mix is "" (no mix), a dict {name: weight} (recipes) or "name=w,name=w" (command line).
  c.data = ml_collections.ConfigDict(
    dict(
      source="default",
      mix="",
      seq_len=2048,
      heldout_fraction=0.02,
      shuffle_seed=42,
      ild_fraction=0.2,
      num_shards=0,
      dpo_path=_unset(str),
      tokenizer=_unset(str),
    ),
    type_safe=False,
  )
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.train = ml_collections.ConfigDict(
    dict(
      dtype="bfloat16",
      param_dtype="float32",
      warmup_frac=0.01,
      weight_decay=0.0,
      grad_clip=1.0,
      log_every=10,
      checkpoint_every=200,
      keep_last=2,
      async_checkpoint=True,
      keep_checkpoints=False,
      remat=False,
      # what a rematerialised block keeps for the backward (zebra_jax.config.REMAT_POLICIES)
      remat_policy="full",
      impl="auto",
      eval_batches=4,
      # batches tokenised and packed ahead in a background thread (0: in the step loop)
      prefetch=2,
    )
  )
  c.ild = _stage(1000, 2e-4, 96, loss="l2")
  c.select = ml_collections.ConfigDict(dict(method="smart", calib_batches=4, batch_size=8))
  c.samples = ml_collections.ConfigDict(
    dict(
      num_samples=0,
      prompt_tokens=64,
      max_new_tokens=960,
      temperature=1.0,
      top_p=_unset(float),
      top_k=_unset(int),
      batch_size=256,
      chat_fraction=0.0,
      chat_temperature=_unset(float),
      passage_fraction=0.0,
      round_tokens=0,
      round_batches=8,
      cache_window=0,
      max_repetition=0.0,
    )
  )
  c.pairs = ml_collections.ConfigDict(
    dict(num_pairs=1024, batch_size=64, max_new_tokens=256, temperature=0.7, top_p=0.9, passage_fraction=0.5)
  )
  # kd.freeze: parameter groups KD leaves as assembled ("embed", "mlp", "norm", "mixer"; stages.py)
  # loss_impl: "logits" builds both models' full logits; "fused" computes the same losses from the
  # final hidden states loss_chunk tokens at a time (train/fused_losses.py; no (B, T, V) tensor)
  # kd.lr_scale: a learning-rate multiplier per parameter group (1: kd.lr; 0: as frozen, but with
  # optimizer state); MambaInLlama-style gentler embeddings / MLPs without freezing them
  c.kd = _stage(
    1000,
    8e-5,
    192,
    kl_weight=1.0,
    ce_weight=0.0,
    temperature=1.0,
    freeze=(),
    loss_impl="logits",
    loss_chunk=1024,
    lr_scale=ml_collections.ConfigDict({g: 1.0 for g in PARAM_GROUPS}),
  )
  c.dpo = _stage(
    100,
    5e-7,
    32,
    beta=0.01,
    max_len=1024,
    max_prompt_len=512,
    warmup_frac=0.1,
    loss_impl="logits",
    loss_chunk=1024,
  )
  c.stepwise = _stage(1000, 8e-5, 64, kl_weight=1.0, ce_weight=0.0, schedule=(), freeze_mlp=True)
  # A tuple, so `--config.stages="('teacher', 'ild_mla')"` works (ml_collections cannot override
  # list fields); recipes may still assign lists, which become tuples.
  c.stages = ("teacher", "ild_mla", "ild_mamba", "select", "assemble", "kd")
  return c


class RunConfigError(ValueError):
  """A run config that cannot work; the message names the field."""


def remat_setting(c: ml_collections.ConfigDict) -> str | bool:
  """What the trainer sets as a student's `remat`: False, or the train.remat_policy name."""
  return str(c.train.get("remat_policy", "full")) if c.train.remat else False


def validate(c: ml_collections.ConfigDict) -> None:
  def bad(msg):
    raise RunConfigError(msg)

  unknown = [s for s in c.stages if s not in STAGES]
  if unknown:
    bad(f"stages: unknown stage(s) {unknown}; known: {list(STAGES)}")
  if c.data.seq_len < 2:
    bad(f"data.seq_len must be >= 2, got {c.data.seq_len}")
  for name in ("ild", "kd", "dpo", "stepwise"):
    s = c[name]
    if s.steps <= 0:
      bad(f"{name}.steps must be positive, got {s.steps}")
    if not (s.lr > 0 and math.isfinite(s.lr)):
      bad(f"{name}.lr must be a positive finite number, got {s.lr}")
    if s.batch_size <= 0 or s.batch_size % s.grad_accum:
      bad(f"{name}.batch_size={s.batch_size} must be a positive multiple of {name}.grad_accum={s.grad_accum}")
  for name in ("kd", "dpo"):
    if c[name].loss_impl not in ("logits", "fused"):
      bad(f"{name}.loss_impl must be 'logits' or 'fused', got {c[name].loss_impl!r}")
    if c[name].loss_chunk < 1:
      bad(f"{name}.loss_chunk must be >= 1 token, got {c[name].loss_chunk}")
  if c.train.get("remat_policy", "full") not in REMAT_POLICIES:
    bad(f"train.remat_policy must be one of {list(REMAT_POLICIES)}, got {c.train.remat_policy!r}")
  bad_groups = [g for g in c.kd.freeze if g not in PARAM_GROUPS]
  if bad_groups:
    bad(f"kd.freeze: unknown parameter group(s) {bad_groups}; groups: {list(PARAM_GROUPS)}")
  if set(PARAM_GROUPS) <= set(c.kd.freeze):
    bad("kd.freeze freezes every parameter group; nothing would train")
  scales = dict(c.kd.get("lr_scale", None) or {})
  unknown = sorted(set(scales) - set(PARAM_GROUPS))
  if unknown:
    bad(f"kd.lr_scale: unknown parameter group(s) {unknown}; groups: {list(PARAM_GROUPS)}")
  for g, v in scales.items():
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v >= 0 and math.isfinite(v)):
      bad(f"kd.lr_scale.{g} must be a finite number >= 0, got {v!r}")
  scaled_frozen = [g for g in c.kd.freeze if scales.get(g, 1.0) not in (0.0, 1.0)]
  if scaled_frozen:
    g = scaled_frozen[0]
    bad(f"kd.lr_scale.{g}={scales[g]!r} scales a group that kd.freeze freezes; drop one of the two")
  if all(g in c.kd.freeze or scales.get(g, 1.0) == 0 for g in PARAM_GROUPS):
    bad("kd.freeze and kd.lr_scale (0) leave no parameter group training; nothing would train")
  if c.ild.loss not in ("l2", "mse"):
    bad(f"ild.loss must be 'l2' or 'mse', got {c.ild.loss!r}")
  if c.select.method not in ("smart", "explicit", "uniform"):
    bad(f"select.method must be 'smart', 'explicit' or 'uniform', got {c.select.method!r}")
  if "select" in c.stages and c.select.method != "explicit" and not c.model.n_mla:
    bad(
      f"model.n_mla (the MLA layer budget) must be a positive layer count when select.method is "
      f"{c.select.method!r}, got {c.model.n_mla!r}"
    )
  if (
    ("select" not in c.stages or c.select.method == "explicit")
    and "assemble" in c.stages
    and c.model.mla_layers is None
  ):
    bad("model.mla_layers must be set when the select stage does not choose them")
  # lazy: pulls in grain, orbax, jax, which importing this module does not
  from zebra_jax.data.registry import check_config_sources, parse_mix  # noqa: PLC0415

  try:
    check_config_sources(c.data.source, c.data.get("mix", ""))
    mix = parse_mix(c.data.get("mix", ""))
  except ValueError as e:
    bad(str(e))
  srcs = c.data.source if isinstance(c.data.source, (list, tuple)) else [c.data.source]
  mixed = [k for k, w in mix.items() if w > 0]
  if "teacher_samples" in mixed:
    if "samples" not in c.stages:
      bad("data.mix names 'teacher_samples' but stages has no 'samples' stage to generate them")
    if all(s == "teacher_samples" for s in srcs):
      bad("data.source lists only 'teacher_samples': prompts need a real source next to it")
  srcs_or_mix = list(srcs) + mixed
  if "teacher_samples" in srcs:
    if all(s == "teacher_samples" for s in srcs):
      bad("data.source lists only 'teacher_samples': prompts need a real source next to it")
    if "samples" not in c.stages:
      bad("data.source lists 'teacher_samples' but stages has no 'samples' stage to generate them")
  if "samples" in c.stages:
    s = c.samples
    if s.num_samples <= 0 or s.batch_size <= 0 or s.prompt_tokens <= 0 or s.max_new_tokens <= 0:
      bad(
        "samples.num_samples, samples.batch_size, samples.prompt_tokens and "
        "samples.max_new_tokens must be positive when the samples stage runs"
      )
    if not s.temperature > 0:
      bad(f"samples.temperature must be positive (sampling, not greedy), got {s.temperature}")
    if not 0.0 <= s.chat_fraction <= 1.0:
      bad(f"samples.chat_fraction must be in [0, 1], got {s.chat_fraction}")
    if not 0.0 <= s.passage_fraction <= 1.0:
      bad(f"samples.passage_fraction must be in [0, 1], got {s.passage_fraction}")
    if s.round_tokens < 0 or (s.round_tokens and s.max_new_tokens % s.round_tokens):
      bad(
        f"samples.round_tokens must be 0 (off) or divide samples.max_new_tokens="
        f"{s.max_new_tokens}, got {s.round_tokens}"
      )
    if s.round_batches < 1:
      bad(f"samples.round_batches must be >= 1, got {s.round_batches}")
    if not 0.0 <= s.get("max_repetition", 0.0) < 1.0:
      bad(f"samples.max_repetition must be in [0, 1) (0: keep every sample), got {s.max_repetition}")
    if s.get("cache_window", 0) < 0:
      bad(f"samples.cache_window must be 0 (off) or a positive number of rows, got {s.cache_window}")
    if s.chat_temperature is not None and not s.chat_temperature > 0:
      bad(
        f"samples.chat_temperature must be positive or None (= samples.temperature), got {s.chat_temperature}"
      )
    if "teacher_samples" not in srcs_or_mix:
      bad(
        "stages has 'samples' but neither data.source nor data.mix lists 'teacher_samples' to train on them"
      )
    order = list(c.stages)
    late = [
      t
      for t in ("ild_mla", "ild_mamba", "kd", "stepwise")
      if t in order and order.index(t) < order.index("samples")
    ]
    if late:
      bad(f"stages: 'samples' must come before {late}, which read its data")
  if "dpo" in c.stages and not c.data.dpo_path:
    bad(
      "data.dpo_path (a local jsonl of {prompt, chosen, rejected}, or 'pairs') is required by the dpo stage"
    )
  if "pairs" in c.stages:
    p = c.pairs
    if p.num_pairs <= 0 or p.batch_size <= 0 or p.max_new_tokens <= 0:
      bad(
        "pairs.num_pairs, pairs.batch_size and pairs.max_new_tokens must be positive when the pairs stage runs"
      )
    if not p.temperature >= 0:
      bad(f"pairs.temperature must be >= 0 (0: greedy), got {p.temperature}")
    if p.top_p is not None and not 0.0 < p.top_p <= 1.0:
      bad(f"pairs.top_p must be in (0, 1] or None, got {p.top_p}")
    if not 0.0 <= p.passage_fraction <= 1.0:
      bad(f"pairs.passage_fraction must be in [0, 1], got {p.passage_fraction}")
    order = list(c.stages)
    if "dpo" in order and order.index("dpo") < order.index("pairs"):
      bad("stages: 'pairs' must come before 'dpo', which trains on its pairs")
    if "kd" in order and order.index("kd") > order.index("pairs"):
      bad("stages: 'pairs' must come after 'kd': the student it answers with is the kd stage's")
  if c.data.dpo_path == "pairs" and "dpo" in c.stages and "pairs" not in c.stages:
    bad("data.dpo_path = 'pairs' names the pairs stage's artifact, but stages has no 'pairs' stage")
  if "stepwise" in c.stages and not c.stepwise.schedule:
    bad("stepwise.schedule must list the attention layers to keep at each phase")
  for k in ("data", "fsdp", "tensor"):
    v = c.mesh[k]
    if v == 0 or v < -1:
      bad(f"mesh.{k} must be a positive size or -1, got {v}")

"""What every stage needs: the run config, the mesh, the teachers (loaded once), data iterators,
student configs and artifacts of earlier stages."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time

import jax

from zebra_jax._io import write_json
from zebra_jax import accounting
from zebra_jax.config import HybridConfig, LlamaConfig
from zebra_jax.convert.orbax_io import load_model
from zebra_jax.models.hybrid import CausalLM
from zebra_jax.parallel.sharding import make_mesh
from zebra_jax import presets
from zebra_jax.convert import from_pretrained, resolve_gguf
from zebra_jax.convert.gguf import gguf_reader, gguf_config
from zebra_jax.convert.hf import load_hf_config
from zebra_jax.convert.model_files import provenance
from zebra_jax.convert.orbax_io import is_saved_model, load_config, save_model
from zebra_jax.distill.config import remat_setting
from zebra_jax.distill.preferences import preference_iterator

# the run config's model fields that shape a student (MLA ranks and head sizes, Mamba2 state): what
# RunContext and the compile check (distill/aot.py) pass to the student's config when set
STUDENT_FIELDS = (
  "kv_lora_rank",
  "q_lora_rank",
  "qk_rope_head_dim",
  "qk_nope_head_dim",
  "v_head_dim",
  "use_full_kv_head",
  "mla_rope_scaling",
  "d_state",
  "headdim",
  "ngroups",
  "chunk_size",
)


def teacher_config(tcfg, which: str = "teacher") -> LlamaConfig:
  """A teacher's LlamaConfig without loading its weights (for checks before anything runs): from a
  random preset (+ overrides), a save_model directory, GGUF metadata or an HF config.json."""

  path = tcfg.path
  if isinstance(path, str) and path.startswith("random:"):
    try:
      base = presets.get_preset(path.split(":", 1)[1])
    except KeyError as e:
      raise ValueError(f"{which}.path={path!r}: {e}") from None
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(LlamaConfig)}
    fields.update(dict(tcfg.overrides or {}))
    return LlamaConfig(**fields)
  if path == "smollm2":
    return presets.get_preset("smollm2-135m-instruct")
  if not isinstance(path, str) or not os.path.exists(path):
    raise ValueError(
      f"{which}.path={path!r} does not exist (expected an HF directory, a .gguf, "
      "a saved zebra-jax model, 'smollm2' or 'random:<preset>')"
    )
  if os.path.isdir(path) and is_saved_model(path):
    return load_config(path)
  gguf_file = resolve_gguf(path)
  if gguf_file is not None:
    return gguf_config(gguf_reader(gguf_file), gguf_file)[0]
  return load_hf_config(path)


def same_teacher(cfg) -> bool:
  """Whether the KD teacher is the ILD teacher: kd_teacher.path unset, or the same path with the
  same overrides (two random teachers of one preset but different shapes are different)."""
  k, t = cfg.kd_teacher, cfg.teacher
  if k.path in (None, ""):
    return True
  return k.path == t.path and dict(k.overrides or {}) == dict(t.overrides or {})


class RunContext:
  def __init__(self, cfg, workdir: str, *, progress: bool = True, mesh=None):
    self.cfg = cfg
    self.workdir = os.path.abspath(workdir)
    self.progress = progress
    self.mesh = mesh if mesh is not None else make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    self._teacher = None
    self._kd_teacher = None
    self._tokenizer = None
    # seconds of the named phases of the running stage (counting its data, compiling, stepping,
    # saving), reset by the pipeline at each stage: where a stage's time goes beyond its steps
    self.phase_s: dict[str, float] = {}

  @contextlib.contextmanager
  def timed(self, phase: str):
    """Adds the block's wall seconds to `phase_s[phase]`."""
    t0 = time.perf_counter()
    try:
      yield
    finally:
      self.phase_s[phase] = self.phase_s.get(phase, 0.0) + time.perf_counter() - t0

  # -- logging -----------------------------------------------------------------------------------
  def log(self, msg: str) -> None:
    if jax.process_index() == 0:
      print(msg, flush=True)

  # -- models --------------------------------------------------------------------------------------
  def _compute(self, dtype: str) -> dict:
    t = self.cfg.train
    return dict(dtype=dtype, param_dtype=t.param_dtype, impl=t.impl)

  def load_teacher_source(self, tcfg) -> CausalLM:
    """Loads a teacher from its configured source (path / 'smollm2' / 'random:<preset>')."""
    from flax import nnx

    path = tcfg.path
    if path is None:
      raise ValueError("teacher.path is not set")
    if isinstance(path, str) and path.startswith("random:"):
      base = presets.get_preset(path.split(":", 1)[1])
      fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(LlamaConfig)}
      fields.update(dict(tcfg.overrides or {}))
      fields.update(self._compute(tcfg.dtype))
      return CausalLM(LlamaConfig(**fields), rngs=nnx.Rngs(self.cfg.seed + 1000))
    return from_pretrained(path, **self._compute(tcfg.dtype))  # "smollm2" included

  def teacher(self) -> CausalLM:
    """The ILD teacher (the model the student is built from), from the `teacher` stage artifact."""
    if self._teacher is None:
      art = os.path.join(self.workdir, "teacher", "model")
      if os.path.exists(art):
        self._teacher = load_model(art, dtype=self.cfg.teacher.dtype)
      else:
        self._teacher = self.load_teacher_source(self.cfg.teacher)
    return self._teacher

  def kd_teacher(self) -> CausalLM:
    if same_teacher(self.cfg):
      return self.teacher()
    if self._kd_teacher is None:
      self._kd_teacher = self.load_teacher_source(self.cfg.kd_teacher)
    return self._kd_teacher

  def teacher_config(self) -> LlamaConfig:
    """The ILD teacher's config without loading its weights (the artifact's, once it exists)."""
    art = os.path.join(self.workdir, "teacher", "model")
    if self._teacher is not None:
      return self._teacher.config
    if os.path.exists(art):
      return load_config(art)
    return teacher_config(self.cfg.teacher, "teacher")

  def student_config(self, base: LlamaConfig | None = None, **layers) -> HybridConfig:
    """The student's HybridConfig on the teacher's shape (`base`: a teacher config to use instead
    of loading the teacher)."""
    m = self.cfg.model
    fields = {k: m[k] for k in STUDENT_FIELDS if m.get(k) is not None}
    if fields.get("mla_rope_scaling") is not None:
      fields["mla_rope_scaling"] = dict(fields["mla_rope_scaling"])
    base = base if base is not None else self.teacher().config
    base = dataclasses.replace(base, **self._compute(self.cfg.train.dtype))
    return HybridConfig.from_llama(base, **fields, **layers)

  def save(self, model: CausalLM, path: str, stage: str) -> None:
    """Saves a stage's model with the run's tokenizer files, generation config and provenance
    next to its weights, so that every tool can use the artifact alone."""
    save_model(
      model,
      path,
      overwrite=True,
      tokenizer=self.tokenizer_or_none(),
      provenance=self.provenance(model.config, stage),
    )

  def provenance(self, config, stage: str) -> dict:
    c, d = self.cfg, self.cfg.data

    def plain(v):  # ConfigDicts and tuples as JSON values
      return v.to_dict() if hasattr(v, "to_dict") else list(v) if isinstance(v, tuple) else v

    def source(t):
      return (
        None
        if t.path in (None, "")
        else {"path": t.path, "overrides": plain(t.overrides) or None, "dtype": t.dtype}
      )

    return provenance(
      config,
      teacher=source(c.teacher),
      kd_teacher=source(c.kd_teacher),
      tokenizer=d.get("tokenizer", None) or c.teacher.path,
      config=c.name,
      stage=stage,
      data={"source": plain(d.source), "mix": plain(d.get("mix", ""))},
      seed=c.seed,
      workdir=self.workdir,
    )

  def tokenizer_or_none(self):
    """The run's tokenizer, or None (logged) for a random teacher without data.tokenizer."""
    try:
      return self.tokenizer()
    except ValueError as e:
      self.log(f"[save] the model is saved without tokenizer files: {e}")
      return None

  def distilled_stage(self) -> str:
    """The stage whose model is the distilled student that DPO and its pairs start from: kd, or
    assemble when the run has no kd model."""
    return "kd" if os.path.exists(os.path.join(self.workdir, "kd", "model")) else "assemble"

  def load_artifact(self, stage: str) -> CausalLM:
    path = os.path.join(self.workdir, stage, "model")
    if not os.path.exists(path):
      raise FileNotFoundError(f"stage {stage!r} has no artifact at {path}; run that stage first")
    # bf16 (train.dtype) compute over fp32 (train.param_dtype) master weights, as when the stage began
    return load_model(path, dtype=self.cfg.train.dtype, param_dtype=self.cfg.train.param_dtype)

  def set_remat(self, model: CausalLM) -> None:
    model.remat = remat_setting(self.cfg)

  def flops_per_token(self, student_cfg, teacher_cfg, heads: bool = True) -> float:
    """Training FLOPs per token: student fwd+bwd plus the teacher's forward (heads=False: ILD)."""
    return accounting.distill_flops_per_token(student_cfg, teacher_cfg, self.cfg.data.seq_len, heads=heads)

  # -- data ----------------------------------------------------------------------------------------
  def tokenizer(self):
    if self._tokenizer is None:
      # lazy: pulls in grain, orbax, which importing this module does not
      from zebra_jax.data import ByteTokenizer, load_tokenizer

      spec = self.cfg.data.get("tokenizer", None) or self.cfg.teacher.path
      if spec == "byte":
        self._tokenizer = ByteTokenizer()
      elif isinstance(spec, str) and spec.startswith("random:"):
        raise ValueError(
          "a random teacher has no tokenizer: set data.tokenizer ('byte', a GGUF or an HF directory)"
        )
      else:
        self._tokenizer = load_tokenizer(spec)  # "smollm2", a .gguf, a directory
    return self._tokenizer

  def _seed_for(self, purpose: str) -> int:
    return self.cfg.data.shuffle_seed + sum(map(ord, purpose))

  @staticmethod
  def data_part(purpose: str, split: str = "train") -> str | None:
    """Which part of the train documents a stage reads (data.ild_fraction splits them, as the
    reference's 20 / 80 ILD / SFT split): "ild" for the ILD stages, "kd" for every other training
    purpose (kd, stepwise_<phase>, calibration); None for the held-out split."""
    if split != "train":
      return None
    return "ild" if purpose == "ild" else "kd"

  def data_source(self):
    """What the pipeline reads: data.mix as a dict {name or path: weight} ("teacher_samples" replaced
    by the samples stage's artifact) when a mix is set, else data.source (teacher samples resolved)."""
    # lazy: pulls in grain, orbax, which importing this module does not
    from zebra_jax.data.registry import SAMPLES_TOKEN, parse_mix

    # lazy: pulls in grain, orbax, which importing this module does not
    from zebra_jax.distill.samples import ARTIFACT, resolve_source

    mix = parse_mix(self.cfg.data.get("mix", ""))
    if not mix:
      return resolve_source(self.cfg, self.workdir)  # "teacher_samples" -> the samples artifact
    out = {}
    for name, w in mix.items():
      if name == SAMPLES_TOKEN:
        path = os.path.join(self.workdir, ARTIFACT)
        if not os.path.exists(path):
          raise FileNotFoundError(
            f"data.mix names {SAMPLES_TOKEN!r} but {path} does not exist: add "
            "'samples' to stages before the training stages"
          )
        name = path
      out[name] = w
    return out

  def batches(self, purpose: str, batch_size: int, split: str = "train", **kwargs):
    """Packed batches for `purpose` ("ild", "kd", "stepwise_<phase>", "calibration"): the ILD or
    KD part of the train documents (see data_part; data.ild_fraction 0 or 1: all of them), data
    shards from data.num_shards, a shuffle seed per purpose. With data.mix, each source is split on
    its own document indices and its train documents repeated by its weight (pipeline.mix_indices)."""
    # lazy: pulls in grain, orbax, which importing this module does not
    from zebra_jax.data import make_iterator

    d = self.cfg.data
    source = self.data_source()  # data.mix / data.source, "teacher_samples" -> the samples artifact
    kwargs.setdefault("num_shards", d.get("num_shards", 0) or None)  # 0: one shard per process
    if purpose != "calibration":  # training: the next batches are prepared while the device runs
      kwargs.setdefault("prefetch", int(self.cfg.train.get("prefetch", 0) or 0))
    return make_iterator(
      source,
      self.tokenizer(),
      seq_len=d.seq_len,
      global_batch=batch_size,
      split=split,
      heldout_fraction=d.heldout_fraction,
      part=self.data_part(purpose, split),
      ild_fraction=d.ild_fraction,
      seed=self._seed_for(purpose),
      **kwargs,
    )

  def data_budget(self, stage: str, purpose: str, spec) -> dict:
    """How many passes a training stage makes over its data: the tokens it reads (steps x batch x
    seq_len) over the distinct tokens of its part (pipeline.epoch_tokens). Logged and written to
    <stage>/data_budget.json once (process 0), so a recipe's "each token at most twice" is a number
    in the workdir, not an estimate. Counting tokenises the part once (seconds for ~10M tokens)."""
    path = os.path.join(self.workdir, stage, "data_budget.json")
    if os.path.exists(path):
      with open(path) as f:
        return json.load(f)
    # lazy: pulls in grain, orbax, which importing this module does not
    from zebra_jax.data.pipeline import epoch_tokens

    d = self.cfg.data
    counts = epoch_tokens(
      self.data_source(),
      self.tokenizer(),
      split="train",
      part=self.data_part(purpose),
      heldout_fraction=d.heldout_fraction,
      ild_fraction=d.ild_fraction,
    )
    reads = int(spec.steps) * int(spec.batch_size) * int(spec.seq_len)
    distinct = counts["distinct_tokens"]
    if distinct < int(spec.seq_len):  # every sequence would be the same text, wrapped around
      # lazy: pulls in ml_collections, which importing this module does not
      from zebra_jax.distill.config import RunConfigError

      raise RunConfigError(
        f"data.seq_len={spec.seq_len} is longer than the {distinct:,} distinct tokens of the "
        f"{stage} stage's data ({self.data_part(purpose) or 'train'} part): every sequence would "
        "repeat the same text; lower data.seq_len or add data"
      )
    budget = {**counts, "tokens_read": reads, "passes": round(reads / max(1, distinct), 3)}
    self.log(
      f"[{stage}] reads {reads:,} tokens of a part with {distinct:,} "
      f"distinct tokens: {budget['passes']:.2f} passes"
      + (
        " (warning: many repeats; more data or fewer steps generalise better)" if budget["passes"] > 4 else ""
      )
    )
    if jax.process_index() == 0:
      write_json(path, budget)
    return budget

  def calibration_batches(self, n: int, batch_size: int) -> list[dict]:
    # The same batches on every process (not a per-process shard), so that every process measures
    # the same sensitivities and picks the same layout. Train documents (the KD part), never the
    # held-out split: the evaluation must not have helped choose the layer positions.
    it = self.batches(
      "calibration", batch_size, split="train", process_index=0, process_count=1, num_shards=1
    )
    return [next(it) for _ in range(n)]

  def preference_batches(self, batch_size: int):
    # lazy: pulls in grain, orbax, which importing this module does not
    from zebra_jax.distill.pairs import dpo_path

    d = self.cfg.dpo
    return preference_iterator(
      dpo_path(self.cfg, self.workdir),
      self.tokenizer(),
      batch_size=batch_size,
      max_len=d.max_len,
      max_prompt_len=d.max_prompt_len,
      seed=self._seed_for("dpo"),
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    )

"""What every stage needs: the run config, the mesh, the teachers (loaded once), data iterators,
student configs and artifacts of earlier stages."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np

from zebra_jax import accounting
from zebra_jax.config import HybridConfig, LlamaConfig
from zebra_jax.convert.orbax_io import load_model
from zebra_jax.models.hybrid import CausalLM
from zebra_jax.parallel.sharding import make_mesh

_STUDENT_FIELDS = ("kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim",
                   "v_head_dim", "use_full_kv_head", "mla_rope_scaling", "d_state", "headdim",
                   "ngroups", "chunk_size")


class RunContext:

  def __init__(self, cfg, workdir: str, *, progress: bool = True, mesh=None):
    self.cfg = cfg
    self.workdir = os.path.abspath(workdir)
    self.progress = progress
    self.mesh = mesh if mesh is not None else make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    self._teacher = None
    self._kd_teacher = None
    self._tokenizer = None

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

    from zebra_jax import presets
    from zebra_jax.assets import smollm2_gguf_path
    from zebra_jax.convert import from_pretrained

    path = tcfg.path
    if path is None:
      raise ValueError("teacher.path is not set")
    if isinstance(path, str) and path.startswith("random:"):
      base = presets.get_preset(path.split(":", 1)[1])
      fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(LlamaConfig)}
      fields.update(dict(tcfg.overrides or {}))
      fields.update(self._compute(tcfg.dtype))
      return CausalLM(LlamaConfig(**fields), rngs=nnx.Rngs(self.cfg.seed + 1000))
    if path == "smollm2":
      path = smollm2_gguf_path()
    return from_pretrained(path, **self._compute(tcfg.dtype))

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
    if self.cfg.kd_teacher.path in (None, "", self.cfg.teacher.path):
      return self.teacher()
    if self._kd_teacher is None:
      self._kd_teacher = self.load_teacher_source(self.cfg.kd_teacher)
    return self._kd_teacher

  def student_config(self, **layers) -> HybridConfig:
    m = self.cfg.model
    fields = {k: m[k] for k in _STUDENT_FIELDS if m.get(k) is not None}
    if fields.get("mla_rope_scaling") is not None:
      fields["mla_rope_scaling"] = dict(fields["mla_rope_scaling"])
    base = self.teacher().config
    base = dataclasses.replace(base, **self._compute(self.cfg.train.dtype))
    return HybridConfig.from_llama(base, **fields, **layers)

  def load_artifact(self, stage: str) -> CausalLM:
    path = os.path.join(self.workdir, stage, "model")
    if not os.path.exists(path):
      raise FileNotFoundError(f"stage {stage!r} has no artifact at {path}; run that stage first")
    return load_model(path, dtype=self.cfg.train.dtype)

  def set_remat(self, model: CausalLM) -> None:
    model.remat = bool(self.cfg.train.remat)

  def flops_per_token(self, student_cfg, teacher_cfg, backward_fraction: float = 1.0) -> float:
    """Training FLOPs per token: student fwd+bwd plus the teacher's forward."""
    T = self.cfg.data.seq_len
    return (accounting.flops_per_token(student_cfg, T, training=True)
            + accounting.flops_per_token(teacher_cfg, T, training=False))

  # -- data ----------------------------------------------------------------------------------------
  def tokenizer(self):
    if self._tokenizer is None:
      from zebra_jax.data import ByteTokenizer, load_tokenizer
      spec = self.cfg.data.get("tokenizer", None) or self.cfg.teacher.path
      if spec == "byte":
        self._tokenizer = ByteTokenizer()
      elif isinstance(spec, str) and spec.startswith("random:"):
        raise ValueError("a random teacher has no tokenizer: set data.tokenizer ('byte', a GGUF or "
                         "an HF directory)")
      else:
        if spec == "smollm2":
          from zebra_jax.assets import smollm2_gguf_path
          spec = smollm2_gguf_path()
        self._tokenizer = load_tokenizer(spec)
    return self._tokenizer

  def _seed_for(self, purpose: str) -> int:
    return self.cfg.data.shuffle_seed + sum(map(ord, purpose))

  def batches(self, purpose: str, batch_size: int, split: str = "train"):
    from zebra_jax.data import make_iterator
    d = self.cfg.data
    return make_iterator(d.source, self.tokenizer(), seq_len=d.seq_len, global_batch=batch_size,
                         split=split, heldout_fraction=d.heldout_fraction,
                         seed=self._seed_for(purpose))

  def calibration_batches(self, n: int, batch_size: int) -> list[dict]:
    it = self.batches("calibration", batch_size, split="heldout")
    return [next(it) for _ in range(n)]

  def preference_batches(self, batch_size: int):
    from zebra_jax.distill.preferences import preference_iterator
    d = self.cfg.dpo
    return preference_iterator(self.cfg.data.dpo_path, self.tokenizer(), batch_size=batch_size,
                               max_len=d.max_len, max_prompt_len=d.max_prompt_len,
                               seed=self._seed_for("dpo"))

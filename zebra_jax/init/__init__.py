"""Build a hybrid from a pretrained teacher: SVD-initialised MLA, attention-initialised Mamba2.

`init_hybrid(teacher, hybrid_config)` returns a `CausalLM` whose
* attention layers are copies of the teacher's,
* MLA layers come from the teacher's attention by SVD (`svd_mla`),
* Mamba2 layers take x <- W_V, B <- W_K, C <- W_Q, out <- W_O (`mamba_from_attention`),
and whose MLPs, block norms, embeddings, final norm and LM head are the teacher's.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from zebra_jax.config import ConfigError, HybridConfig, LlamaConfig
from zebra_jax.models.hybrid import CausalLM
from zebra_jax.init import mamba_from_attention, svd_mla


def _copy(dst: nnx.Param, src) -> None:
  value = src[...] if isinstance(src, nnx.Variable) else src
  if tuple(dst.shape) != tuple(value.shape):
    raise ValueError(f"shape mismatch while copying: {value.shape} into {dst.shape}")
  dst[...] = jnp.asarray(value, dst[...].dtype)


def copy_block_shell(dst_block, src_block) -> None:
  """MLP and both block norms (everything but the mixer)."""
  _copy(dst_block.input_layernorm.weight, src_block.input_layernorm.weight)
  _copy(dst_block.post_attention_layernorm.weight, src_block.post_attention_layernorm.weight)
  for name in ("gate_proj", "up_proj", "down_proj"):
    _copy(getattr(dst_block.mlp, name).kernel, getattr(src_block.mlp, name).kernel)


def copy_attention(dst, src) -> None:
  for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
    _copy(getattr(dst, name).kernel, getattr(src, name).kernel)


def check_compatible(teacher_config: LlamaConfig, config: HybridConfig) -> None:
  """The hybrid must keep the teacher's Llama shape (it reuses its embeddings, MLPs and norms)."""
  diffs = [
    f.name
    for f in dataclasses.fields(LlamaConfig)
    if f.name not in ("dtype", "param_dtype", "impl")
    and getattr(teacher_config, f.name) != getattr(config, f.name)
  ]
  if diffs:
    raise ConfigError(
      f"hybrid config differs from the teacher in Llama field(s) {diffs}; build it "
      "with HybridConfig.from_llama(teacher.config, ...)"
    )


def init_hybrid(
  teacher: CausalLM,
  config: HybridConfig,
  *,
  seed: int = 0,
  q_energy_ratio: float | None = None,
  kv_energy_ratio: float | None = None,
  fixed_rank_first_last: bool = True,
) -> CausalLM:
  """Initialise a hybrid from `teacher` by the Zebra-Llama / MambaInLlama recipes.

  q_energy_ratio / kv_energy_ratio turn on X-EcoMLA dynamic ranks: each MLA layer keeps the
  smallest rank whose singular values hold that fraction of the energy (rounded up to
  `qkv_rank_divisor`); with `fixed_rank_first_last` layers 0 and L-1 keep the config's ranks.
  The random parts (Mamba2 z/dt rows, conv, A_log, D, dt_bias) are drawn from `seed`.
  """

  if not isinstance(config, HybridConfig):
    raise ConfigError(f"init_hybrid needs a HybridConfig, got {type(config).__name__}")
  check_compatible(teacher.config, config)
  if teacher.config.layer_types() != ("attention",) * teacher.config.num_hidden_layers:
    raise ConfigError("init_hybrid needs a pure-attention (Llama) teacher")
  if config.mla_layers:
    svd_mla.check_teacher_shapes(config)
  if q_energy_ratio is not None or kv_energy_ratio is not None:
    ranks = svd_mla.dynamic_ranks(
      teacher,
      config,
      q_energy_ratio=q_energy_ratio,
      kv_energy_ratio=kv_energy_ratio,
      fixed_rank_first_last=fixed_rank_first_last,
    )
    config = dataclasses.replace(config, mla_layer_ranks=ranks)

  student = CausalLM(config, rngs=nnx.Rngs(seed))
  _copy(student.embed_tokens.embedding, teacher.embed_tokens.embedding)
  _copy(student.norm.weight, teacher.norm.weight)
  if student.lm_head is not None:
    _copy(student.lm_head.kernel, teacher.lm_head.kernel)
  for i, (dst, src) in enumerate(zip(student.layers, teacher.layers)):
    copy_block_shell(dst, src)
    if dst.mixer_type == "attention":
      copy_attention(dst.mixer, src.mixer)
    elif dst.mixer_type == "mla":
      svd_mla.init_mla_from_attention(dst.mixer, src.mixer, config, i)
    else:
      mamba_from_attention.init_mamba2_from_attention(dst.mixer, src.mixer, config)
  return student

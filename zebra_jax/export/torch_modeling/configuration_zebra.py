"""Configuration of the Zebra-Llama hybrid (MLA + Mamba2 + GQA attention layers) exported by zebra-jax.

Self-contained transformers remote code (torch + transformers only). Field names are the Hugging Face
Llama ones for the shared parts and the Zebra-Llama / MambaInLlama reference names for the mixers.
Layer i is MLA if i is in `mla_layers`, GQA attention if in `attn_layers`, Mamba2 otherwise.
"""

from transformers import PretrainedConfig


class ZebraLlamaConfig(PretrainedConfig):
  model_type = "zebra_llama"
  keys_to_ignore_at_inference = ["past_key_values"]

  def __init__(
    self,
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=None,
    head_dim=None,
    hidden_act="silu",
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    rope_scaling=None,
    max_position_embeddings=2048,
    initializer_range=0.02,
    use_cache=True,
    tie_word_embeddings=False,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
    # layer pattern
    mla_layers=(),
    attn_layers=(),
    # MLA
    q_lora_rank=None,
    kv_lora_rank=None,
    qk_rope_head_dim=None,
    qk_nope_head_dim=None,
    v_head_dim=None,
    use_full_kv_head=False,
    use_lora_layer_norm=False,
    lora_layer_norm_eps=1e-6,
    mla_rope_theta=None,
    mla_rope_scaling=None,
    mla_layer_ranks=None,
    # Mamba2
    d_state=None,
    headdim=None,
    ngroups=None,
    d_conv=4,
    chunk_size=256,
    d_inner=None,
    d_xb=None,
    conv_bias=True,
    gated_norm_eps=1e-5,
    **kwargs,
  ):
    if hidden_act != "silu":
      raise ValueError(f"hidden_act={hidden_act!r}: only silu (SwiGLU) is implemented")
    self.vocab_size = vocab_size
    self.hidden_size = hidden_size
    self.intermediate_size = intermediate_size
    self.num_hidden_layers = num_hidden_layers
    self.num_attention_heads = num_attention_heads
    self.num_key_value_heads = num_key_value_heads or num_attention_heads
    self.head_dim = head_dim or hidden_size // num_attention_heads
    self.hidden_act = hidden_act
    self.rms_norm_eps = rms_norm_eps
    self.rope_theta = rope_theta
    # Stored under another attribute: transformers>=5 turns `rope_scaling` into a property.
    self.attn_rope_scaling = rope_scaling
    self.max_position_embeddings = max_position_embeddings
    self.initializer_range = initializer_range
    self.use_cache = use_cache
    self.mla_layers = sorted(int(i) for i in (mla_layers or ()))
    self.attn_layers = sorted(int(i) for i in (attn_layers or ()))
    self.q_lora_rank = q_lora_rank
    self.kv_lora_rank = kv_lora_rank
    self.qk_rope_head_dim = self.head_dim // 2 if qk_rope_head_dim is None else qk_rope_head_dim
    self.qk_nope_head_dim = (
      self.head_dim - self.qk_rope_head_dim if qk_nope_head_dim is None else qk_nope_head_dim
    )
    self.v_head_dim = self.head_dim if v_head_dim is None else v_head_dim
    self.use_full_kv_head = use_full_kv_head
    self.use_lora_layer_norm = use_lora_layer_norm
    self.lora_layer_norm_eps = lora_layer_norm_eps
    self.mla_rope_theta = rope_theta if mla_rope_theta is None else mla_rope_theta
    self.mla_rope_scaling = mla_rope_scaling
    self.mla_layer_ranks = {str(k): list(v) for k, v in mla_layer_ranks.items()} if mla_layer_ranks else None
    self.d_state = self.head_dim if d_state is None else d_state
    self.headdim = self.head_dim if headdim is None else headdim
    self.d_inner = num_attention_heads * self.head_dim if d_inner is None else d_inner
    self.d_xb = self.num_key_value_heads * self.head_dim if d_xb is None else d_xb
    self.ngroups = self.d_inner // self.d_state if ngroups is None else ngroups
    self.d_conv = d_conv
    self.chunk_size = chunk_size
    self.conv_bias = conv_bias
    self.gated_norm_eps = gated_norm_eps
    both = set(self.mla_layers) & set(self.attn_layers)
    if both:
      raise ValueError(f"layers {sorted(both)} are in both mla_layers and attn_layers")
    super().__init__(
      bos_token_id=bos_token_id,
      eos_token_id=eos_token_id,
      pad_token_id=pad_token_id,
      tie_word_embeddings=tie_word_embeddings,
      **kwargs,
    )
    self.tie_word_embeddings = tie_word_embeddings

  def to_dict(self):
    d = super().to_dict()
    d["rope_scaling"] = d.pop("attn_rope_scaling", None)
    return d

  # -- derived ------------------------------------------------------------------------------------
  def layer_type(self, i):
    if i in self.mla_layers:
      return "mla"
    if i in self.attn_layers:
      return "attention"
    return "mamba2"

  def mla_ranks(self, i):
    if self.mla_layer_ranks and str(i) in self.mla_layer_ranks:
      r_q, r_kv = self.mla_layer_ranks[str(i)]
      return r_q, r_kv
    return self.q_lora_rank, self.kv_lora_rank

  @property
  def mla_kv_heads(self):
    return self.num_attention_heads if self.use_full_kv_head else self.num_key_value_heads

  @property
  def mamba_nheads(self):
    return self.d_inner // self.headdim

"""PyTorch Zebra-Llama hybrid: a Llama decoder whose mixer is MLA, Mamba2 or GQA attention per layer.

Written by zebra-jax's exporter as transformers remote code; depends only on torch and transformers.

    model = AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True, dtype=torch.float32)
    out = model.generate(input_ids, max_new_tokens=32, do_sample=False)

Decoder layer (pre-norm): h += mixer(input_layernorm(h)); h += mlp(post_attention_layernorm(h)).
Mixers, with the Zebra-Llama reference tensor names (`model.layers.N.<mla|mamba|self_attn>.*`):

* `mla` (DeepSeek-style MLA): q = q_b(N(q_a(x))) per head [nope | rope]; [c_kv | k_pe] =
  kv_a_proj_with_mqa(x); kv = kv_b(N(c_kv)) per kv head [k_nope | v] (query head h reads kv head
  h // (H / G)); one rope key k_pe shared by all heads; RoPE on the rope channels only with adjacent
  pairs (2j, 2j+1) (DeepSeek interleaved) and YaRN frequencies whose attention factor scales cos/sin.
* `mamba` (Mamba2): in_proj rows [z | x | B | C | dt]; depthwise causal conv1d + SiLU over the
  un-repeated [x | B | C]; x and B repeated per group to the heads; SSD scan (a plain PyTorch chunked
  scan, float32) with dt = softplus(dt + dt_bias), A = -exp(A_log), y += D x; gated RMSNorm
  GroupRMSNorm(y * silu(z)) * w; out_proj.
* `self_attn`: Llama GQA attention with rotate-half RoPE (default / linear / llama3 / yarn).

Cache (`ZebraCache`, used by `generate`): attention layers keep rotated K and V; MLA layers keep the
compressed rows [N(c_kv) | rope(k_pe)] (r_kv + d_r values per token, as the reference's inference
code) and decompress them through kv_b_proj at every step (no weight absorption: simple and exact);
Mamba2 layers keep (conv_state, ssm_state). Left padding (attention_mask zeros before the first real
token) is supported: pad keys are masked and pad steps leave the Mamba2 states unchanged. Padding in
the middle of a sequence is not supported. Beam search reorders the cache with `reorder_cache`.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_zebra import ZebraLlamaConfig

_MASKED_DT = -1e4  # raw dt of pad steps: softplus(-1e4 + dt_bias) == 0 exactly in float32


# ------------------------------------------------------------------------------------------------
# RoPE
# ------------------------------------------------------------------------------------------------
def _yarn_mscale(scale, mscale=1.0):
  return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def rope_inv_freq(dim, theta, scaling, max_position_embeddings):
  """(inv_freq (dim/2,) float64, attention factor) for default / linear / llama3 / yarn rope."""
  # device="cpu" explicitly: transformers builds the model under a meta-device context.
  inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device="cpu") / dim))
  if not scaling:
    return inv, 1.0
  kind = scaling.get("rope_type", scaling.get("type", "default"))
  if kind == "default":
    return inv, 1.0
  factor = float(scaling["factor"])
  if kind == "linear":
    return inv / factor, 1.0
  if kind == "llama3":
    old = float(scaling["original_max_position_embeddings"])
    lo, hi = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > old / lo, inv / factor, inv)
    smooth = (old / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old / hi) & (wavelen <= old / lo)
    return torch.where(medium, smoothed, scaled), 1.0
  if kind == "yarn":
    orig = scaling.get("original_max_position_embeddings") or max_position_embeddings
    beta_fast = scaling.get("beta_fast") or 32
    beta_slow = scaling.get("beta_slow") or 1
    att = scaling.get("attention_factor")
    if att is None:
      m, m_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
      att = _yarn_mscale(factor, m) / _yarn_mscale(factor, m_all) if m and m_all else _yarn_mscale(factor)

    def corr(rot):
      return dim * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(theta))

    lo, hi = corr(beta_fast), corr(beta_slow)
    if scaling.get("truncate", True):
      lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, dim - 1)
    if lo == hi:
      hi += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float64, device="cpu") - lo) / (hi - lo)).clamp(0, 1)
    keep = 1 - ramp  # 1: original frequency, 0: divided by factor
    return inv / factor * (1 - keep) + inv * keep, float(att)
  raise ValueError(f"rope_type={kind!r} is not implemented")


class Rope:
  """cos/sin tables computed on the fly (no buffers: nothing to initialise or load)."""

  def __init__(self, dim, theta, scaling, max_position_embeddings):
    self.dim = dim
    self.inv_freq, self.factor = rope_inv_freq(dim, theta, scaling, max_position_embeddings)

  def __call__(self, positions):  # (B, T) -> cos, sin (B, T, dim/2) float32
    freqs = positions.float()[..., None] * self.inv_freq.to(torch.float32).to(positions.device)
    return torch.cos(freqs) * self.factor, torch.sin(freqs) * self.factor


def rope_rotate_half(x, cos, sin):
  """Llama pairing: channel i with i + K/2. x (B, T, H, K)."""
  half = x.shape[-1] // 2
  x1, x2 = x[..., :half].float(), x[..., half:].float()
  c, s = cos[:, :, None], sin[:, :, None]
  return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)


def rope_interleaved(x, cos, sin):
  """DeepSeek pairing: channels (2j, 2j+1) rotate with frequency j. x (B, T, H, R)."""
  if x.shape[-1] == 0:
    return x
  xf = x.float().reshape(*x.shape[:-1], -1, 2)
  e, o = xf[..., 0], xf[..., 1]
  c, s = cos[:, :, None], sin[:, :, None]
  return torch.stack([e * c - o * s, o * c + e * s], dim=-1).reshape(x.shape).to(x.dtype)


# ------------------------------------------------------------------------------------------------
# basic layers
# ------------------------------------------------------------------------------------------------
class ZebraRMSNorm(nn.Module):
  """Llama RMSNorm: normalise in float32, cast back, scale."""

  def __init__(self, dim, eps):
    super().__init__()
    self.weight = nn.Parameter(torch.ones(dim))
    self.eps = eps

  def forward(self, x):
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
    return self.weight.to(x.dtype) * xf.to(x.dtype)


class ZebraGatedRMSNorm(nn.Module):
  """mamba_ssm RMSNormGated(norm_before_gate=False): GroupRMSNorm(y * silu(z)) * weight."""

  def __init__(self, dim, group_size, eps):
    super().__init__()
    self.weight = nn.Parameter(torch.ones(dim))
    self.group_size, self.eps = group_size, eps

  def forward(self, y, z):
    g = y.float() * F.silu(z.float())
    gg = g.reshape(*g.shape[:-1], -1, self.group_size)
    gg = gg * torch.rsqrt(gg.pow(2).mean(-1, keepdim=True) + self.eps)
    return (gg.reshape(g.shape) * self.weight.float()).to(y.dtype)


class ZebraMLP(nn.Module):
  def __init__(self, config):
    super().__init__()
    d, f = config.hidden_size, config.intermediate_size
    self.gate_proj = nn.Linear(d, f, bias=False)
    self.up_proj = nn.Linear(d, f, bias=False)
    self.down_proj = nn.Linear(f, d, bias=False)

  def forward(self, x):
    return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def grouped_attention(q, k, v, scale, q_index, key_valid):
  """softmax(q k^T * scale) v, query head h reading kv head h // (H/G).

  q (B, T, H, Kq); k (B, S, G, Kq); v (B, S, G, V); q_index (T,) the queries' indices in the cache
  timeline; key_valid (B, S) False for pad keys. A query always sees itself, so pad rows stay finite.
  """
  B, T, H, _ = q.shape
  S, G = k.shape[1], k.shape[2]
  qg = q.float().reshape(B, T, G, H // G, q.shape[-1])
  scores = torch.einsum("btgrk,bsgk->bgrts", qg, k.float()) * scale
  s_idx = torch.arange(S, device=q.device)
  causal = s_idx[None, :] <= q_index[:, None]  # (T, S)
  allowed = (causal[None] & key_valid[:, None, :]) | (s_idx[None, None, :] == q_index[None, :, None])
  scores = scores.masked_fill(~allowed[:, None, None], float("-inf"))
  probs = scores.softmax(dim=-1)
  out = torch.einsum("bgrts,bsgv->btgrv", probs, v.float())
  return out.reshape(B, T, H, v.shape[-1]).to(q.dtype)


# ------------------------------------------------------------------------------------------------
# mixers
# ------------------------------------------------------------------------------------------------
class ZebraAttention(nn.Module):
  """Llama GQA attention; cache entry: (K after RoPE (B, S, G, K), V (B, S, G, K))."""

  def __init__(self, config, layer_idx):
    super().__init__()
    d, H, G, K = (config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim)
    self.H, self.G, self.K = H, G, K
    self.q_proj = nn.Linear(d, H * K, bias=False)
    self.k_proj = nn.Linear(d, G * K, bias=False)
    self.v_proj = nn.Linear(d, G * K, bias=False)
    self.o_proj = nn.Linear(H * K, d, bias=False)
    self.rope = Rope(K, config.rope_theta, config.attn_rope_scaling, config.max_position_embeddings)

  def forward(self, x, positions, q_index, key_valid, entry):
    B, T, _ = x.shape
    q = self.q_proj(x).view(B, T, self.H, self.K)
    k = self.k_proj(x).view(B, T, self.G, self.K)
    v = self.v_proj(x).view(B, T, self.G, self.K)
    cos, sin = self.rope(positions)
    q, k = rope_rotate_half(q, cos, sin), rope_rotate_half(k, cos, sin)
    if entry is not None:
      k, v = torch.cat([entry[0], k], dim=1), torch.cat([entry[1], v], dim=1)
    out = grouped_attention(q, k, v, self.K**-0.5, q_index, key_valid)
    return self.o_proj(out.reshape(B, T, self.H * self.K)), (k, v)


class ZebraMLA(nn.Module):
  """Multi-head latent attention; cache entry: rows [N(c_kv) | rope(k_pe)] (B, S, r_kv + d_r)."""

  def __init__(self, config, layer_idx):
    super().__init__()
    c = config
    d, H, G = c.hidden_size, c.num_attention_heads, c.mla_kv_heads
    self.H, self.G = H, G
    self.d_n, self.d_r, self.d_v = c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim
    r_q, r_kv = c.mla_ranks(layer_idx)
    self.r_kv = r_kv
    d_qk = self.d_n + self.d_r
    if r_q is None:
      self.q_proj = nn.Linear(d, H * d_qk, bias=False)
    else:
      self.q_a_proj = nn.Linear(d, r_q, bias=False)
      if c.use_lora_layer_norm:
        self.q_a_layernorm = ZebraRMSNorm(r_q, c.lora_layer_norm_eps)
      self.q_b_proj = nn.Linear(r_q, H * d_qk, bias=False)
    self.kv_a_proj_with_mqa = nn.Linear(d, r_kv + self.d_r, bias=False)
    if c.use_lora_layer_norm:
      self.kv_a_layernorm = ZebraRMSNorm(r_kv, c.lora_layer_norm_eps)
    self.kv_b_proj = nn.Linear(r_kv, G * (self.d_n + self.d_v), bias=False)
    self.out_proj = nn.Linear(H * self.d_v, d, bias=False)
    self.rope = Rope(self.d_r, c.mla_rope_theta, c.mla_rope_scaling, c.max_position_embeddings)
    self.scale = d_qk**-0.5
    scaling = c.mla_rope_scaling
    if scaling and scaling.get("mscale_all_dim"):  # DeepSeek's softmax correction (never in Zebra)
      m = _yarn_mscale(float(scaling["factor"]), float(scaling["mscale_all_dim"]))
      self.scale *= m * m

  def forward(self, x, positions, q_index, key_valid, entry):
    B, T, _ = x.shape
    cos, sin = self.rope(positions) if self.d_r else (None, None)
    if hasattr(self, "q_proj"):
      q = self.q_proj(x)
    else:
      q_lat = self.q_a_proj(x)
      if hasattr(self, "q_a_layernorm"):
        q_lat = self.q_a_layernorm(q_lat)
      q = self.q_b_proj(q_lat)
    q = q.view(B, T, self.H, self.d_n + self.d_r)
    q_nope, q_pe = q[..., : self.d_n], q[..., self.d_n :]
    kv_a = self.kv_a_proj_with_mqa(x)
    c_kv, k_pe = kv_a[..., : self.r_kv], kv_a[..., self.r_kv :]
    if hasattr(self, "kv_a_layernorm"):
      c_kv = self.kv_a_layernorm(c_kv)
    if self.d_r:
      q_pe = rope_interleaved(q_pe, cos, sin)
      k_pe = rope_interleaved(k_pe[:, :, None], cos, sin)[:, :, 0]
    rows = torch.cat([c_kv, k_pe.to(c_kv.dtype)], dim=-1)
    if entry is not None:
      rows = torch.cat([entry, rows], dim=1)
    S = rows.shape[1]
    kv = self.kv_b_proj(rows[..., : self.r_kv]).view(B, S, self.G, self.d_n + self.d_v)
    k_nope, v = kv[..., : self.d_n], kv[..., self.d_n :]
    k_pe_all = rows[..., self.r_kv :][:, :, None].to(k_nope.dtype).expand(B, S, self.G, self.d_r)
    k = torch.cat([k_nope, k_pe_all], dim=-1)
    qf = torch.cat([q_nope, q_pe.to(q_nope.dtype)], dim=-1)
    out = grouped_attention(qf, k, v, self.scale, q_index, key_valid)
    return self.out_proj(out.reshape(B, T, self.H * self.d_v)), rows


def ssd_chunked(x, dt, A, Bm, Cm, chunk, state):
  """Mamba2 SSD in float32, chunked: y_t = S_t C_t with S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_t^T.

  x (b, T, h, p); dt (b, T, h) after softplus; A (h,); Bm, Cm (b, T, h, n) per head; state
  (b, h, p, n). Returns y (b, T, h, p) (without the D skip) and the final state.
  """
  b, T, h, p = x.shape
  n = Bm.shape[-1]
  L = max(1, min(chunk, T))
  pad = (-T) % L
  if pad:  # dt = 0 on pad steps: exp(0) = 1 and no input, so the final state is unchanged
    x, dt, Bm, Cm = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, Bm, Cm))
  nc = (T + pad) // L
  x = x.reshape(b, nc, L, h, p)
  dt = dt.reshape(b, nc, L, h)
  Bm = Bm.reshape(b, nc, L, h, n)
  Cm = Cm.reshape(b, nc, L, h, n)
  a_cum = torch.cumsum(dt * A, dim=2)  # (b, c, L, h)
  seg = a_cum[:, :, :, None, :] - a_cum[:, :, None, :, :]  # (b, c, t, s, h)
  causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
  decay = torch.exp(seg.masked_fill(~causal[None, None, :, :, None], float("-inf")))
  scores = torch.einsum("bcthn,bcshn->bctsh", Cm, Bm)
  y = torch.einsum("bctsh,bcsh,bcshp->bcthp", scores * decay, dt, x)
  to_end = torch.exp(a_cum[:, :, -1:, :] - a_cum)  # (b, c, L, h)
  chunk_states = torch.einsum("bclh,bclhp,bclhn->bchpn", to_end * dt, x, Bm)
  y_prev = []
  for ci in range(nc):  # carry the state across chunks
    y_prev.append(torch.einsum("blhn,bhpn,blh->blhp", Cm[:, ci], state, torch.exp(a_cum[:, ci])))
    state = torch.exp(a_cum[:, ci, -1])[:, :, None, None] * state + chunk_states[:, ci]
  y = y + torch.stack(y_prev, dim=1)
  return y.reshape(b, nc * L, h, p)[:, :T], state


class ZebraMamba2(nn.Module):
  """Mamba2 mixer; cache entry: (conv_state (B, d_conv-1, conv_dim) oldest first, ssm_state
  (B, H, headdim, d_state) float32)."""

  def __init__(self, config, layer_idx):
    super().__init__()
    c = config
    d = c.hidden_size
    self.E, self.X, self.N, self.P, self.G = c.d_inner, c.d_xb, c.d_state, c.headdim, c.ngroups
    self.H = c.mamba_nheads
    self.K = c.d_conv
    self.chunk = c.chunk_size
    self.conv_dim = 2 * self.X + self.E
    self.in_proj = nn.Linear(d, 2 * self.E + 2 * self.X + self.H, bias=False)
    self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, self.K, groups=self.conv_dim, bias=c.conv_bias)
    self.A_log = nn.Parameter(torch.zeros(self.H))
    self.D = nn.Parameter(torch.ones(self.H))
    self.dt_bias = nn.Parameter(torch.zeros(self.H))
    self.norm = ZebraGatedRMSNorm(self.E, self.E // self.G, c.gated_norm_eps)
    self.out_proj = nn.Linear(self.E, d, bias=False)

  def forward(self, u, token_valid, entry):
    Bsz, T, _ = u.shape
    E, X = self.E, self.X
    zxbcdt = self.in_proj(u)
    z, xBC, dt = zxbcdt[..., :E], zxbcdt[..., E : 2 * E + 2 * X], zxbcdt[..., 2 * E + 2 * X :]
    if token_valid is not None:  # pad steps: zero conv input, zero dt (state passes unchanged)
      xBC = xBC * token_valid[..., None].to(xBC.dtype)
      dt = dt.masked_fill(~token_valid[..., None], _MASKED_DT)
    if entry is None:
      conv_state = xBC.new_zeros(Bsz, self.K - 1, self.conv_dim)
      ssm_state = u.new_zeros(Bsz, self.H, self.P, self.N, dtype=torch.float32)
    else:
      conv_state, ssm_state = entry
    xpad = torch.cat([conv_state.to(xBC.dtype), xBC], dim=1)  # (B, K-1+T, C)
    xc = F.conv1d(xpad.transpose(1, 2), self.conv1d.weight, self.conv1d.bias, groups=self.conv_dim).transpose(
      1, 2
    )
    new_conv_state = xpad[:, xpad.shape[1] - (self.K - 1) :]
    xc = F.silu(xc)
    x = xc[..., :X].reshape(Bsz, T, X // self.P, self.P)
    Bm = xc[..., X : 2 * X].reshape(Bsz, T, X // self.N, self.N)
    Cm = xc[..., 2 * X :].reshape(Bsz, T, self.G, self.N)
    x = x.repeat_interleave(self.H // x.shape[2], dim=2)  # GQA: group g -> heads
    Bm = Bm.repeat_interleave(self.G // Bm.shape[2], dim=2)
    Bm = Bm.repeat_interleave(self.H // self.G, dim=2)
    Cm = Cm.repeat_interleave(self.H // self.G, dim=2)
    dt = F.softplus(dt.float() + self.dt_bias.float())
    A = -torch.exp(self.A_log.float())
    xf = x.float()
    if T == 1:  # one decode step
      dA = torch.exp(dt[:, 0] * A)  # (B, H)
      ssm_state = dA[:, :, None, None] * ssm_state + torch.einsum(
        "bh,bhp,bhn->bhpn", dt[:, 0], xf[:, 0], Bm[:, 0].float()
      )
      y = torch.einsum("bhpn,bhn->bhp", ssm_state, Cm[:, 0].float())[:, None]
    else:
      y, ssm_state = ssd_chunked(xf, dt, A, Bm.float(), Cm.float(), self.chunk, ssm_state)
    y = y + self.D.float()[:, None] * xf
    y = self.norm(y.reshape(Bsz, T, E).to(u.dtype), z)
    return self.out_proj(y), (new_conv_state, ssm_state)


# ------------------------------------------------------------------------------------------------
# cache, blocks, model
# ------------------------------------------------------------------------------------------------
class ZebraCache:
  """Per-layer generation state plus the key-validity mask of every cached position."""

  is_compileable = False

  def __init__(self, num_layers):
    self.entries = [None] * num_layers
    self.key_valid = None  # (B, S) bool

  def get_seq_length(self, layer_idx=0):
    return 0 if self.key_valid is None else int(self.key_valid.shape[1])

  def reorder_cache(self, beam_idx):
    def pick(x):
      if x is None:
        return None
      if isinstance(x, tuple):
        return tuple(pick(t) for t in x)
      return x.index_select(0, beam_idx.to(x.device))

    self.entries = [pick(e) for e in self.entries]
    self.key_valid = pick(self.key_valid)


class ZebraDecoderLayer(nn.Module):
  def __init__(self, config, layer_idx):
    super().__init__()
    self.kind = config.layer_type(layer_idx)
    self.input_layernorm = ZebraRMSNorm(config.hidden_size, config.rms_norm_eps)
    if self.kind == "mla":
      self.mla = ZebraMLA(config, layer_idx)
    elif self.kind == "attention":
      self.self_attn = ZebraAttention(config, layer_idx)
    else:
      self.mamba = ZebraMamba2(config, layer_idx)
    self.post_attention_layernorm = ZebraRMSNorm(config.hidden_size, config.rms_norm_eps)
    self.mlp = ZebraMLP(config)

  def forward(self, h, positions, q_index, key_valid, token_valid, entry):
    x = self.input_layernorm(h)
    if self.kind == "mla":
      y, entry = self.mla(x, positions, q_index, key_valid, entry)
    elif self.kind == "attention":
      y, entry = self.self_attn(x, positions, q_index, key_valid, entry)
    else:
      y, entry = self.mamba(x, token_valid, entry)
    h = h + y
    h = h + self.mlp(self.post_attention_layernorm(h))
    return h, entry


class ZebraPreTrainedModel(PreTrainedModel):
  config_class = ZebraLlamaConfig
  base_model_prefix = "model"
  _no_split_modules = ["ZebraDecoderLayer"]
  supports_gradient_checkpointing = False

  def _init_weights(self, module):
    std = getattr(self.config, "initializer_range", 0.02)
    if isinstance(module, nn.Linear):
      module.weight.data.normal_(0.0, std)
      if module.bias is not None:
        module.bias.data.zero_()
    elif isinstance(module, nn.Embedding):
      module.weight.data.normal_(0.0, std)
    elif isinstance(module, (ZebraRMSNorm, ZebraGatedRMSNorm)):
      module.weight.data.fill_(1.0)
    elif isinstance(module, ZebraMamba2):
      module.A_log.data.copy_(torch.log(torch.linspace(1.0, 16.0, module.H)))
      module.D.data.fill_(1.0)
      module.dt_bias.data.fill_(math.log(math.expm1(0.01)))


class ZebraLlamaModel(ZebraPreTrainedModel):
  def __init__(self, config):
    super().__init__(config)
    self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
    self.layers = nn.ModuleList([ZebraDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
    self.norm = ZebraRMSNorm(config.hidden_size, config.rms_norm_eps)
    self.post_init()

  def get_input_embeddings(self):
    return self.embed_tokens

  def set_input_embeddings(self, value):
    self.embed_tokens = value

  def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None):
    """Final-norm hidden states (B, T, d); `cache` (a ZebraCache) is read and updated in place."""
    B, T = input_ids.shape
    dev = input_ids.device
    past = 0 if cache is None else cache.get_seq_length()
    if attention_mask is None:
      new_valid = torch.ones(B, T, dtype=torch.bool, device=dev)
    else:
      if attention_mask.dim() != 2 or attention_mask.shape[0] != B:
        raise ValueError(f"attention_mask must be (batch, length), got {tuple(attention_mask.shape)}")
      new_valid = attention_mask[:, -T:].to(dev).bool()
    key_valid = (
      new_valid
      if cache is None or cache.key_valid is None
      else torch.cat([cache.key_valid, new_valid], dim=1)
    )
    if position_ids is None:  # count real tokens only: left padding keeps positions 0, 1, ...
      position_ids = (key_valid.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
    q_index = torch.arange(past, past + T, device=dev)
    token_valid = None if bool(new_valid.all()) else new_valid
    h = self.embed_tokens(input_ids)
    for i, layer in enumerate(self.layers):
      entry = None if cache is None else cache.entries[i]
      h, entry = layer(h, position_ids, q_index, key_valid, token_valid, entry)
      if cache is not None:
        cache.entries[i] = entry
    if cache is not None:
      cache.key_valid = key_valid
    return self.norm(h)


class ZebraLlamaForCausalLM(ZebraPreTrainedModel, GenerationMixin):
  def __init__(self, config):
    super().__init__(config)
    self.model = ZebraLlamaModel(config)
    # Tied embeddings: logits use the embedding matrix directly (no lm_head tensor is stored).
    if not config.tie_word_embeddings:
      self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
    self.post_init()

  def get_input_embeddings(self):
    return self.model.embed_tokens

  def get_output_embeddings(self):
    return getattr(self, "lm_head", None)

  @classmethod
  def _supports_default_dynamic_cache(cls):
    return False  # our own ZebraCache is created in forward

  def forward(
    self,
    input_ids=None,
    attention_mask=None,
    position_ids=None,
    past_key_values=None,
    use_cache=None,
    labels=None,
    logits_to_keep=0,
    return_dict=None,
    **kwargs,
  ):
    if input_ids is None:
      raise ValueError("input_ids is required (inputs_embeds is not supported)")
    use_cache = self.config.use_cache if use_cache is None else use_cache
    cache = past_key_values if isinstance(past_key_values, ZebraCache) else None
    if cache is None and use_cache:
      cache = ZebraCache(self.config.num_hidden_layers)
    h = self.model(
      input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache if use_cache else None
    )
    if logits_to_keep:
      h = h[:, -logits_to_keep:]
    if hasattr(self, "lm_head"):
      logits = self.lm_head(h)
    else:
      logits = F.linear(h, self.model.embed_tokens.weight)
    loss = None
    if labels is not None:
      loss = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
      )
    return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=cache if use_cache else None)

  def prepare_inputs_for_generation(
    self, input_ids, past_key_values=None, attention_mask=None, use_cache=True, **kwargs
  ):
    cache = past_key_values if isinstance(past_key_values, ZebraCache) else None
    seen = 0 if cache is None else cache.get_seq_length()
    return {
      "input_ids": input_ids[:, seen:],
      "past_key_values": cache,
      "attention_mask": attention_mask,
      "use_cache": use_cache,
    }

  def _reorder_cache(self, past_key_values, beam_idx):
    past_key_values.reorder_cache(beam_idx)
    return past_key_values


__all__ = ["ZebraLlamaForCausalLM", "ZebraLlamaModel", "ZebraPreTrainedModel", "ZebraCache"]

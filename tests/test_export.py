"""Export to PyTorch / Hugging Face and import back.

References, never our own JAX output compared with itself:
* exported Llamas are loaded by transformers' own LlamaForCausalLM;
* exported hybrids are loaded by `AutoModelForCausalLM.from_pretrained(trust_remote_code=True)` in a
  child Python that cannot import zebra_jax (`python -I -S` with only site-packages on the path, so
  the editable install's finder is never installed); its logits and greedy `generate` (with its cache,
  without, and left-padded batches) must match ours;
* the MambaInLlama layout is read by a float64 numpy forward written here from the format's spec
  (mamba_in_llama_reference.md sections 1.2 and 7), from the exported files alone.
Round trips (JAX -> files -> JAX, and JAX -> PyTorch save_pretrained -> JAX) must be bit-identical.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import sysconfig

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from _runs import load_script

from zebra_jax.config import HybridConfig, LlamaConfig  # noqa: E402
from zebra_jax.convert import CheckpointError, from_pretrained  # noqa: E402
from zebra_jax.convert.hf import read_safetensors_header, safetensors_tensors  # noqa: E402
from zebra_jax.export import export_pretrained  # noqa: E402
from zebra_jax.export.io import PlannedTensor, write_safetensors  # noqa: E402
from zebra_jax.models.hybrid import CausalLM  # noqa: E402

V = 64
BASE = dict(
  vocab_size=V,
  hidden_size=32,
  intermediate_size=48,
  num_attention_heads=4,
  num_key_value_heads=2,
  rms_norm_eps=1e-5,
  impl="reference",
  bos_token_id=None,
  eos_token_id=None,
)
LLAMA3 = dict(
  rope_type="llama3",
  factor=8.0,
  low_freq_factor=1.0,
  high_freq_factor=4.0,
  original_max_position_embeddings=32,
)
YARN = dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=16)


def scaled_model(config, seed=0, scale=2.0):
  """Random model with matrices scaled up (sharp attention, logits far from uniform)."""
  model = CausalLM(config, rngs=nnx.Rngs(seed))
  state = nnx.state(model, nnx.Param)
  nnx.update(model, jax.tree.map(lambda p: p * scale if p.ndim >= 2 else p, state))
  return model


def mixed_config(**kw):
  """MLA (YaRN, GQA kv_b) + Mamba2 (chunked: T > chunk_size) + GQA attention (llama3 rope)."""
  fields = dict(
    num_hidden_layers=4,
    mla_layers=(0,),
    attn_layers=(2,),
    chunk_size=8,
    q_lora_rank=16,
    kv_lora_rank=16,
    mla_rope_scaling=YARN,
    rope_scaling=LLAMA3,
    rope_theta=100.0,
    **BASE,
  )
  fields.update(kw)
  return HybridConfig(**fields)


def flat(model):
  return {
    ".".join(map(str, p)): np.asarray(v.get_value())
    for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
  }


def assert_bit_identical(a, b):
  fa, fb = flat(a), flat(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    assert fa[k].dtype == fb[k].dtype, k
    assert fa[k].shape == fb[k].shape, k
    assert np.array_equal(fa[k].view(np.uint8), fb[k].view(np.uint8)), f"{k} differs"


def rel_err(a, ref) -> float:
  return float(np.abs(np.asarray(a, np.float64) - ref).max() / np.abs(ref).max())


def ids_for(seed=0, batch=2, length=21):
  return np.random.default_rng(seed).integers(0, V, (batch, length)).astype(np.int32)


def word_tokenizer():
  from tokenizers import Tokenizer, models, pre_tokenizers

  tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(V)}, unk_token="w0"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0", pad_token="w0")


# ------------------------------------------------------------------------------------------------
# 1. Llama -> transformers LlamaForCausalLM
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["untied_llama3_sharded", "tied_head_dim"])
def test_llama_export_matches_transformers(tmp_path, kind):
  if kind == "untied_llama3_sharded":
    cfg = LlamaConfig(num_hidden_layers=2, rope_theta=100.0, rope_scaling=LLAMA3, **BASE)
    shard = 20_000  # bytes: forces several shards + index
  else:
    cfg = LlamaConfig(num_hidden_layers=2, head_dim=16, tie_word_embeddings=True, **BASE)
    shard = "5GB"
  model = scaled_model(cfg)
  out = export_pretrained(model, tmp_path / "llama", max_shard_size=shard, tokenizer=word_tokenizer())
  files = os.listdir(out)
  if kind == "untied_llama3_sharded":
    assert "model.safetensors.index.json" in files
    with open(os.path.join(out, "model.safetensors.index.json")) as f:
      shards = set(json.load(f)["weight_map"].values())
    assert len(shards) > 1 and shards <= set(files)
  else:
    assert "model.safetensors" in files
    assert "lm_head.weight" not in read_safetensors_header(os.path.join(out, "model.safetensors"))[0]
  assert "tokenizer.json" in files
  assert transformers.AutoTokenizer.from_pretrained(out).convert_tokens_to_ids("w7") == 7
  with open(os.path.join(out, "config.json")) as f:
    hf_cfg = json.load(f)
  assert hf_cfg["head_dim"] == cfg.head_dim and hf_cfg["rope_theta"] == cfg.rope_theta
  assert hf_cfg["tie_word_embeddings"] == cfg.tie_word_embeddings

  hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  assert type(hf).__name__ == "LlamaForCausalLM"
  ids = ids_for(1)
  with torch.no_grad():
    ref = hf(torch.from_numpy(ids.astype(np.int64))).logits.numpy().astype(np.float64)
  ours = np.asarray(model(jnp.asarray(ids)), np.float64)
  assert rel_err(ours, ref) < 1e-4
  back = from_pretrained(out)  # and the directory imports back bit for bit
  assert_bit_identical(model, back)


# ------------------------------------------------------------------------------------------------
# 2. hybrid -> remote code, run where zebra_jax cannot be imported
# ------------------------------------------------------------------------------------------------
CHILD = r"""
import json, sys
spec = json.load(open(sys.argv[1]))
sys.path.append(spec["site"])
try:
    import zebra_jax  # must NOT be importable here
    importable = True
except ImportError:
    importable = False
import torch
from transformers import AutoModelForCausalLM
results = []
for job in spec["jobs"]:
    res = {"zebra_jax_importable": importable}
    m = AutoModelForCausalLM.from_pretrained(job["dir"], trust_remote_code=True, dtype=torch.float32)
    m.eval()
    res["class"] = type(m).__name__
    res["module"] = type(m).__module__
    with torch.no_grad():
        res["logits"] = m(torch.tensor(job["ids"])).logits.tolist()
        res["gen"] = []
        for g in job["gen"]:
            prompts = g["prompts"]
            T = max(len(p) for p in prompts)
            ids = torch.tensor([[0] * (T - len(p)) + p for p in prompts])        # left padding
            mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts])
            out = m.generate(ids, attention_mask=mask, max_new_tokens=g["n"], do_sample=False,
                             use_cache=g["use_cache"], pad_token_id=0,
                             num_beams=g.get("beams", 1))
            res["gen"].append(out[:, T:].tolist())
    if job.get("resave"):
        m.save_pretrained(job["resave"])
    results.append(res)
json.dump(results, open(sys.argv[2], "w"))
"""


def run_isolated(tmp_path, jobs: list[dict]) -> list[dict]:
  """Runs CHILD under `python -I -S` (no site: the editable zebra_jax finder is never installed;
  site-packages is appended by hand) from a cwd outside the repository."""
  job = {"jobs": jobs, "site": sysconfig.get_paths()["purelib"]}
  jp, rp, script = tmp_path / "job.json", tmp_path / "result.json", tmp_path / "child.py"
  jp.write_text(json.dumps(job))
  script.write_text(CHILD)
  env = {
    "PATH": os.environ.get("PATH", ""),
    "HOME": os.environ.get("HOME", str(tmp_path)),
    "HF_MODULES_CACHE": str(tmp_path / "hf_modules"),
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "OMP_NUM_THREADS": "2",
  }
  proc = subprocess.run(
    [sys.executable, "-I", "-S", str(script), str(jp), str(rp)],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(rp.read_text())


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
  """The mixed hybrid (MLA with LoRA norms and a per-layer rank, Mamba2, attention) and its export."""
  model = scaled_model(mixed_config(use_lora_layer_norm=True, mla_layer_ranks={0: (8, 8)}))
  return model, export_pretrained(model, tmp_path_factory.mktemp("mixed") / "hybrid")


@pytest.fixture(scope="module")
def remote(mixed, tmp_path_factory):
  """One isolated child run: the exported directory, and a copy whose modeling file uses the
  wrong rope pairing for MLA queries (to show the comparison can fail)."""
  model, out = mixed
  tmp = tmp_path_factory.mktemp("remote")
  broken = _copy_dir(out, tmp / "broken")
  path = os.path.join(broken, "modeling_zebra.py")
  src = open(path).read()
  needle = "q_pe = rope_interleaved(q_pe, cos, sin)"
  assert needle in src
  open(path, "w").write(src.replace(needle, "q_pe = rope_rotate_half(q_pe, cos, sin)"))
  ids = ids_for(2, length=21)  # 21 > chunk_size 8: the chunked scan carries state across chunks
  prompts = [ids[0, :9].tolist(), ids[1, :5].tolist()]
  n = 10
  jobs = [
    {
      "dir": out,
      "ids": ids.tolist(),
      "resave": str(tmp / "resaved"),
      "gen": [
        {"prompts": prompts[:1], "n": n, "use_cache": True},
        {"prompts": prompts[:1], "n": n, "use_cache": False},
        {"prompts": prompts, "n": n, "use_cache": True},
      ],
    },
    {"dir": broken, "ids": ids.tolist(), "gen": []},
  ]
  # A tied-embedding hybrid (no lm_head tensor; logits through the embedding matrix).
  tied = scaled_model(mixed_config(tie_word_embeddings=True, num_hidden_layers=2, attn_layers=()), seed=1)
  tied_dir = export_pretrained(tied, tmp / "tied")
  jobs.append(
    {
      "dir": tied_dir,
      "ids": ids.tolist(),
      "gen": [
        {"prompts": prompts, "n": 4, "use_cache": True},
        {"prompts": prompts[:1], "n": 6, "use_cache": True, "beams": 3},
        {"prompts": prompts[:1], "n": 6, "use_cache": False, "beams": 3},
      ],
    }
  )
  res = run_isolated(tmp, jobs)
  return dict(
    ids=ids,
    prompts=prompts,
    n=n,
    good=res[0],
    broken=res[1],
    resaved=tmp / "resaved",
    tied_model=tied,
    tied=res[2],
  )


def test_hybrid_tensor_names_follow_the_reference(mixed):
  model, out = mixed
  header = read_safetensors_header(os.path.join(out, "model.safetensors"))[0]
  for name in (
    "model.layers.0.mla.q_a_proj.weight",
    "model.layers.0.mla.q_a_layernorm.weight",
    "model.layers.0.mla.q_b_proj.weight",
    "model.layers.0.mla.kv_a_proj_with_mqa.weight",
    "model.layers.0.mla.kv_a_layernorm.weight",
    "model.layers.0.mla.kv_b_proj.weight",
    "model.layers.0.mla.out_proj.weight",
    "model.layers.1.mamba.in_proj.weight",
    "model.layers.1.mamba.conv1d.weight",
    "model.layers.1.mamba.conv1d.bias",
    "model.layers.1.mamba.A_log",
    "model.layers.1.mamba.D",
    "model.layers.1.mamba.dt_bias",
    "model.layers.1.mamba.norm.weight",
    "model.layers.1.mamba.out_proj.weight",
    "model.layers.2.self_attn.q_proj.weight",
    "model.layers.2.self_attn.o_proj.weight",
    "model.layers.3.mamba.in_proj.weight",
    "model.layers.3.mlp.gate_proj.weight",
    "model.layers.3.input_layernorm.weight",
    "model.embed_tokens.weight",
    "model.norm.weight",
    "lm_head.weight",
  ):
    assert name in header, name
  c = model.config
  assert header["model.layers.1.mamba.conv1d.weight"]["shape"] == [c.mamba_conv_dim, 1, c.d_conv]
  assert header["model.layers.1.mamba.in_proj.weight"]["shape"] == [c.mamba_in_proj_dim, 32]
  # GQA kv_b: 2 kv heads of [k_nope 4 | v 8] from the per-layer rank r_kv = 8
  assert header["model.layers.0.mla.kv_b_proj.weight"]["shape"] == [2 * (4 + 8), 8]
  # conv1d.weight[c, 0, k] == our kernel[k, c]; in_proj.weight == our kernel.T
  t = safetensors_tensors(os.path.join(out, "model.safetensors"))
  p = flat(model)
  np.testing.assert_array_equal(
    t["model.layers.1.mamba.conv1d.weight"].load()[:, 0, :], p["layers.1.mixer.conv1d.kernel"].T
  )
  np.testing.assert_array_equal(
    t["model.layers.1.mamba.in_proj.weight"].load(), p["layers.1.mixer.in_proj.kernel"].T
  )
  with open(os.path.join(out, "config.json")) as f:
    cfg = json.load(f)
  assert cfg["auto_map"]["AutoModelForCausalLM"] == "modeling_zebra.ZebraLlamaForCausalLM"
  assert cfg["mla_layers"] == [0] and cfg["attn_layers"] == [2]


def test_hybrid_remote_code_logits_and_generate_match_ours(mixed, remote):
  import zebra_jax

  model, _ = mixed
  res = remote["good"]
  assert res["zebra_jax_importable"] is False
  assert res["class"] == "ZebraLlamaForCausalLM" and "zebra_jax" not in res["module"]
  ours = np.asarray(model(jnp.asarray(remote["ids"])), np.float64)
  assert rel_err(np.asarray(res["logits"]), ours) < 1e-4
  prompts, n = remote["prompts"], remote["n"]
  ours_gen = zebra_jax.generate(model, prompts, n, temperature=0.0, stop_tokens=())
  oracle = zebra_jax.generate(model, prompts, n, temperature=0.0, stop_tokens=(), use_cache=False)
  assert ours_gen == oracle
  assert res["gen"][0] == [ours_gen[0]]  # HF generate with the ZebraCache
  assert res["gen"][1] == [ours_gen[0]]  # HF generate recomputing (no cache)
  assert res["gen"][2] == ours_gen  # left-padded batch of two


def test_tied_hybrid_remote_code(remote):
  import zebra_jax

  model, res = remote["tied_model"], remote["tied"]
  assert rel_err(np.asarray(res["logits"]), np.asarray(model(jnp.asarray(remote["ids"])), np.float64)) < 1e-4
  assert res["gen"][0] == zebra_jax.generate(model, remote["prompts"], 4, temperature=0.0, stop_tokens=())
  assert res["gen"][1] == res["gen"][2]  # beam search: reordered ZebraCache == recomputation


def test_remote_code_comparison_can_fail(mixed, remote):
  model, _ = mixed
  ours = np.asarray(model(jnp.asarray(remote["ids"])), np.float64)
  assert rel_err(np.asarray(remote["broken"]["logits"]), ours) > 1e-3


def test_round_trip_through_pytorch_is_bit_identical(mixed, remote):
  """JAX -> files -> transformers model -> save_pretrained -> JAX: identical parameters."""
  model, out = mixed
  back = from_pretrained(out, impl="reference")
  assert back.config == model.config
  assert_bit_identical(model, back)
  back2 = from_pretrained(remote["resaved"], impl="reference")
  assert back2.config == model.config
  assert_bit_identical(model, back2)


# ------------------------------------------------------------------------------------------------
# 3. round trips and formats
# ------------------------------------------------------------------------------------------------
def test_round_trip_bit_identical_sharded_and_bf16(mixed, tmp_path):
  model, _ = mixed
  out = export_pretrained(model, tmp_path / "f32", max_shard_size="30KB")
  assert os.path.exists(os.path.join(out, "model.safetensors.index.json"))
  assert_bit_identical(model, from_pretrained(out))

  bf = scaled_model(model.config.replace(dtype="bfloat16", param_dtype="bfloat16"))
  out16 = export_pretrained(bf, tmp_path / "bf16")
  hdr = read_safetensors_header(os.path.join(out16, "model.safetensors"))[0]
  assert hdr["model.layers.1.mamba.in_proj.weight"]["dtype"] == "BF16"
  assert hdr["model.layers.1.mamba.A_log"]["dtype"] == "F32"  # kept float32 on purpose
  assert_bit_identical(bf, from_pretrained(out16, dtype="bfloat16"))
  # A float32 model exported as bf16 equals the model rounded to bf16.
  out_cast = export_pretrained(model, tmp_path / "cast", dtype="bfloat16")
  t = safetensors_tensors(os.path.join(out_cast, "model.safetensors"))
  w = np.asarray(t["model.layers.0.mla.q_b_proj.weight"].load()).astype(np.float32)
  want = flat(model)["layers.0.mixer.q_b_proj.kernel"].T.astype(ml_dtypes.bfloat16).astype(np.float32)
  assert np.array_equal(w, want)


def test_reference_layout_export_and_import(mixed, tmp_path):
  """The Zebra-Llama reference layout (plain Llama config.json + hybrid_config.json) both ways."""
  model, out = mixed
  ref = export_pretrained(
    model, tmp_path / "reference", format="zebra_reference", base_model="meta-llama/Llama-3.2-1B-Instruct"
  )
  assert sorted(os.listdir(ref)) == ["config.json", "hybrid_config.json", "model.safetensors"]
  assert type(transformers.AutoConfig.from_pretrained(ref)).__name__ == "LlamaConfig"
  ours = safetensors_tensors(os.path.join(out, "model.safetensors"))
  theirs = safetensors_tensors(os.path.join(ref, "model.safetensors"))
  assert sorted(ours) == sorted(theirs)  # the same tensors as the remote-code export
  with open(os.path.join(ref, "hybrid_config.json")) as f:
    hc = json.load(f)
  assert hc["ssm_cfg"]["ngroups"] == 4 and hc["rope_scaling"] == YARN and hc["kv_lora_rank"] == 16
  back = from_pretrained(ref, impl="reference")
  assert back.config == model.config
  assert_bit_identical(model, back)


# -- MambaInLlama --------------------------------------------------------------------------------
def _np_rms(x, w, eps):
  return w * x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)


def mambainllama_numpy_forward(directory: str, ids: np.ndarray) -> np.ndarray:
  """float64 forward of a MambaInLlama Mamba2 checkpoint from its files (spec sections 1.2, 7)."""
  cfg = json.load(open(os.path.join(directory, "config.json")))
  mc = json.load(open(os.path.join(directory, "mamba_config.json")))
  W = {
    k: np.asarray(v.load(), np.float64)
    for k, v in safetensors_tensors(os.path.join(directory, "model.safetensors")).items()
  }
  H, G = cfg["num_attention_heads"], cfg["num_key_value_heads"]
  K, eps = cfg["head_dim"], cfg["rms_norm_eps"]
  E, X = mc["d_inner"], mc["d_xb"]
  ng, N = mc["ssm_cfg"]["ngroups"], mc["ssm_cfg"]["d_state"]
  nh, P = ng, N  # the constructor forces nheads = ngroups, headdim = d_state
  Bsz, T = ids.shape
  inv = 1.0 / cfg["rope_theta"] ** (np.arange(0, K, 2) / K)
  sc = cfg["rope_scaling"]  # llama3 frequency adjustment, HF formula
  if sc:
    lo_w, hi_w = (
      sc["original_max_position_embeddings"] / sc["low_freq_factor"],
      sc["original_max_position_embeddings"] / sc["high_freq_factor"],
    )
    wl = 2 * np.pi / inv
    smooth = (sc["original_max_position_embeddings"] / wl - sc["low_freq_factor"]) / (
      sc["high_freq_factor"] - sc["low_freq_factor"]
    )
    inv = np.where(
      wl > lo_w,
      inv / sc["factor"],
      np.where(wl < hi_w, inv, (1 - smooth) * inv / sc["factor"] + smooth * inv),
    )
  ang = np.arange(T)[:, None] * inv[None]
  cos, sin = np.cos(ang), np.sin(ang)

  def rope(x):  # (B, T, h, K) rotate-half
    x1, x2 = x[..., : K // 2], x[..., K // 2 :]
    c, s = cos[None, :, None], sin[None, :, None]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1)

  h = W["model.embed_tokens.weight"][ids]
  for i in range(cfg["num_hidden_layers"]):
    p = f"model.layers.{i}."
    x = _np_rms(h, W[p + "input_layernorm.weight"], eps)
    if i in mc["attn_layers"]:
      q = rope((x @ W[p + "self_attn.q_proj.weight"].T).reshape(Bsz, T, H, K))
      k = rope((x @ W[p + "self_attn.k_proj.weight"].T).reshape(Bsz, T, G, K))
      v = (x @ W[p + "self_attn.v_proj.weight"].T).reshape(Bsz, T, G, K)
      k, v = np.repeat(k, H // G, 2), np.repeat(v, H // G, 2)
      s = np.einsum("bthk,bshk->bhts", q, k) / math.sqrt(K)
      s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
      a = np.exp(s - s.max(-1, keepdims=True))
      a /= a.sum(-1, keepdims=True)
      y = np.einsum("bhts,bshk->bthk", a, v).reshape(Bsz, T, H * K) @ W[p + "self_attn.o_proj.weight"].T
    else:
      m = p + "mamba."
      zxbcdt = x @ W[m + "in_proj.weight"].T
      z, xBC, dt = zxbcdt[..., :E], zxbcdt[..., E : 2 * E + 2 * X], zxbcdt[..., 2 * E + 2 * X :]
      w = W[m + "conv1d.weight"][:, 0, :]  # (C, Kc): torch cross-correlation
      Kc = w.shape[1]
      xp = np.concatenate([np.zeros((Bsz, Kc - 1, xBC.shape[-1])), xBC], 1)
      conv = sum(xp[:, j : j + T] * w[:, j] for j in range(Kc)) + W[m + "conv1d.bias"]
      xBC = conv / (1 + np.exp(-conv))
      xs = np.repeat(xBC[..., :X].reshape(Bsz, T, X // P, P), nh // (X // P), 2)
      Bs = np.repeat(xBC[..., X : 2 * X].reshape(Bsz, T, X // N, N), nh // (X // N), 2)
      Cs = xBC[..., 2 * X :].reshape(Bsz, T, ng, N)
      dt = np.log1p(np.exp(dt + W[m + "dt_bias"]))
      A = -np.exp(W[m + "A_log"])
      S = np.zeros((Bsz, nh, P, N))
      ys = []
      for t in range(T):
        S = np.exp(dt[:, t] * A)[..., None, None] * S + np.einsum(
          "bh,bhp,bhn->bhpn", dt[:, t], xs[:, t], Bs[:, t]
        )
        ys.append(np.einsum("bhpn,bhn->bhp", S, Cs[:, t]) + W[m + "D"][:, None] * xs[:, t])
      y = np.stack(ys, 1).reshape(Bsz, T, E) * (z / (1 + np.exp(-z)))
      g = y.reshape(Bsz, T, ng, E // ng)
      y = (g / np.sqrt((g * g).mean(-1, keepdims=True) + 1e-5)).reshape(Bsz, T, E)
      y = y * W[m + "norm.weight"]
      y = y @ W[m + "out_proj.weight"].T
    h = h + y
    x = _np_rms(h, W[p + "post_attention_layernorm.weight"], eps)
    gate = x @ W[p + "mlp.gate_proj.weight"].T
    act = (gate / (1 + np.exp(-gate))) * (x @ W[p + "mlp.up_proj.weight"].T)
    h = h + act @ W[p + "mlp.down_proj.weight"].T
  h = _np_rms(h, W["model.norm.weight"], eps)
  head = W.get("lm_head.weight", W["model.embed_tokens.weight"])
  return h @ head.T


def test_mambainllama_export_matches_spec_and_round_trips(tmp_path):
  cfg = HybridConfig(
    num_hidden_layers=3, attn_layers=(1,), chunk_size=8, rope_theta=100.0, rope_scaling=LLAMA3, **BASE
  )
  model = scaled_model(cfg)
  out = export_pretrained(model, tmp_path / "mil", format="mambainllama", base_model="my/base")
  hf_cfg = transformers.AutoConfig.from_pretrained(out)
  assert type(hf_cfg).__name__ == "LlamaConfig"  # config.json stays a plain Llama config
  with open(os.path.join(out, "config.json")) as f:
    assert json.load(f)["_name_or_path"] == "my/base"
  with open(os.path.join(out, "mamba_config.json")) as f:
    mc = json.load(f)
  assert mc == {
    "d_model": 32,
    "ssm_cfg": {"expand": 1, "ngroups": 4, "d_state": 8},
    "rms_norm_eps": 1e-5,
    "vocab_size": None,
    "d_inner": 32,
    "d_xb": 16,
    "intermediate_size": 48,
    "hidden_act": "silu",
    "n_layer": 3,
    "attn_layers": [1],
  }
  header = read_safetensors_header(os.path.join(out, "model.safetensors"))[0]
  want = {
    "in_proj.weight": [2 * 32 + 2 * 16 + 4, 32],
    "conv1d.weight": [64, 1, 4],
    "conv1d.bias": [64],
    "dt_bias": [4],
    "A_log": [4],
    "D": [4],
    "norm.weight": [32],
    "out_proj.weight": [32, 32],
  }
  for i in (0, 2):
    got = {
      k[len(f"model.layers.{i}.mamba.") :]: v["shape"]
      for k, v in header.items()
      if k.startswith(f"model.layers.{i}.mamba.")
    }
    assert got == want
  assert {f"model.layers.1.self_attn.{n}_proj.weight" for n in "qkvo"} <= set(header)

  ids = ids_for(4, length=13)
  ref = mambainllama_numpy_forward(out, ids)
  assert rel_err(np.asarray(model(jnp.asarray(ids)), np.float64), ref) < 1e-4
  assert_bit_identical(model, from_pretrained(out))

  out_bin = export_pretrained(model, tmp_path / "mil_bin", format="mambainllama", weights="pytorch_model.bin")
  assert os.path.exists(os.path.join(out_bin, "pytorch_model.bin"))
  assert_bit_identical(model, from_pretrained(out_bin))


def test_mambainllama_refuses_what_it_cannot_represent(mixed, tmp_path):
  with pytest.raises(ValueError, match="MLA layers"):
    export_pretrained(mixed[0], tmp_path / "x", format="mambainllama")
  cfg = HybridConfig(num_hidden_layers=2, attn_layers=(1,), headdim=4, **BASE)
  abstract = nnx.eval_shape(lambda: CausalLM(cfg, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="headdim=4 != d_state=8"):
    export_pretrained(abstract, tmp_path / "y", format="mambainllama")
  assert not os.path.exists(tmp_path / "y")  # refused before writing anything


# ------------------------------------------------------------------------------------------------
# 4. errors name the problem
# ------------------------------------------------------------------------------------------------
def _copy_dir(src, dst):
  import shutil

  shutil.copytree(src, dst)
  return str(dst)


def _edit_json(path, **changes):
  with open(path) as f:
    d = json.load(f)
  d.update(changes)
  with open(path, "w") as f:
    json.dump(d, f)


def _rewrite_weights(directory, drop=(), replace=None):
  path = os.path.join(directory, "model.safetensors")
  tensors = safetensors_tensors(path)
  plan = []
  for name, t in tensors.items():
    if name in drop:
      continue
    x = np.asarray(t.load()).copy()
    if replace and name in replace:
      x = replace[name](x)
    plan.append(PlannedTensor(name, x.shape, x.dtype, lambda x=x: x))
  os.remove(path)
  write_safetensors(path, plan)


def test_error_missing_and_misshaped_tensors(mixed, tmp_path):
  _, out = mixed
  d = _copy_dir(out, tmp_path / "a")
  _rewrite_weights(
    d,
    drop=("model.layers.1.mamba.dt_bias",),
    replace={"model.layers.0.mla.kv_b_proj.weight": lambda x: x[:, :4]},
  )
  with pytest.raises(CheckpointError) as e:
    from_pretrained(d)
  msg = str(e.value)
  assert "model.layers.1.mamba.dt_bias" in msg and "missing" in msg
  assert "model.layers.0.mla.kv_b_proj.weight: shape (24, 4), config needs (24, 8)" in msg


def test_error_config_disagrees_with_tensors(mixed, tmp_path):
  _, out = mixed
  d = _copy_dir(out, tmp_path / "b")
  _edit_json(os.path.join(d, "config.json"), mla_layers=[1], mla_layer_ranks={"1": [8, 8]})
  with pytest.raises(CheckpointError) as e:
    from_pretrained(d)
  msg = str(e.value)
  assert "layer 0 holds mla.* (mla) tensors but the config makes it 'mamba2'" in msg
  assert "layer 1 holds mamba.* (mamba2) tensors but the config makes it 'mla'" in msg
  # config fields we do not implement are refused by name
  d2 = _copy_dir(out, tmp_path / "c")
  _edit_json(os.path.join(d2, "config.json"), sliding_window=16)
  with pytest.raises(CheckpointError, match="sliding_window"):
    from_pretrained(d2)


def test_error_incomplete_directories(mixed, tmp_path):
  _, out = mixed
  d = _copy_dir(out, tmp_path / "d")
  os.remove(os.path.join(d, "model.safetensors"))
  with pytest.raises(CheckpointError, match="no weights found"):
    from_pretrained(d)
  model, _ = mixed
  sh = export_pretrained(model, tmp_path / "sharded", max_shard_size="30KB")
  index = json.load(open(os.path.join(sh, "model.safetensors.index.json")))
  victim = sorted(set(index["weight_map"].values()))[-1]
  os.remove(os.path.join(sh, victim))
  with pytest.raises(CheckpointError, match=victim):
    from_pretrained(sh)
  # MambaInLlama: a Mamba1 mamba_config, and a d_model that disagrees with config.json
  cfg = HybridConfig(num_hidden_layers=2, attn_layers=(1,), **BASE)
  mil = export_pretrained(scaled_model(cfg), tmp_path / "mil", format="mambainllama")
  _edit_json(os.path.join(mil, "mamba_config.json"), ssm_cfg={"expand": 1}, d_model=64)
  with pytest.raises(CheckpointError) as e:
    from_pretrained(mil)
  assert "Mamba1" in str(e.value)
  assert "d_model=64 disagrees with config.json hidden_size=32" in str(e.value)
  # Zebra reference layout: hybrid_config.json with an unknown field
  ref = _copy_dir(out, tmp_path / "ref")
  os.remove(os.path.join(ref, "config.json"))
  from zebra_jax.export.hf_llama import llama_config_json

  with open(os.path.join(ref, "config.json"), "w") as f:
    json.dump(llama_config_json(model.config, "float32"), f)
  _edit_json(os.path.join(ref, "hybrid_config.json"), attention_sink=True)
  with pytest.raises(CheckpointError, match="attention_sink"):
    from_pretrained(ref)


def test_export_refuses_overwrite_and_bad_format(mixed, tmp_path):
  model, out = mixed
  with pytest.raises(FileExistsError):
    export_pretrained(model, out)
  with pytest.raises(ValueError, match="format="):
    export_pretrained(model, tmp_path / "z", format="onnx")


def test_export_is_all_or_nothing_and_checks_the_tokenizer_first(mixed, tmp_path, capsys):
  """A bad tokenizer source fails before anything is written; an export that fails midway leaves
  the existing directory as it was; the CLI names its flags and refuses a checkpoint without a
  tokenizer (the export must be a complete HF directory)."""
  model, out = mixed
  with pytest.raises(ValueError, match="no tokenizer"):
    export_pretrained(model, tmp_path / "new", tokenizer=str(tmp_path / "nowhere.gguf"))
  assert not (tmp_path / "new").exists()
  keep = tmp_path / "keep"
  keep.mkdir()
  (keep / "config.json").write_text("old")  # an earlier export, which --overwrite may replace

  class Broken:  # fails while the tokenizer is written, after every weight
    def save_pretrained(self, d):
      raise RuntimeError("disk full")

  with pytest.raises(RuntimeError, match="disk full"):
    export_pretrained(model, keep, tokenizer=Broken(), overwrite=True)
  assert sorted(os.listdir(keep)) == ["config.json"] and (keep / "config.json").read_text() == "old"
  assert sorted(os.listdir(tmp_path)) == ["keep"]  # no temporary directory left behind

  script = load_script("export")
  with pytest.raises(SystemExit) as e:
    script.main(["--checkpoint", out, "--out", str(keep)])
  err = capsys.readouterr().err
  assert e.value.code == 2 and "--overwrite" in err and "overwrite=True" not in err
  with pytest.raises(SystemExit) as e:
    script.main(["--checkpoint", out, "--out", str(tmp_path / "none")])
  assert e.value.code == 2 and "pass --tokenizer" in capsys.readouterr().err
  assert not (tmp_path / "none").exists()


def test_export_never_writes_over_its_input_or_a_users_files(mixed, tmp_path, capsys):
  """Issue 18 item 1: `export.py --checkpoint D --out D --overwrite` replaced the checkpoint D
  (its tokenizer and the user's own files with it) by the export. An output that is an input,
  lies inside one or holds one is refused before anything is read, by the script and by
  export_pretrained (which knows where its model was loaded from); --overwrite replaces an earlier
  export, never a directory holding other files."""
  from zebra_jax._paths import OutputPathError
  from zebra_jax.convert import save_model
  from zebra_jax.data.tokenize import ByteTokenizer

  model, _ = mixed
  d = tmp_path / "D"
  save_model(model, d, tokenizer=ByteTokenizer())
  (d / "notes.txt").write_text("mine")
  before = sorted(os.listdir(d))
  script = load_script("export")
  for out, how in (
    (d, "is the input itself"),
    (d / "sub", f"is inside the input {d}"),
    (tmp_path, f"holds the input {d}"),
  ):
    with pytest.raises(SystemExit) as e:
      script.main(["--checkpoint", str(d), "--out", str(out), "--overwrite"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err == (
      f"error: --out {out} {how}: an output must not be, hold "
      "or lie inside an input; choose another directory\n"
    )
  assert sorted(os.listdir(d)) == before and (d / "notes.txt").read_text() == "mine"
  with pytest.raises(OutputPathError, match="is the input itself"):
    export_pretrained(from_pretrained(d), d, overwrite=True)
  with pytest.raises(OutputPathError, match=f"holds the input {d}"):  # the tokenizer's directory
    export_pretrained(model, tmp_path, tokenizer=str(d), overwrite=True)
  other = tmp_path / "other"
  other.mkdir()
  (other / "notes.txt").write_text("mine")
  with pytest.raises(OutputPathError, match=r"holds files zebra-jax did not write \(notes.txt\)"):
    export_pretrained(model, other, overwrite=True)
  assert sorted(os.listdir(d)) == before and os.listdir(other) == ["notes.txt"]


def test_one_resolver_for_every_checkpoint_kind(mixed, tmp_path, monkeypatch, capsys):
  """resolve_checkpoint (behind from_pretrained and every script) tells a saved model, an HF
  directory, an exported hybrid, a .gguf and the named `smollm2` (in the cache) apart; anything
  else gets one error that lists what was tried."""
  from zebra_jax.assets import SMOLLM2_FILE
  from zebra_jax.convert import resolve_checkpoint, save_model

  model, out = mixed
  assert resolve_checkpoint(out) == ("hybrid", out, "zebra_hf")
  saved = save_model(model, tmp_path / "saved")
  assert resolve_checkpoint(saved) == ("saved", saved, None)
  llama = export_pretrained(scaled_model(LlamaConfig(num_hidden_layers=1, **BASE)), tmp_path / "hf")
  assert resolve_checkpoint(llama) == ("hf", llama, None)
  (tmp_path / "g").mkdir()
  (tmp_path / "g" / "m.gguf").write_bytes(b"GGUF")
  assert resolve_checkpoint(tmp_path / "g") == ("gguf", str(tmp_path / "g" / "m.gguf"), None)
  monkeypatch.setenv("ZEBRA_JAX_CACHE", str(tmp_path / "cache"))
  (tmp_path / "cache").mkdir()
  (tmp_path / "cache" / SMOLLM2_FILE).write_bytes(b"GGUF")  # already fetched: no download
  for name in ("smollm2", "SmolLM2-135M-Instruct"):
    assert resolve_checkpoint(name) == ("gguf", str(tmp_path / "cache" / SMOLLM2_FILE), None)
  kinds = ("named checkpoint (smollm2", "save_model", ".gguf", "zebra_llama", "Hugging Face")
  (tmp_path / "empty").mkdir()
  for bad in (tmp_path / "empty", tmp_path / "missing"):
    with pytest.raises(CheckpointError) as e:
      from_pretrained(bad)
    assert all(k in str(e.value) for k in kinds), str(e.value)
  with pytest.raises(SystemExit) as e:
    load_script("export").main(["--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
  err = capsys.readouterr().err
  assert e.value.code == 2
  assert all(k in err for k in kinds) and "Traceback" not in err


def test_export_script(mixed, tmp_path):
  """scripts/export.py --checkpoint <any from_pretrained path> --out DIR --dtype bfloat16, the
  tokenizer from an HF tokenizer directory: the output's tokenizer reads the same ids."""
  _, out = mixed
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  dst = tmp_path / "script_out"
  tok = word_tokenizer()
  tok.save_pretrained(tmp_path / "tok")
  proc = subprocess.run(
    [
      sys.executable,
      os.path.join(repo, "scripts", "export.py"),
      "--checkpoint",
      out,
      "--out",
      str(dst),
      "--dtype",
      "bfloat16",
      "--tokenizer",
      str(tmp_path / "tok"),
    ],
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  from tokenizers import Tokenizer

  words = "w3 w17 w63 w0"
  assert Tokenizer.from_file(str(dst / "tokenizer.json")).encode(words).ids == tok(words)["input_ids"]
  hdr = read_safetensors_header(os.path.join(dst, "model.safetensors"))[0]
  assert hdr["model.layers.0.mla.q_a_proj.weight"]["dtype"] == "BF16"
  assert os.path.exists(os.path.join(dst, "modeling_zebra.py"))


def test_an_exported_hybrids_tokenizer_loads_without_a_prompt_or_warning(tmp_path):
  """Issue 17 item 5 / docs/export.md: the two documented ways to load a hybrid's tokenizer."""
  import warnings

  model = scaled_model(mixed_config())
  out = export_pretrained(model, tmp_path / "hybrid", tokenizer=word_tokenizer())
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # any warning fails the test
    plain = transformers.PreTrainedTokenizerFast.from_pretrained(out)
    auto = transformers.AutoTokenizer.from_pretrained(out, trust_remote_code=True)
  assert plain.convert_tokens_to_ids("w7") == auto.convert_tokens_to_ids("w7") == 7
  assert auto("w3 w5")["input_ids"] == [3, 5]

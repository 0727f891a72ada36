"""Converter tests: random-weight transformers Llamas saved to disk, our logits vs transformers'.

The reference is always the transformers model itself (float32); the converted model only ever
meets it through files on disk (safetensors, sharded safetensors, bf16, torch .bin, GGUF written
here with llama.cpp's Q/K permutation re-implemented in the test).
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.numpy import load_file, save_file  # noqa: E402

from _runs import load_script

from zebra_jax.config import ConfigError  # noqa: E402
from zebra_jax.convert import CheckpointError, from_pretrained, load_model, save_model  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB, T = 96, 24
BASE = dict(
  vocab_size=VOCAB,
  hidden_size=32,
  intermediate_size=48,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
  max_position_embeddings=128,
  rms_norm_eps=1e-5,
)


def make_hf(seed: int = 0, **overrides):
  """A seeded random transformers LlamaForCausalLM with weights large enough that attention is
  sharp (so RoPE, head layout and Q/K permutations all show in the logits)."""
  cfg = transformers.LlamaConfig(**copy.deepcopy({**BASE, **overrides}))  # HF edits rope dicts
  torch.manual_seed(seed)
  model = transformers.LlamaForCausalLM(cfg).eval()
  g = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
      else:
        p.copy_(0.3 * torch.randn(p.shape, generator=g))
  return model


def tokens(seed: int = 0, batch: int = 2, length: int = T) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, VOCAB, (batch, length)).astype(np.int32)


def hf_logits(model, ids: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model.float()(torch.from_numpy(ids.astype(np.int64))).logits.numpy()


def our_logits(model, ids: np.ndarray) -> np.ndarray:
  return np.asarray(model(jnp.asarray(ids)), np.float32)


def rel_err(a, ref) -> float:
  return float(np.abs(a - ref).max() / np.abs(ref).max())


# -- logit equality over configs and sources --------------------------------------------------------
CONFIGS = {
  "gqa_untied": dict(),
  "mha_tied": dict(num_key_value_heads=4, tie_word_embeddings=True),
  "head_dim_16": dict(head_dim=16),  # q_proj is 32 -> 64, not hidden/heads = 8
  "llama3_rope": dict(
    head_dim=16,
    rope_theta=100.0,
    rope_scaling=dict(
      rope_type="llama3",
      factor=8.0,
      low_freq_factor=1.0,
      high_freq_factor=4.0,
      original_max_position_embeddings=32,
    ),
  ),
  "yarn_rope": dict(
    num_key_value_heads=1,
    head_dim=16,
    rope_theta=100.0,
    rope_scaling=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=16),
  ),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_match_transformers(tmp_path, name):
  hf = make_hf(**CONFIGS[name])
  hf.save_pretrained(tmp_path)
  ours = from_pretrained(tmp_path)
  ids = tokens()
  ref = hf_logits(hf, ids)
  assert ours.config.tie_word_embeddings == bool(CONFIGS[name].get("tie_word_embeddings", False))
  assert (ours.lm_head is None) == ours.config.tie_word_embeddings
  assert rel_err(our_logits(ours, ids), ref) < 1e-4
  if "rope_scaling" in CONFIGS[name]:
    assert ours.config.rope_scaling["rope_type"] == CONFIGS[name]["rope_scaling"]["rope_type"]
    # The scaling must matter at these positions, or the comparison above would prove nothing.
    plain = make_hf(**{k: v for k, v in CONFIGS[name].items() if k != "rope_scaling"})
    assert rel_err(hf_logits(plain, ids), ref) > 1e-3


def test_sharded_safetensors(tmp_path):
  hf = make_hf(seed=3)
  hf.save_pretrained(tmp_path, max_shard_size="20KB")
  assert os.path.exists(tmp_path / "model.safetensors.index.json")
  assert len([f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]) > 2
  ids = tokens(3)
  assert rel_err(our_logits(from_pretrained(tmp_path), ids), hf_logits(hf, ids)) < 1e-4


def test_bf16_safetensors_without_torch_reader(tmp_path):
  hf = make_hf(seed=4)
  with torch.no_grad():  # the float32 reference holds exactly the bf16-rounded weights
    for p in hf.parameters():
      p.copy_(p.to(torch.bfloat16).float())
  # Save a bf16 copy: casting `hf` itself would also round its RoPE inv_freq buffer.
  copy.deepcopy(hf).to(torch.bfloat16).save_pretrained(tmp_path)
  with open(tmp_path / "model.safetensors", "rb") as f:  # really stored as bf16
    header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
  assert header["model.norm.weight"]["dtype"] == "BF16"
  ours = from_pretrained(tmp_path, dtype="float32")
  ids = tokens(4)
  ref = hf_logits(hf, ids)
  assert rel_err(our_logits(ours, ids), ref) < 1e-4
  ours_bf16 = from_pretrained(tmp_path, dtype="bfloat16")
  kernel = ours_bf16.layers[1].mlp.up_proj.kernel[...]
  assert kernel.dtype == jnp.bfloat16  # kept in bf16, bit-exact
  np.testing.assert_array_equal(
    np.asarray(kernel, np.float32), hf.model.layers[1].mlp.up_proj.weight.detach().numpy().T
  )


def test_pytorch_bin_single_and_sharded(tmp_path):
  hf = make_hf(seed=5, tie_word_embeddings=True)
  sd = {k: v.contiguous() for k, v in hf.state_dict().items()}  # tied: lm_head listed too
  assert "lm_head.weight" in sd
  single, sharded = tmp_path / "single", tmp_path / "sharded"
  for d in (single, sharded):
    d.mkdir()
    hf.config.save_pretrained(d)
  torch.save(sd, single / "pytorch_model.bin")
  keys = sorted(sd)
  parts = {
    "pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
    "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2 :],
  }
  for fname, ks in parts.items():
    torch.save({k: sd[k] for k in ks}, sharded / fname)
  with open(sharded / "pytorch_model.bin.index.json", "w") as f:
    json.dump({"metadata": {}, "weight_map": {k: fn for fn, ks in parts.items() for k in ks}}, f)
  ids = tokens(5)
  ref = hf_logits(hf, ids)
  for d in (single, sharded):
    assert rel_err(our_logits(from_pretrained(d), ids), ref) < 1e-4


def test_safetensors_need_no_torch_and_bin_says_torch_is_missing(tmp_path):
  hf = make_hf(seed=6)
  with torch.no_grad():
    for p in hf.parameters():
      p.copy_(p.to(torch.bfloat16).float())
  copy.deepcopy(hf).to(torch.bfloat16).save_pretrained(tmp_path / "st")
  (tmp_path / "bin").mkdir()
  hf.config.save_pretrained(tmp_path / "bin")
  torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
  ids = tokens(6)
  np.save(tmp_path / "ids.npy", ids)
  script = f"""
import sys
sys.modules["torch"] = None  # any `import torch` now fails
import numpy as np, jax.numpy as jnp
from zebra_jax.convert import CheckpointError, from_pretrained
m = from_pretrained({str(tmp_path / "st")!r})
np.save({str(tmp_path / "out.npy")!r}, np.asarray(m(jnp.asarray(np.load({str(tmp_path / "ids.npy")!r})))))
try:
  from_pretrained({str(tmp_path / "bin")!r})
except CheckpointError as e:
  print("BIN ERROR:", e)
"""
  proc = subprocess.run(
    [sys.executable, "-c", script],
    capture_output=True,
    text=True,
    cwd=REPO,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr
  assert "BIN ERROR:" in proc.stdout and "needs PyTorch" in proc.stdout
  assert rel_err(np.load(tmp_path / "out.npy"), hf_logits(hf, ids)) < 1e-4


# -- bad inputs: one clear error each ---------------------------------------------------------------
def _saved_tensors(tmp_path, **overrides):
  hf = make_hf(**overrides)
  hf.save_pretrained(tmp_path)
  return load_file(str(tmp_path / "model.safetensors"))


def test_missing_misshaped_unexpected_reported_together(tmp_path):
  sd = _saved_tensors(tmp_path)
  del sd["model.layers.1.mlp.up_proj.weight"]
  sd["model.layers.0.self_attn.k_proj.weight"] = np.zeros((8, 32), np.float32)  # should be (16, 32)
  sd["model.layers.0.self_attn.q_norm.weight"] = np.ones((8,), np.float32)
  sd["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones((4,), np.float32)  # harmless
  save_file(sd, str(tmp_path / "model.safetensors"))
  with pytest.raises(CheckpointError) as e:
    from_pretrained(tmp_path)
  msg = str(e.value)
  assert "model.layers.1.mlp.up_proj.weight" in msg and "missing" in msg
  assert "model.layers.0.self_attn.k_proj.weight" in msg and "(8, 32)" in msg and "(16, 32)" in msg
  assert "model.layers.0.self_attn.q_norm.weight" in msg and "unexpected" in msg
  assert "inv_freq" not in msg


def test_extra_layer_is_unexpected(tmp_path):
  sd = _saved_tensors(tmp_path)
  sd["model.layers.7.mlp.up_proj.weight"] = sd["model.layers.0.mlp.up_proj.weight"]
  save_file(sd, str(tmp_path / "model.safetensors"))
  with pytest.raises(CheckpointError, match=r"model\.layers\.7\.mlp\.up_proj\.weight"):
    from_pretrained(tmp_path)


def test_tied_head_that_differs_is_refused(tmp_path):
  sd = _saved_tensors(tmp_path, tie_word_embeddings=True)
  assert "lm_head.weight" not in sd
  sd["lm_head.weight"] = sd["model.embed_tokens.weight"] + 1.0
  save_file(sd, str(tmp_path / "model.safetensors"))
  with pytest.raises(CheckpointError, match="lm_head.weight differs"):
    from_pretrained(tmp_path)


def test_non_finite_weights_are_refused_by_name(tmp_path):
  """Issue 18 item 5: a NaN / inf tensor in an HF checkpoint, a GGUF or a saved model is named on
  load (it used to load and give NaN logits)."""
  sd = _saved_tensors(tmp_path)
  sd["model.layers.1.mlp.up_proj.weight"][3, :2] = np.nan
  sd["model.norm.weight"][0] = np.inf
  save_file(sd, str(tmp_path / "model.safetensors"))
  with pytest.raises(CheckpointError, match=r"non-finite weights in 2 tensor") as e:
    from_pretrained(tmp_path)
  assert "model.layers.1.mlp.up_proj.weight: 2 of" in str(e.value)
  assert "model.norm.weight: 1 of" in str(e.value)
  hf = make_hf(seed=3)
  with torch.no_grad():
    hf.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
  os.makedirs(tmp_path / "g")
  write_gguf(tmp_path / "g" / "tiny.gguf", hf)
  with pytest.raises(CheckpointError, match=r"blk\.0\.ffn_down\.weight: 1 of"):
    from_pretrained(tmp_path / "g" / "tiny.gguf")
  good = make_hf(seed=4)
  good.save_pretrained(tmp_path / "ok")
  model = from_pretrained(tmp_path / "ok")
  model.norm.weight[...] = model.norm.weight[...].at[1].set(jnp.nan)
  save_model(model, tmp_path / "saved")
  with pytest.raises(CheckpointError, match=r"norm\.weight: 1 of"):
    load_model(tmp_path / "saved")


def test_index_naming_a_missing_shard(tmp_path):
  make_hf().save_pretrained(tmp_path, max_shard_size="20KB")
  os.remove(
    tmp_path
    / "model-00002-of-{:05d}.safetensors".format(
      len([f for f in os.listdir(tmp_path) if f.endswith(".safetensors")])
    )
  )
  with pytest.raises(CheckpointError, match="do not exist"):
    from_pretrained(tmp_path)


def _edit_config(tmp_path, **changes):
  make_hf().save_pretrained(tmp_path)
  with open(tmp_path / "config.json") as f:
    cfg = json.load(f)
  cfg.update(changes)
  with open(tmp_path / "config.json", "w") as f:
    json.dump(cfg, f)


@pytest.mark.parametrize(
  "changes,pattern",
  [
    (dict(attention_bias=True), "attention_bias"),
    (dict(qk_layernorm_magic=3), "qk_layernorm_magic"),
    (dict(rope_parameters=dict(rope_type="dynamic", factor=2.0, rope_theta=10000.0)), "dynamic"),
    (dict(rope_parameters=dict(rope_type="longrope", factor=2.0, rope_theta=10000.0)), "longrope"),
  ],
)
def test_unsupported_config_refused_by_name(tmp_path, changes, pattern):
  _edit_config(tmp_path, **changes)
  with pytest.raises(ConfigError, match=pattern):
    from_pretrained(tmp_path)


def test_no_weights_and_bad_paths(tmp_path):
  make_hf().config.save_pretrained(tmp_path)
  with pytest.raises(CheckpointError, match="no weights found"):
    from_pretrained(tmp_path)
  with pytest.raises(CheckpointError, match="no such file"):
    from_pretrained(tmp_path / "nope")


# -- GGUF (written here the way llama.cpp's converter writes a Llama) --------------------------------
def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
  """convert_hf_to_gguf.py LlamaModel.permute, re-implemented: rotate-half rows -> pair rows."""
  return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_cpp_rope_freqs(theta, dim, factor, low, high, old_ctx):
  """convert_hf_to_gguf.py llama3 `rope_freqs` (per-frequency divisors), re-implemented."""
  out = []
  for i in range(0, dim, 2):
    freq = 1.0 / theta ** (i / dim)
    wavelen = 2 * math.pi / freq
    if wavelen < old_ctx / high:
      out.append(1.0)
    elif wavelen > old_ctx / low:
      out.append(factor)
    else:
      smooth = (old_ctx / wavelen - low) / (high - low)
      out.append(1 / ((1 - smooth) / factor + smooth))
  return np.asarray(out, np.float32)


def write_gguf(path, hf, *, extra_kv=None, drop=(), rope_freqs=None):
  import gguf

  c = hf.config
  w = gguf.GGUFWriter(str(path), "llama")
  w.add_block_count(c.num_hidden_layers)
  w.add_context_length(c.max_position_embeddings)
  w.add_embedding_length(c.hidden_size)
  w.add_feed_forward_length(c.intermediate_size)
  w.add_head_count(c.num_attention_heads)
  w.add_head_count_kv(c.num_key_value_heads)
  w.add_key_length(c.head_dim)
  w.add_value_length(c.head_dim)
  w.add_rope_dimension_count(c.head_dim)
  w.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
  w.add_layer_norm_rms_eps(c.rms_norm_eps)
  w.add_token_list([f"t{i}" for i in range(c.vocab_size)])
  w.add_bos_token_id(1)
  w.add_eos_token_id(2)
  for k, v in (extra_kv or {}).items():
    w.add_uint32(k, v)
  sd = {k: v.float().numpy() for k, v in hf.state_dict().items()}
  names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
  if not c.tie_word_embeddings:
    names["lm_head.weight"] = "output.weight"
  for i in range(c.num_hidden_layers):
    p = f"model.layers.{i}."
    names.update(
      {
        p + "input_layernorm.weight": f"blk.{i}.attn_norm.weight",
        p + "post_attention_layernorm.weight": f"blk.{i}.ffn_norm.weight",
        p + "self_attn.q_proj.weight": f"blk.{i}.attn_q.weight",
        p + "self_attn.k_proj.weight": f"blk.{i}.attn_k.weight",
        p + "self_attn.v_proj.weight": f"blk.{i}.attn_v.weight",
        p + "self_attn.o_proj.weight": f"blk.{i}.attn_output.weight",
        p + "mlp.gate_proj.weight": f"blk.{i}.ffn_gate.weight",
        p + "mlp.up_proj.weight": f"blk.{i}.ffn_up.weight",
        p + "mlp.down_proj.weight": f"blk.{i}.ffn_down.weight",
      }
    )
  if rope_freqs is not None:
    w.add_tensor("rope_freqs.weight", rope_freqs)
  for hf_name, g_name in names.items():
    if g_name in drop:
      continue
    x = sd[hf_name]
    if g_name.endswith("attn_q.weight"):
      x = llama_cpp_permute(x, c.num_attention_heads)
    elif g_name.endswith("attn_k.weight"):
      x = llama_cpp_permute(x, c.num_key_value_heads)
    w.add_tensor(g_name, np.ascontiguousarray(x, np.float32))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


@pytest.mark.parametrize("tie", [False, True])
def test_gguf_matches_transformers(tmp_path, tie):
  hf = make_hf(seed=7, tie_word_embeddings=tie)
  write_gguf(tmp_path / "tiny.gguf", hf)
  ours = from_pretrained(tmp_path)  # a directory holding one .gguf
  assert ours.config.tie_word_embeddings == tie
  assert ours.config.num_key_value_heads == 2 and ours.config.vocab_size == VOCAB
  ids = tokens(7)
  assert rel_err(our_logits(ours, ids), hf_logits(hf, ids)) < 1e-4


def test_gguf_llama3_rope_freqs(tmp_path):
  scaling = dict(
    rope_type="llama3",
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=8192,
  )
  hf = make_hf(seed=8, head_dim=16, rope_theta=1e6, max_position_embeddings=32768, rope_scaling=scaling)
  freqs = llama_cpp_rope_freqs(1e6, 16, 8.0, 1.0, 4.0, 8192)
  assert 1.0 < freqs[4] < 8.0  # one frequency sits in the smoothed band
  write_gguf(tmp_path / "m.gguf", hf, rope_freqs=freqs)
  ours = from_pretrained(tmp_path / "m.gguf")
  got = dict(ours.config.rope_scaling)
  assert got == scaling
  ids = tokens(8)
  assert rel_err(our_logits(ours, ids), hf_logits(hf, ids)) < 1e-4


def test_gguf_problems_reported(tmp_path):
  hf = make_hf(seed=9)
  write_gguf(tmp_path / "a.gguf", hf, drop=("blk.1.ffn_up.weight",))
  with pytest.raises(CheckpointError, match=r"missing.*\n.*model\.layers\.1\.mlp\.up_proj\.weight"):
    from_pretrained(tmp_path / "a.gguf")
  write_gguf(tmp_path / "b.gguf", hf, extra_kv={"llama.attention.sliding_window": 8})
  with pytest.raises(CheckpointError, match="llama.attention.sliding_window"):
    from_pretrained(tmp_path / "b.gguf")


# -- Orbax save / load ------------------------------------------------------------------------------
def test_save_load_round_trip_and_refusals(tmp_path):
  hf = make_hf(seed=10, num_key_value_heads=1)
  hf.save_pretrained(tmp_path / "hf")
  model = from_pretrained(tmp_path / "hf")
  ids = tokens(10)
  before = our_logits(model, ids)
  out = tmp_path / "saved"
  save_model(model, out)
  assert (out / "config.json").exists() and (out / "params").is_dir()
  loaded = load_model(out)
  assert loaded.config == model.config
  np.testing.assert_array_equal(our_logits(loaded, ids), before)
  np.testing.assert_array_equal(our_logits(from_pretrained(out), ids), before)  # dispatches to load
  assert rel_err(before, hf_logits(hf, ids)) < 1e-4
  with pytest.raises(FileExistsError):
    save_model(model, out)
  save_model(model, out, overwrite=True)
  bf = load_model(out, dtype="bfloat16")
  assert bf.config.param_dtype == "bfloat16" and bf.norm.weight[...].dtype == jnp.bfloat16
  assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]  # no temporary leftovers


def test_convert_never_writes_over_its_input_or_a_users_files(tmp_path, capsys):
  """Issue 18 item 1: `convert.py --input D --output D --overwrite` replaced the HF directory D
  (weights, and the user's own files) by an Orbax one and exited 0. An output that is an input,
  lies inside one or holds one (a .gguf file's directory holds it) is refused before anything is
  read; --overwrite replaces an earlier converted model, never a directory holding other files;
  save_model refuses the directory its model was loaded from."""
  from zebra_jax._paths import OutputPathError

  d = tmp_path / "D"
  make_hf(seed=13).save_pretrained(d)
  (d / "notes.txt").write_text("mine")
  gguf = tmp_path / "g" / "m.gguf"
  gguf.parent.mkdir()
  gguf.write_bytes(b"GGUF")
  before = sorted(os.listdir(d))
  other = tmp_path / "other"
  other.mkdir()
  (other / "notes.txt").write_text("mine")
  tail = ": an output must not be, hold or lie inside an input; choose another directory"
  cases = [
    (d, d, f"is the input itself{tail}"),
    (d, d / "sub", f"is inside the input {d}{tail}"),
    (d, tmp_path, f"holds the input {d}{tail}"),
    (gguf, gguf, f"is the input itself{tail}"),
    (gguf, gguf.parent, f"holds the input {gguf}{tail}"),
    (
      d,
      other,
      "holds files zebra-jax did not write (notes.txt); --overwrite replaces only "
      "an earlier output: move them or choose another directory",
    ),
  ]
  script = load_script("convert")
  capsys.readouterr()  # save_pretrained's progress bar
  for src, out, how in cases:
    with pytest.raises(SystemExit) as e:
      script.main(["--input", str(src), "--output", str(out), "--overwrite"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err == f"error: --output {out} {how}\n", err
  assert sorted(os.listdir(d)) == before and (d / "notes.txt").read_text() == "mine"
  assert os.listdir(other) == ["notes.txt"] and gguf.read_bytes() == b"GGUF"
  model = from_pretrained(d)
  with pytest.raises(OutputPathError, match="is the input itself"):
    save_model(model, d, overwrite=True)
  saved = save_model(model, tmp_path / "saved")
  with pytest.raises(OutputPathError, match="is the input itself"):
    save_model(load_model(saved), saved, overwrite=True)
  save_model(model, saved, overwrite=True)  # an earlier save_model directory is replaced
  assert sorted(os.listdir(d)) == before


def _corrupt_copies(src, tmp_path):
  import shutil

  cases = {}
  d = tmp_path / "no_config"
  shutil.copytree(src, d)
  os.remove(d / "config.json")
  cases["no_config"] = (d, "config.json")
  d = tmp_path / "no_params"
  shutil.copytree(src, d)
  shutil.rmtree(d / "params")
  cases["no_params"] = (d, "params")
  d = tmp_path / "truncated"
  shutil.copytree(src, d)
  for root, _, files in os.walk(d / "params"):
    for f in files:
      p = os.path.join(root, f)
      with open(p, "r+b") as fh:
        fh.truncate(os.path.getsize(p) // 3)
  cases["truncated"] = (d, "corrupted or incomplete")
  d = tmp_path / "truncated_data"  # an interrupted copy: the biggest (array data) file cut short
  shutil.copytree(src, d)
  files = [os.path.join(r, f) for r, _, fs in os.walk(d / "params") for f in fs]
  biggest = max(files, key=os.path.getsize)
  with open(biggest, "r+b") as fh:
    fh.truncate(os.path.getsize(biggest) // 3)
  cases["truncated_data"] = (d, "corrupted or incomplete")
  d = tmp_path / "bad_config"
  shutil.copytree(src, d)
  with open(d / "config.json", "w") as fh:
    fh.write('{"__class__": "LlamaConfig", "hidden_size": ')
  cases["bad_config"] = (d, "config")
  return cases


# A failed Orbax restore leaves its other read coroutines pending; they warn when destroyed (often
# only at interpreter exit, outside this filter), which is Orbax's behaviour, not a failure here.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_corrupted_checkpoint_raises_clear_error(tmp_path):
  hf = make_hf(seed=11)
  hf.save_pretrained(tmp_path / "hf")
  save_model(from_pretrained(tmp_path / "hf"), tmp_path / "good")
  for name, (d, pattern) in _corrupt_copies(tmp_path / "good", tmp_path).items():
    with pytest.raises(CheckpointError, match=pattern):
      load_model(d)


# -- CLI --------------------------------------------------------------------------------------------
def test_convert_cli_end_to_end(tmp_path):
  from tokenizers import Tokenizer as RawTokenizer, models, pre_tokenizers

  hf = make_hf(seed=12)
  hf.save_pretrained(tmp_path / "hf")
  raw = RawTokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
  raw.pre_tokenizer = pre_tokenizers.Whitespace()
  tok = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="w0", eos_token="w1")
  tok.save_pretrained(tmp_path / "hf")
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  cmd = [
    sys.executable,
    os.path.join(REPO, "scripts", "convert.py"),
    "--input",
    str(tmp_path / "hf"),
    "--output",
    str(tmp_path / "out"),
  ]
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
  assert proc.returncode == 0, proc.stderr
  n_params = sum(p.numel() for p in hf.parameters())
  assert f"parameters: {n_params:,}" in proc.stdout
  assert "2 layers, hidden 32" in proc.stdout
  ids = tokens(12)
  assert rel_err(our_logits(load_model(tmp_path / "out"), ids), hf_logits(hf, ids)) < 1e-4
  # The input's tokenizer is stored with the model (HF files), with the provenance.
  words = "w5 w90 w1"
  assert (
    transformers.AutoTokenizer.from_pretrained(tmp_path / "out")(words)["input_ids"]
    == tok(words)["input_ids"]
  )
  with open(tmp_path / "out" / "provenance.json") as f:
    assert json.load(f)["teacher"] == {"path": str(tmp_path / "hf")}
  again = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
  assert again.returncode != 0 and "--overwrite" in again.stderr

"""`--aot_topology`: ahead-of-time compilation of every stage for a TPU topology, without a TPU.

The compile tests need libtpu (`pip install -e .[tpu-aot]`) and are skipped only when it is not
importable; the config / error-path tests run everywhere. Expected memory comes from parameter
counts (`accounting.param_count`, arithmetic on the config) times dtype sizes, not from the code
under test.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs import tiny, zebra_3b  # noqa: E402
from zebra_jax import accounting, presets  # noqa: E402
from zebra_jax.distill import aot  # noqa: E402

HAVE_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(
  not HAVE_LIBTPU,
  reason="libtpu is not installed: pip install -e .[tpu-aot] to run the TPU ahead-of-time compile tests",
)
MiB = 1024**2


# -- no libtpu needed ------------------------------------------------------------------------------
def test_parse_topology():
  chip, dims = aot.parse_topology("v5p:4x4x4")
  assert chip.name == "TPU v5p" and dims == (4, 4, 4)
  assert aot.parse_topology("v5e:16x16")[0].hbm_bytes == 16 * 1024**3
  assert aot.parse_topology("v6e:8x8")[0].hbm_bytes == 32 * 1024**3
  with pytest.raises(aot.AOTError, match="form"):
    aot.parse_topology("v5p-128")
  with pytest.raises(aot.AOTError, match="chip"):
    aot.parse_topology("v9z:2x2")


def test_missing_libtpu_names_the_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, "libtpu", None)  # makes `import libtpu` raise ImportError
  with pytest.raises(aot.AOTError, match=r"pip install -e \.\[tpu-aot\]"):
    aot.topology_devices("v5e:2x2")


def test_teacher_preset_used_when_path_unreadable():
  cfg = zebra_3b.get_config()
  cfg.teacher.path = "/nonexistent/Llama-3.2-3B-Instruct"
  cfg.kd_teacher.path = "/nonexistent/Llama-3.1-8B-Instruct"
  plans = {p.name: p for p in aot.stage_plans(cfg)}
  assert list(plans) == ["ild_mla", "ild_mamba", "kd"]
  kd = plans["kd"]
  # The KD student is the released Zebra-3B-6MLA-22M2 (published 3.39B parameters) and its
  # teacher the 8B Llama; the ILD teacher is the 3B Llama.
  want = presets.get_preset("zebra_3b_6mla22m2")
  assert kd.student.layer_types() == want.layer_types()
  assert accounting.param_count(kd.student) == accounting.param_count(want)
  assert round(accounting.param_count(kd.student) / 1e9, 2) == 3.39
  assert kd.teachers["teacher"].num_hidden_layers == 32 and kd.teachers["teacher"].hidden_size == 4096
  assert plans["ild_mla"].teachers["teacher"].hidden_size == 3072
  assert kd.student.param_dtype == "float32" and kd.student.dtype == "bfloat16"
  assert plans["ild_mla"].batch["tokens"][0] == (1, 96, 2048)

  cfg.kd_teacher.preset = None
  with pytest.raises(aot.AOTError, match="kd_teacher.preset"):
    aot.stage_plans(cfg)


def test_the_compiler_reads_each_stage_as_the_run_does():
  """Issue 19: one StagePlan per stage (distill/plan.py) for the runner and the compiler, so the
  settings the run trains with are those compiled: KD's loss implementation, frozen groups and
  per-group learning rates, ILD without LM-head FLOPs (before, the compiler built its own KD loss
  without `kd.loss_impl` and its optimiser without `kd.lr_scale`)."""
  cfg = tiny.get_config()
  cfg.kd.update(freeze=("mlp",), lr_scale={"mixer": 2.0, "embed": 0.5})
  plans = {p.name: p for p in aot.stage_plans(cfg)}
  kd = plans["kd"]
  assert kd.lr_scale(("layers", 0, "mixer", "in_proj", "kernel")) == 2.0
  assert kd.lr_scale(("embed_tokens", "embedding")) == 0.5
  assert kd.lr_scale(("layers", 0, "input_layernorm", "scale")) == 1.0
  assert not kd.trainable(("layers", 0, "mlp", "up_proj", "kernel"), None)
  assert kd.trainable(("layers", 0, "mixer", "in_proj", "kernel"), None)
  assert not plans["ild_mla"].heads and kd.heads and kd.data == "kd"
  assert plans["dpo"].data is None and plans["dpo"].rows_per_sequence == 2
  cfg.kd.loss_impl = "chunked"
  with pytest.raises(ValueError, match="loss_impl must be one of"):
    aot.stage_plans(cfg)


# -- compiled for TPU --------------------------------------------------------------------------------
def _tiny(**mesh):
  cfg = tiny.get_config()
  cfg.mesh.update(**mesh)
  return cfg


@pytest.fixture(scope="module")
def tiny_v5e():
  """configs/tiny.py compiled for a 2x2 v5e slice (data=4): (config, report, printed lines)."""
  cfg, lines = _tiny(), []
  return cfg, aot.aot_report(cfg, "v5e:2x2", print_fn=lines.append), "\n".join(lines)


@needs_libtpu
def test_tiny_all_stages_fit_v5e(tiny_v5e):
  cfg, report, out = tiny_v5e
  assert report.fits and report.failed == []
  assert report.num_devices == 4 and report.mesh_shape == {"data": 4, "fsdp": 1, "tensor": 1}
  assert [s.name for s in report.stages] == ["ild_mla", "ild_mamba", "kd", "dpo"]
  for s in report.stages:
    assert s.error is None
    assert 0 < s.total_bytes < 0.95 * 16 * 1024**3
    assert s.total_bytes >= s.argument_bytes + s.temp_bytes - s.alias_bytes
    assert s.xla_flops and s.xla_flops > 0 and s.roofline_s and s.roofline_s > 0
    assert f"[{s.name}] FITS" in out
  assert "per-chip memory" in out and "roofline step time" in out

  # data=4 replicates the parameters: the KD step's arguments hold the float32 student, its
  # AdamW mu and nu and the float32 teacher whole on every chip, plus 2 x 64 tokens. TPU layouts
  # pad small arrays (norm vectors, Mamba's per-head scalars, the 4-wide conv) to tiles, so the
  # compiled sizes may exceed the unpadded count, by about a quarter at these tiny widths.
  kd, plan = report.stages[2], aot.stage_plans(cfg)[2]
  student = 4 * accounting.param_count(plan.student)
  want = 3 * student + 4 * accounting.param_count(plan.teachers["teacher"]) + 2 * 64 * 4
  assert want <= kd.argument_bytes <= 1.35 * want, (kd.argument_bytes, want)
  # Donation: the updated student and optimiser state reuse the argument buffers.
  assert 3 * student <= kd.alias_bytes <= 1.35 * 3 * student, (kd.alias_bytes, 3 * student)


@needs_libtpu
def test_fsdp_shards_params_and_optimizer_state(tiny_v5e):
  """fsdp=4 splits the student, its AdamW state and the teacher 4 ways (every tiny matrix has a
  dimension divisible by 4), so the KD step's arguments shrink to about a quarter of the
  replicated (data=4) layout; only tile padding of small vectors keeps them above it. Optimiser
  state left whole on each chip would keep over half."""
  quiet = lambda s: None
  replicated = tiny_v5e[1].stages[2]
  cfg = _tiny(data=1, fsdp=-1)
  # Pure-JAX ops here, so that the executed matmuls below are the reference attention's exact
  # causal square (the flash kernel pads T=64 to a 128 block and is counted block by block).
  cfg.train.impl = "reference"
  r1 = aot.aot_report(cfg, "v5e:2x2", stages=["kd"], print_fn=quiet).stages[0]
  plan = aot.stage_plans(cfg)[2]
  whole = 4 * (3 * accounting.param_count(plan.student) + accounting.param_count(plan.teachers["teacher"]))
  assert r1.argument_bytes >= whole / 4
  assert r1.argument_bytes < 0.45 * replicated.argument_bytes, (r1.argument_bytes, replicated.argument_bytes)

  # Gradient accumulation: same work per step, counted over every micro-batch.
  cfg.kd.grad_accum = 2
  r2 = aot.aot_report(cfg, "v5e:2x2", stages=["kd"], print_fn=quiet).stages[0]
  assert abs(r2.exec_flops - r1.exec_flops) < 1e-6 * r1.exec_flops, (r1.exec_flops, r2.exec_flops)
  assert abs(r2.xla_flops - r1.xla_flops) < 0.05 * r1.xla_flops, (r1.xla_flops, r2.xla_flops)
  # Executed matmul FLOPs vs the model FLOPs of the config: the step also runs the full causal
  # square in the reference attention, so a little more, never less.
  assert 1.0 <= r1.exec_flops / r1.model_flops < 1.5, (r1.exec_flops, r1.model_flops)


@needs_libtpu
def test_tiny_v5e_auto_uses_flash_attention_inside_sharded_step(tiny_v5e):
  """train.impl="auto" on a TPU picks our flash kernel for the tiny config's attention (its SSD
  shapes, headdim 16 and chunk 16, are not ones the TPU scan kernel takes, so the scan is pure
  JAX); the data=4 mesh runs it per shard."""
  _, report, out = tiny_v5e
  flash = {"flash_attention_fwd", "flash_attention_dkv", "flash_attention_dq"}
  for s in report.stages:
    # ild_mamba differentiates no attention: only the teacher's forward runs the kernel.
    want = {"flash_attention_fwd"} if s.name == "ild_mamba" else flash
    assert want <= set(s.pallas_calls), (s.name, s.pallas_calls)
    assert not any(k.startswith("ssd_") for k in s.pallas_calls), (s.name, s.pallas_calls)
  assert "cannot be used in this sharded step" not in out


@needs_libtpu
def test_pallas_kernels_compile_in_partitioned_step():
  """A small hybrid with the TPU kernels' head sizes (head_dim = headdim = d_state = 64, chunk 128)
  compiled for v5e:2x2 on a data=1 x fsdp=2 x tensor=2 mesh: impl auto puts the flash attention and
  SSD scan kernels (forward and backward) into every stage's partitioned step, through shard_map
  (batch over fsdp, heads over tensor); Mosaic refuses kernels that GSPMD would have to partition,
  so the compile itself is the check. Every stage fits and the executed matmuls are at least the
  model FLOPs (the kernels are counted per grid step, masked blocks included).

  impl="auto" only (not also "pallas"): when every kernel's `supports` accepts the call, as the
  assertions below show it does here, both impls dispatch to the same kernel functions
  (`ops.attention.KERNELS.resolve`, `ops.ssd.SCAN_KERNELS.resolve`), so "pallas" traced and
  compiled the identical programs a second time."""
  impl = "auto"
  cfg = _tiny(data=1, fsdp=2, tensor=2)
  cfg.teacher.overrides.update(head_dim=64)
  cfg.model.update(chunk_size=128, kv_lora_rank=64, q_lora_rank=64)
  cfg.data.seq_len = 128
  cfg.train.impl = impl
  lines = []
  report = aot.aot_report(cfg, "v5e:2x2", stages=["ild_mla", "ild_mamba", "kd"], print_fn=lines.append)
  out = "\n".join(lines)
  assert report.fits and report.mesh_shape == {"data": 1, "fsdp": 2, "tensor": 2}, out
  flash = {"flash_attention_fwd", "flash_attention_dkv", "flash_attention_dq"}
  ssd = {"ssd_fwd_tpu", "ssd_bwd_tpu"}
  # ILD trains one mixer kind against the attention teacher (forward only); KD's hybrid has both.
  want = {"ild_mla": flash, "ild_mamba": {"flash_attention_fwd"} | ssd, "kd": flash | ssd}
  for s in report.stages:
    assert want[s.name] <= set(s.pallas_calls), (s.name, s.pallas_calls)
    assert s.exec_flops >= s.model_flops, (s.name, s.exec_flops, s.model_flops)
  assert "Pallas TPU kernels traced: flash_attention_dkv" in out, out


@needs_libtpu
def test_cli_exits_nonzero_naming_the_stage_that_does_not_fit():
  """Hidden 8192 / MLP 32768 makes the 4-layer teacher and the student built from it 3.2B float32
  parameters each (13 GB, x3 with AdamW for the student), replicated on every 16 GiB v5e chip by
  the tiny config's data-parallel mesh: the script exits 1 and names the stage."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  cmd = [
    sys.executable,
    os.path.join(ROOT, "scripts", "distill.py"),
    "--config",
    os.path.join(ROOT, "configs", "tiny.py"),
    "--aot-topology",
    "v5e:2x2",
    "--config.teacher.overrides.hidden_size=8192",
    "--config.teacher.overrides.intermediate_size=32768",
    "--config.stages=['teacher','kd']",
  ]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
  out = proc.stdout + proc.stderr
  assert proc.returncode == 1, out[-3000:]
  assert "[kd] DOES NOT FIT" in out and "does not fit v5e:2x2: stage(s) kd" in out, out[-3000:]


def test_cli_bad_topology_is_a_clear_error():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  cmd = [
    sys.executable,
    os.path.join(ROOT, "scripts", "distill.py"),
    "--config",
    os.path.join(ROOT, "configs", "tiny.py"),
    "--aot_topology",
    "v5p-128",
  ]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
  assert proc.returncode == 2 and "v5p:4x4x4" in proc.stderr, proc.stderr[-2000:]

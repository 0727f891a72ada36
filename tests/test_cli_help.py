"""`scripts/distill.py --help` exits 0 and lists the `--config.*` fields (issue 17 item 5; absl's
own --help exits 1 and names none of them)."""

import os
import subprocess
import sys

from _runs import ROOT

from zebra_jax.distill.config import base_config


def test_distill_help_exits_0_and_lists_every_config_section():
  r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "distill.py"), "--help"],
                     env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  out = r.stdout
  assert "--workdir" in out and "--config.<section>.<field>=VALUE" in out
  sections = [k for k, v in base_config().items() if hasattr(v, "items") and len(v)]
  for section in sections:
    assert f"\n  {section}: " in out, section
  assert "loss_impl='logits'" in out and "round_tokens=0" in out


def test_a_one_point_loss_curve_is_visible(tmp_path):
  """A 1-step stage's loss_curve.png shows its point (it was a blank plot)."""
  import json

  import numpy as np
  from PIL import Image

  from zebra_jax.train.metrics import plot_loss_curve
  (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.5}) + "\n")
  img = np.asarray(Image.open(plot_loss_curve(str(tmp_path), "one step")).convert("RGB"))
  # matplotlib's default line colour (C0, #1f77b4) is drawn somewhere inside the axes
  blue = np.all(np.abs(img.astype(int) - [31, 119, 180]) < 30, axis=-1)
  assert blue.sum() > 10

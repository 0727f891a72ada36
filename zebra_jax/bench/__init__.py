"""Benchmarks of zebra-jax, one module per `scripts/bench.py` sub-command or kernel family.

* `decode`: decode throughput, Llama teacher vs GQA + Mamba2 vs Zebra (`scripts/bench.py generate`).
* `speculative`: speculative decoding of a real target with a distilled truncated draft
  (`scripts/bench.py speculative`).
* `train_step`: one distillation step at preset shapes, tokens/s, MFU, memory
  (`scripts/bench.py train`).
* `kd_loss`: the KD output-head loss, full logits vs chunked (`scripts/bench.py kernels --family
  kd_loss`).
* `ssd`: the Mamba2 SSD chunked scan against mamba_ssm and the reference (`scripts/bench.py kernels
  --family ssd`).
* `mla`: absorbed MLA decode against the HBM copy ceiling and XLA (`scripts/bench.py kernels
  --family mla`).
* `attention`: causal prefill/training attention with MLA head sizes against cuDNN
  (`scripts/bench.py kernels --family attention`).

Each module's `main(argv)` parses its own options (`python scripts/bench.py <sub-command> -h`, or
`python -m zebra_jax.bench.<name> -h` for the kernel families and `train_step`). This package sits
at the top, next to scripts/: it imports from infer/, train/, distill/, eval/, data/ and
kernels_pallas/, and nothing in the library imports it.
"""

import datetime
import platform


def environment() -> str:
  """The line every benchmark table starts with: device (backend), jax, flax, python, date."""
  import flax
  import jax

  return (
    f"{jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}, flax "
    f"{flax.__version__}, python {platform.python_version()}, "
    f"{datetime.date.today().isoformat()}"
  )

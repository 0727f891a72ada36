"""`CheckpointError`, the one error of checkpoint conversion. Kept below every module of the package
(hf, gguf, hybrid_import, orbax_io raise it; `zebra_jax.convert` re-exports it), so none of them
imports the package's `__init__`, which imports them."""


class CheckpointError(ValueError):
  """A checkpoint that cannot be loaded faithfully. The message lists every problem found."""

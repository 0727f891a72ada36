"""lm-evaluation-harness model "zebra_jax": loglikelihood, loglikelihood_rolling, generate_until.

    python -m zebra_jax.eval.lm_eval_adapter --model zebra_jax \
        --model_args checkpoint=path/to/ckpt,tokenizer=path/to/tokenizer,batch_size=8 \
        --tasks hellaswag,wikitext [--include_path my_tasks/]

(the same as `lm_eval ...`, with this module imported first: lm-eval 0.4.x discovers models only
from its own package or from modules that were imported and called `register_model`; in Python,
`import zebra_jax.eval.lm_eval_adapter` registers it for `lm_eval.simple_evaluate(model="zebra_jax")`.)

Tokenisation and scoring follow lm-eval's own HF model (HFLM) so scores are comparable: contexts are
encoded with the tokenizer's default special tokens, continuations split off the joint encoding
(`TemplateLM._encode_pair`), empty contexts use the BOS (else EOS) token, long inputs are
left-truncated to `max_length`, perplexity uses lm-eval's disjoint rolling windows. Generation is
greedy through `zebra_jax.generate` (compressed caches), cut at the `until` strings and EOS.

model_args: checkpoint (anything `zebra_jax.from_pretrained` reads, "smollm2" included), tokenizer
(default: the checkpoint's own tokenizer files; "byte": zebra_jax.data.ByteTokenizer), dtype
(float32), batch_size (8), max_length (default: the config's max_position_embeddings, at most
4096), max_gen_toks (256), use_cache (true), add_bos_token.
"""

from __future__ import annotations

import sys
import time
from typing import Sequence

import lm_eval.models  # noqa: F401  registers the built-in models first: lm-eval only does so

# lazily when its registry is empty, which ours would not be
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from zebra_jax.eval.scoring import TokenScorer
from zebra_jax.convert import from_pretrained, load_tokenizer
from zebra_jax.infer import generate


def _bool(v) -> bool:
  if isinstance(v, str):
    return v.strip().lower() in ("1", "true", "yes", "y")
  return bool(v)


@register_model("zebra_jax")
class ZebraJaxLM(TemplateLM):
  """A zebra_jax CausalLM (Llama or hybrid) behind the lm-eval `LM` interface."""

  def __init__(
    self,
    checkpoint: str | None = None,
    model=None,
    tokenizer=None,
    dtype: str = "float32",
    batch_size: int | str = 8,
    max_length: int | None = None,
    max_gen_toks: int = 256,
    use_cache: bool | str = True,
    add_bos_token: bool | str | None = None,
    prefix_token_id: int | None = None,
    **kwargs,
  ):
    super().__init__()
    # lm-eval passes device / max_batch_size etc. to every model; they mean nothing here.
    ignored = set(kwargs) - {"device", "max_batch_size", "trust_remote_code", "parallelize"}
    if ignored:
      raise TypeError(f"zebra_jax model: unknown model_args {sorted(ignored)}")
    if model is None:
      if checkpoint is None:
        raise ValueError("zebra_jax model needs checkpoint=<path> (or model=<CausalLM>)")
      model = from_pretrained(checkpoint, dtype=dtype)  # "smollm2" too (convert.resolve_checkpoint)
    if tokenizer is None or isinstance(tokenizer, str):
      src = tokenizer or checkpoint
      if src is None:
        raise ValueError("zebra_jax model needs tokenizer=<path> when given a model object")
      tokenizer = load_tokenizer(src)  # "byte", "smollm2", a .gguf, a directory
    self.model, self.tokenizer = model, tokenizer
    # "auto" / "auto:N" (lm-eval's batch-size search) fall back to 8: shapes are bucketed anyway
    bs = 8 if batch_size is None or str(batch_size).startswith("auto") else int(batch_size)
    self._batch_size = bs
    self.scorer = TokenScorer(model, batch_size=bs)
    self._max_length = int(max_length) if max_length else min(int(model.config.max_position_embeddings), 4096)
    self.max_gen_toks = int(max_gen_toks)
    self.use_cache = _bool(use_cache)
    self.add_bos_token = None if add_bos_token is None else _bool(add_bos_token)
    self.custom_prefix_token_id = None if prefix_token_id is None else int(prefix_token_id)

  # -- lm-eval plumbing --------------------------------------------------------------------------
  @property
  def eot_token_id(self) -> int:
    eos = self.tokenizer.eos_token_id
    if eos is None:
      eos = self.model.config.eos_token_id
      eos = eos[0] if isinstance(eos, (tuple, list)) else eos
    return eos

  @property
  def prefix_token_id(self) -> int:
    if self.custom_prefix_token_id is not None:
      return self.custom_prefix_token_id
    if self.tokenizer.bos_token_id is not None:
      return self.tokenizer.bos_token_id
    return self.eot_token_id

  @property
  def max_length(self) -> int:
    return self._max_length

  @property
  def batch_size(self) -> int:
    return self._batch_size

  def tok_encode(
    self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None, **kwargs
  ) -> list[int]:
    kw = {}
    if add_special_tokens is not None:
      kw["add_special_tokens"] = add_special_tokens
    elif self.add_bos_token is not None:
      kw["add_special_tokens"] = self.add_bos_token
    bos = getattr(self.tokenizer, "bos_token", None)
    if add_special_tokens is None and bos and string.startswith(bos):
      kw["add_special_tokens"] = False  # the string already carries its BOS
    ids = list(self.tokenizer.encode(string, **kw))
    return ids[-left_truncate_len:] if left_truncate_len else ids

  def tok_decode(self, tokens: Sequence[int], skip_special_tokens: bool = True) -> str:
    try:
      return self.tokenizer.decode(list(tokens), skip_special_tokens=skip_special_tokens)
    except TypeError:  # zebra_jax.data.ByteTokenizer: bytes only, specials always dropped
      return self.tokenizer.decode(list(tokens))

  # -- scoring -----------------------------------------------------------------------------------
  def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
    """requests: ((context, continuation), context_enc, continuation_enc) -> (logprob, is_greedy)."""
    seqs, n_cont = [], []
    for _, ctx, cont in requests:
      if not cont:
        raise ValueError("empty continuation in a loglikelihood request")
      seq = (list(ctx) + list(cont))[-(self.max_length + 1) :]
      seqs.append(seq)
      n_cont.append(len(cont))
    out = []
    t0 = time.time()
    scored = self.scorer.logprobs(seqs)
    # to the log (suite.run_lm_eval keeps it): where an lm-eval run spends its time
    print(
      f"[zebra_jax] scored {len(seqs)} requests ({sum(map(len, seqs)):,} tokens) in {time.time() - t0:.1f}s",
      file=sys.stderr,
      flush=True,
    )
    for (lp, greedy), k in zip(scored, n_cont):
      res = (float(lp[-k:].sum()), bool(greedy[-k:].all()))
      out.append(res)
    for (key, _, _), res in zip(requests, out):
      if key is not None:
        self.cache_hook.add_partial("loglikelihood", key, res)
    return out

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    windows, owner = [], []
    for i, (string,) in enumerate(tqdm([r.args for r in requests], disable=disable_tqdm)):
      for ctx, pred in map(
        lm_utils.make_disjoint_window,
        lm_utils.get_rolling_token_windows(
          token_list=self.tok_encode(string),
          prefix_token=self.prefix_token_id,
          max_seq_len=self.max_length,
          context_len=1,
        ),
      ):
        windows.append((None, ctx, pred))
        owner.append(i)
    scores = self._loglikelihood_tokens(windows) if windows else []
    totals = [0.0] * len(requests)
    for i, (lp, _) in zip(owner, scores):
      totals[i] += lp
    for r, t in zip(requests, totals):
      self.cache_hook.add_partial("loglikelihood_rolling", (r.args[0],), t)
    return totals

  # -- generation --------------------------------------------------------------------------------
  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    eos_text = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
    prepared = []
    for r in requests:
      context, gen_kwargs = r.args
      kw = dict(gen_kwargs or {})
      until = kw.pop("until", None)
      until = [until] if isinstance(until, str) else list(until or [])
      if eos_text and eos_text not in until:
        until.append(eos_text)
      n = int(kw.pop("max_gen_toks", kw.pop("max_new_tokens", self.max_gen_toks)))
      do_sample = _bool(kw.pop("do_sample", False))
      temperature = float(kw.pop("temperature", 0.0) or 0.0) if do_sample else 0.0
      if n >= self.max_length:
        raise ValueError(f"max_gen_toks={n} must be < max_length={self.max_length}")
      ids = self.tok_encode(context, left_truncate_len=self.max_length - n)
      prepared.append((ids, n, until, temperature))
    results: list[str | None] = [None] * len(requests)
    # batch requests with the same (max tokens, temperature)
    groups: dict = {}
    for i, (_, n, _, temp) in enumerate(prepared):
      groups.setdefault((n, temp), []).append(i)
    bar = tqdm(total=len(requests), disable=disable_tqdm, desc="generate_until")
    for (n, temp), idx in groups.items():
      for s in range(0, len(idx), self.batch_size):
        chunk = idx[s : s + self.batch_size]
        outs = generate(
          self.model,
          [prepared[i][0] for i in chunk],
          n,
          temperature=temp,
          use_cache=self.use_cache,
          stop_tokens=(self.eot_token_id,),
        )
        for i, toks in zip(chunk, outs):
          text = self.tok_decode(toks, skip_special_tokens=False)
          for term in prepared[i][2]:
            if term:
              text = text.split(term)[0]
          results[i] = text
          self.cache_hook.add_partial("generate_until", requests[i].args, text)
          bar.update(1)
    bar.close()
    return results


def main(argv=None) -> None:
  """lm-eval's command line with the "zebra_jax" model registered."""
  import sys
  from lm_eval.__main__ import cli_evaluate

  if argv is not None:
    sys.argv = [sys.argv[0]] + list(argv)
  cli_evaluate()


__all__ = ["ZebraJaxLM", "main"]

if __name__ == "__main__":
  main()

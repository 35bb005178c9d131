"""The language-model task: text sources, the fixed validation split, windows, the unigram entropy,
the transformer (causal, tied), the loss and evaluation against NumPy, and every strategy on it."""

import collections
import math
import os

import fake_data
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits_pso
from psops_jax import data as data_lib
from psops_jax import models, run, swarm, tasks, text, train
from psops_jax import sync as sync_lib


def test_windows_are_the_text_and_its_next_bytes():
  raw = bytes(np.random.RandomState(0).randint(0, 256, 1000).astype(np.uint8))
  inputs, targets = text.windows(raw, 16)
  assert inputs.shape == targets.shape == ((1000 - 1) // 16, 16)
  data = np.frombuffer(raw, np.uint8)
  for i in (0, 5, len(inputs) - 1):
    np.testing.assert_array_equal(inputs[i], data[16 * i : 16 * i + 16])
    np.testing.assert_array_equal(targets[i], data[16 * i + 1 : 16 * i + 17])


def test_validation_documents_are_an_evenly_spread_fraction_the_same_for_every_seed():
  held = text.held_out(1000, 0.05)
  assert held.sum() == 50
  gaps = np.diff(np.flatnonzero(held))
  assert set(gaps.tolist()) == {20}
  documents = [f"document {i}" for i in range(100)]
  train_raw, validation_raw = text.split_bytes(documents, 0.1)
  held_documents = [f"document {i}".encode() for i in range(9, 100, 10)]
  assert validation_raw.split(text.SEPARATOR) == held_documents
  assert train_raw.split(text.SEPARATOR) == [
    f"document {i}".encode() for i in range(100) if i % 10 != 9
  ]


def test_a_single_document_holds_out_its_last_bytes():
  train_raw, validation_raw = text.split_bytes(["x" * 900 + "y" * 100], 0.1)
  assert train_raw == b"x" * 900 and validation_raw == b"y" * 100


def test_unigram_entropy_against_the_definition():
  raw = b"abracadabra, said the swarm"
  counts = collections.Counter(raw)
  expected = -sum(c / len(raw) * math.log2(c / len(raw)) for c in counts.values())
  assert text.unigram_bits_per_byte(raw) == pytest.approx(expected, rel=1e-12)
  assert text.unigram_bits_per_byte(b"aaaa") == 0.0


def test_fortunes_are_read_as_documents_skipping_indices_and_links(tmp_path):
  written = fake_data.write_fortunes_dir(str(tmp_path))
  assert text.fortune_documents(str(tmp_path)) == written


def test_real_fortunes_when_installed():
  if not os.path.isdir(text.FORTUNES_DIR):
    pytest.skip("Debian's fortunes is not installed (.ci/run installs it)")
  documents = text.fortune_documents(text.FORTUNES_DIR)
  assert len(documents) > 5000
  raw = text.SEPARATOR.join(d.encode() for d in documents)
  assert 2e6 < len(raw) < 1e7
  assert 4.0 < text.unigram_bits_per_byte(raw) < 5.2  # English text with punctuation


@pytest.mark.parametrize(
  "source,directory,message",
  [
    ("fortunes", "/nonexistent/fortunes", r"no directory '/nonexistent/fortunes'.*apt-get install"),
    ("files", "/nonexistent/corpus.txt", r"data.dir='/nonexistent/corpus.txt': no such file"),
    ("files", "", r"data.source='files' needs data.dir"),
  ],
)
def test_missing_text_names_the_file(source, directory, message):
  with pytest.raises(text.TextError, match=message):
    text.read_documents(source, directory, "", 0)


def test_a_file_that_is_not_utf8_is_named(tmp_path):
  path = tmp_path / "latin1.txt"
  path.write_bytes("caf\xe9 au lait".encode("latin-1"))
  with pytest.raises(text.TextError, match=f"{path} is not UTF-8 text"):
    text.read_documents("files", str(path), "", 0)


def test_too_little_text_for_a_window_is_refused(tmp_path):
  (tmp_path / "short.txt").write_text("hello")
  with pytest.raises(text.TextError, match=r"data.context \+ 1 = 65 bytes"):
    text.load_text("files", str(tmp_path / "short.txt"), "", 64, 0.2, 10)


def test_files_source_reads_a_directory_in_name_order(tmp_path):
  for name, body in (("b.txt", "second"), ("a.txt", "first"), (".hidden", "never")):
    (tmp_path / name).write_text(body)
  assert text.read_documents("files", str(tmp_path), "", 0) == ["first", "second"]


def test_tfds_text_through_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=4):
    documents = text.read_documents("tfds", "", "tiny_shakespeare", 0)
  assert len(documents) == 4 and all(isinstance(d, str) for d in documents)


def test_contiguous_shards_keep_text_order():
  ids = np.arange(103)
  x, y = data_lib.shard_contiguous(ids[:, None], ids, 4)
  assert x.shape == (4, 25, 1)
  np.testing.assert_array_equal(y.reshape(-1), np.arange(100))


# --------------------------------------------------------------------------------------------------
# The model.


def tiny_transformer(tie=True):
  model = models.create("transformer", 256, "float32", "tiny", 16, tie)
  params = model.init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))["params"]
  return model, params


def test_transformer_is_causal():
  """Changing the byte at position t changes no logit before t (and does change those from t)."""
  model, params = tiny_transformer()
  tokens = jnp.asarray(np.random.RandomState(0).randint(0, 256, (2, 16)), jnp.int32)
  changed = tokens.at[:, 9].set((tokens[:, 9] + 1) % 256)
  a, b = model.apply({"params": params}, tokens), model.apply({"params": params}, changed)
  assert a.shape == (2, 16, 256) and a.dtype == jnp.float32
  np.testing.assert_array_equal(a[:, :9], b[:, :9])
  assert np.abs(np.asarray(a[:, 9:] - b[:, 9:])).max() > 1e-4


def test_tied_logits_are_the_embedding_transposed():
  model, params = tiny_transformer(tie=True)
  assert "Dense_0" not in params  # no output layer of its own
  untied = tiny_transformer(tie=False)[1]
  assert untied["Dense_0"]["kernel"].shape == (64, 256)
  features = {}
  tokens = jnp.arange(16, dtype=jnp.int32)[None]
  logits = model.apply(
    {"params": params},
    tokens,
    capture_intermediates=lambda mdl, name: isinstance(mdl, models.nn.LayerNorm),
    mutable=["intermediates"],
  )
  logits, state = logits
  features = state["intermediates"]["LayerNorm_0"]["__call__"][0]  # the final LayerNorm
  expected = np.asarray(features, np.float64) @ np.asarray(params["Embed_0"]["embedding"]).T
  np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size,low,high", [("tiny", 0.05e6, 1e6), ("m35", 30e6, 45e6)])
def test_transformer_sizes(size, low, high):
  model = models.create("transformer", 256, "float32", size, 128)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 128), jnp.int32))
  count = sum(a.size for a in jax.tree.leaves(shapes))
  assert low < count < high, count


def test_language_model_loss_and_evaluation_against_numpy():
  """Evaluation's accuracy and loss are the mean over every target byte of the argmax hits and of
  -log softmax, as NumPy computes them; bits per byte are the loss over ln 2."""
  model, params = tiny_transformer()
  rng = np.random.RandomState(1)
  inputs = rng.randint(0, 256, (5, 16)).astype(np.uint8)
  targets = rng.randint(0, 256, (5, 16)).astype(np.uint8)
  accuracy, loss = swarm.accuracy_and_loss(
    model, params, {}, jnp.asarray(inputs), jnp.asarray(targets), (), (), "language_model"
  )
  logits = np.asarray(model.apply({"params": params}, inputs.astype(np.int32)), np.float64)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -np.take_along_axis(log_probs, targets[..., None].astype(np.int64), -1)[..., 0]
  assert float(loss) == pytest.approx(nll.mean(), rel=1e-5)
  assert float(accuracy) == pytest.approx((logits.argmax(-1) == targets).mean())
  figures = tasks.text_figures(float(loss))
  assert figures["bits_per_byte"] == pytest.approx(nll.mean() / math.log(2), rel=1e-5)
  assert figures["perplexity"] == pytest.approx(math.exp(nll.mean()), rel=1e-5)


# --------------------------------------------------------------------------------------------------
# Runs.


def lm_config(**overrides):
  config = digits_pso.get_config()
  config.update_from_flattened_dict(
    {
      "num_particles": 4,
      "data.name": "text",
      "data.source": "synthetic",
      "data.context": 16,
      "data.eval_windows": 32,
      "model.name": "transformer",
      "model.size": "tiny",
      "optimizer.name": "adam",
      "optimizer.learning_rate": 0.003,
      "train.batch_size": 8,
      "train.rounds": 2,
      "train.eval_every": 0,
      "sync.period": 2,
      "sync.pso.probe_size": 16,
      **overrides,
    }
  )
  return config


@pytest.mark.slow
@pytest.mark.parametrize("strategy", sync_lib.strategy_names())
def test_every_strategy_runs_on_the_language_model_task(strategy):
  """Two rounds of every strategy on the LM task: finite losses, the weights moved, and the
  strategies that leave the particles equal leave them equal."""
  config = lm_config(**{"sync.strategy": strategy})
  built = run.build_run(config)
  before = jax.tree.map(np.asarray, built.swarm.params)
  compiled = run.compile_run(built)
  state = built.swarm
  for r in range(config.train.rounds):
    state, metrics = compiled.round_fn(state, built.data, jnp.int32(r))
  losses = np.asarray(metrics["loss"])
  assert losses.shape == (4,) and np.isfinite(losses).all()
  after = jax.tree.map(np.asarray, state.params)
  moved = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before))]
  assert max(moved) > 0
  if strategy in ("average", "ssgd", "diloco"):
    for leaf in jax.tree.leaves(after):
      np.testing.assert_allclose(leaf, np.broadcast_to(leaf[:1], leaf.shape), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_a_language_model_learns_the_text_below_its_unigram_entropy(tmp_path):
  """The whole path on a fortune directory of the real layout: the validation bits per byte fall
  below the text's unigram entropy (which a model without context cannot beat), and the summary
  names the task's metric."""
  fake_data.write_fortunes_dir(str(tmp_path / "fortunes"))
  config = lm_config(
    **{
      "data.source": "fortunes",
      "data.dir": str(tmp_path / "fortunes"),
      "sync.strategy": "average",
      "train.rounds": 40,
      "sync.period": 4,
    }
  )
  summary = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert summary["task"] == "language_model"
  assert summary["metric"] == {
    "key": "final_bits_per_byte",
    "higher_is_better": False,
    "label": "validation bits per byte",
  }
  assert summary["final_bits_per_byte"] == pytest.approx(summary["final_test_loss"] / math.log(2))
  assert summary["final_bits_per_byte"] < summary["unigram_bits_per_byte"] - 0.5, summary
  assert summary["tokens"] == 40 * 4 * 4 * 8 * 16

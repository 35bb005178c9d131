"""Tasks: what the particles learn, and how a run says how well.

Every data set is stored the same way, so the shards, the batches, the probe and every sync strategy
are the same for all tasks: uint8 inputs with one leading example axis, and integer targets.

  classification   inputs: images (H, W, C); targets: a class. The model sees the normalised
                   image (image / 255 - mean) / std; the headline is the test accuracy (higher is
                   better).
  language_model   inputs: T bytes of text; targets: the T bytes that follow each one (the window
                   shifted by one). The model sees the bytes as token ids 0..255 and predicts every
                   next byte (causal); the headline is the validation loss in bits per byte (lower
                   is better), with the loss in nats and the perplexity beside it.

The loss is the same for both: the mean softmax cross-entropy over every target (one per image,
T per window). Evaluation measures, over a split, the accuracy (of the argmax: the next byte's, for
text) and that mean loss.
"""

import math

import jax
import jax.numpy as jnp
import optax

# the tasks' metrics live in psops_jax/headline.py (no JAX in it, for the reports)
from psops_jax.headline import METRICS as METRICS
from psops_jax.headline import TASKS as TASKS
from psops_jax.headline import Metric as Metric
from psops_jax.headline import task_of as task_of


def normalize(images: jax.Array, mean: tuple, std: tuple) -> jax.Array:
  """uint8 images -> float32 (images / 255 - mean) / std, per channel."""
  x = images.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def model_inputs(task: str, x: jax.Array, mean: tuple, std: tuple) -> jax.Array:
  """What the model is called on: normalised images, or the bytes as int32 token ids."""
  if task == "language_model":
    return x.astype(jnp.int32)
  return normalize(x, mean, std)


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy over every target: logits (..., K), targets (...)."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets.astype(jnp.int32)).mean()


def split_sums(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(correct predictions, summed cross-entropy) over every target of a chunk of a split."""
  targets = targets.astype(jnp.int32)
  correct = jnp.sum(jnp.argmax(logits, -1) == targets)
  return correct, optax.softmax_cross_entropy_with_integer_labels(logits, targets).sum()


def text_figures(loss_nats: float) -> dict:
  """A language model's loss per byte in nats as bits per byte (loss / ln 2) and perplexity
  (exp(loss))."""
  loss_nats = float(loss_nats)
  if not math.isfinite(loss_nats):
    return {"bits_per_byte": None, "perplexity": None}
  return {"bits_per_byte": loss_nats / math.log(2), "perplexity": math.exp(min(loss_nats, 700.0))}

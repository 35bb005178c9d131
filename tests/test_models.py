"""Every registered classifier: logits of the right shape; batch statistics only with BatchNorm
(the transformer: tests/test_text.py)."""

import jax
import jax.numpy as jnp
import pytest

from psops_jax import models

INPUTS = {
  "mlp": (8, 8, 1),
  "small_cnn": (8, 8, 1),
  "lenet5": (28, 28, 1),
  "vgg_small": (32, 32, 3),
  "resnet20": (32, 32, 3),
}
WITH_BATCH_NORM = ("resnet20",)


def test_every_model_has_an_input_shape_here():
  assert set(INPUTS) == set(models.CLASSIFIERS)


@pytest.mark.parametrize(
  "name",
  [
    pytest.param(name, marks=pytest.mark.slow) if name in ("resnet20", "vgg_small") else name
    for name in sorted(models.CLASSIFIERS)
  ],
)
def test_model_gives_logits_and_batch_stats_only_with_batch_norm(name):
  model = models.create(name)
  x = jnp.zeros((2,) + INPUTS[name])
  variables = model.init(jax.random.key(0), x)
  expected = {"params", "batch_stats"} if name in WITH_BATCH_NORM else {"params"}
  assert set(variables) == expected
  logits = model.apply(variables, x, train=False)
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32


def test_unknown_model_and_dtype_list_the_accepted_values():
  with pytest.raises(ValueError, match=r"model.name='resnet50'.*'mlp', 'lenet5'"):
    models.create("resnet50")
  with pytest.raises(ValueError, match=r"model.dtype='float16'.*'float32', 'bfloat16'"):
    models.create("mlp", dtype="float16")

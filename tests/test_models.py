"""Every registered model: logits of the right shape, and a params pytree the sync can act on."""

import jax
import jax.numpy as jnp
import pytest

from psops_jax import models

INPUTS = {"mlp": (8, 8, 1), "small_cnn": (8, 8, 1), "lenet5": (28, 28, 1), "vgg_small": (32, 32, 3)}


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_model_gives_logits_and_only_params(name):
  model = models.create(name)
  x = jnp.zeros((2,) + INPUTS[name])
  variables = model.init(jax.random.key(0), x)
  assert set(variables) == {"params"}  # no batch statistics: the sync sees the whole state
  logits = model.apply(variables, x)
  assert logits.shape == (2, 10)


def test_unknown_model_lists_the_registry():
  with pytest.raises(ValueError, match=r"model.name='resnet50'.*'mlp', 'lenet5'"):
    models.create("resnet50")

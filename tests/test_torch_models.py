"""benchmarks/torch_models.py: given the Flax weights, each torch copy gives the Flax logits and
counts the same parameters. Skipped without torch (pip install -e ".[bench]")."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import common, torch_models
from psops_jax import models
from psops_jax import swarm as swarm_lib


def test_the_missing_torch_note_names_the_install_command():
  assert 'pip install -e ".[bench]"' in torch_models.MISSING


@pytest.mark.slow
@pytest.mark.parametrize("model_name", sorted(torch_models.FLAT_HWC))
def test_the_torch_copy_gives_the_flax_logits(model_name):
  pytest.importorskip("torch", reason=torch_models.MISSING)
  images, _ = common.random_shard(model_name, 16)
  mean, std = common.normalization(images.shape[-1])
  model = models.create(model_name)
  x = swarm_lib.normalize(jnp.asarray(images[:1]), mean, std)
  params = model.init(jax.random.key(0), x)["params"]
  check = torch_models.check_against_flax(model_name, model, params, images, mean, std)
  assert check["same_parameter_count"]
  np.testing.assert_array_less(check["logits_max_abs_diff_vs_flax"], 1e-4)

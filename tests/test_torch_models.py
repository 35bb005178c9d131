"""benchmarks/torch_models.py: given the Flax weights, each torch copy (the image models and the
transformer) gives the Flax logits and counts the same parameters. Skipped without torch (pip
install -e ".[bench]")."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import common, torch_models
from psops_jax import tasks


def test_the_missing_torch_note_names_the_install_command():
  assert 'pip install -e ".[bench]"' in torch_models.MISSING


@pytest.mark.slow
@pytest.mark.parametrize("model_name", sorted(torch_models.FLAT_HWC) + ["transformer"])
def test_the_torch_copy_gives_the_flax_logits(model_name):
  """Image models and configs/text_lm.py's tiny transformer (logits at every position)."""
  pytest.importorskip("torch", reason=torch_models.MISSING)
  config = common.run_config(model_name, 1, 1, 1, shard_size=16)
  model, _, task, shard = common.floor_parts(config)
  x, mean, std = shard.train_inputs, shard.mean, shard.std
  params = model.init(jax.random.key(0), tasks.model_inputs(task, jnp.asarray(x[:1]), mean, std))
  check = torch_models.check_against_flax(model_name, model, params["params"], x, mean, std)
  assert check["same_parameter_count"]
  np.testing.assert_array_less(check["logits_max_abs_diff_vs_flax"], 1e-4)

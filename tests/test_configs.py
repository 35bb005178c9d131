"""Every file in configs/ runs: each run config through train_and_evaluate for a few rounds on small
data of its real format (IDX files, CIFAR-10 python batches, TFDS through its mock), and every cell
of every study grid is a valid config whose distinct settings run too."""

import importlib
import os

import fake_data
import numpy as np
import pytest

from psops_jax import config_check, train

pytestmark = pytest.mark.slow  # every config trains for a few rounds

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_CONFIGS = ("digits_pso", "mnist_pso", "fashion_mnist_pso", "cifar10_pso", "text_lm")
STUDY_CONFIGS = (
  "study_byzantine",
  "study_digits",
  "study_fashion_mnist",
  "study_frontier",
  "study_lm",
  "study_outer",
  "study_pso_variants",
  "study_robustness",
)
LINK_STUDY_CONFIGS = ("study_link",)  # multi-process cells over shaped links: test_shaped_link.py


def test_every_config_file_is_tested_here():
  names = {
    f[:-3]
    for f in os.listdir(os.path.join(REPO, "configs"))
    if f.endswith(".py") and f != "__init__.py"
  }
  assert names == set(RUN_CONFIGS) | set(STUDY_CONFIGS) | set(LINK_STUDY_CONFIGS)


def toy(config, data_dir, rounds=2):
  """The config at toy size: 2 rounds of 2 steps of batch 8, a small probe, the data in data_dir (a
  learning-rate warmup cut to fit the 2 x rounds steps)."""
  config.update_from_flattened_dict(
    {
      "train.rounds": rounds,
      "sync.period": 2,
      "train.batch_size": 8,
      "sync.pso.probe_size": 32,
      "train.eval_every": 1,
      "train.log_every": 1,
      "data.validation_size": min(config.data.validation_size, 20),
      "optimizer.warmup_steps": min(config.optimizer.warmup_steps, 2 * rounds - 1),
    }
  )
  if config.data.source in ("files", "fortunes"):
    config.data.dir = data_dir
  return config


def write_data(name, directory):
  if name == "cifar10":
    fake_data.write_cifar10_dir(directory, per_batch=64)
  elif name in ("mnist", "fashion_mnist"):
    fake_data.write_mnist_dir(directory, n_train=200, n_test=40)
  elif name == "text":  # a fortune directory of Debian's layout
    fake_data.write_fortunes_dir(directory, per_file=150)


def check_summary(summary, config):
  assert summary["rounds"] == config.train.rounds
  assert summary["steps"] == config.train.rounds * config.sync.period
  assert 0.0 <= summary["final_test_accuracy"] <= 1.0
  assert all(np.isfinite(v) for v in summary["final_train_loss_particles"])


@pytest.mark.parametrize("name", RUN_CONFIGS)
def test_run_config_trains_on_data_of_its_format(name, tmp_path):
  config = importlib.import_module(f"configs.{name}").get_config()
  if config.data.source == "tfds":  # the files path here; TFDS below
    config.data.source = "files"
  write_data(config.data.name, str(tmp_path / "data"))
  config = toy(config, str(tmp_path / "data"))
  if name == "cifar10_pso":  # the promised path (ResNet-20, augmentation), long enough to learn;
    # the round of the README's toy run (test_readme.py), so one of the two finds it compiled
    config.num_particles, config.train.rounds, config.train.eval_every = 2, 40, 20
  summary = train.train_and_evaluate(config, str(tmp_path / "run"))
  check_summary(summary, config)
  assert (
    summary["config"]["model"]["name"]
    == importlib.import_module(f"configs.{name}").get_config().model.name
  )
  if name == "cifar10_pso":  # chance is 0.1 (0.59 after these 80 steps when this was written)
    assert summary["final_test_accuracy"] > 0.3, summary["final_test_accuracy"]


# (config, argument): the models a config offers through its argument (`--config FILE:ARGUMENT`)
# besides its default, each run below at the config's own settings; the default runs above.
CONFIG_ARGUMENTS = (("cifar10_pso", "vgg_small"),)


def test_every_model_a_config_offers_is_trained_here():
  from configs import cifar10_pso

  offered = {("cifar10_pso", model) for model in cifar10_pso.LEARNING_RATES}
  assert offered == {("cifar10_pso", cifar10_pso.get_config().model.name)} | set(CONFIG_ARGUMENTS)


def test_an_unknown_config_argument_names_the_accepted_ones():
  from configs import cifar10_pso

  with pytest.raises(ValueError, match=r"'vgg'.*accepted values are \('resnet20', 'vgg_small'\)"):
    cifar10_pso.get_config("vgg")


@pytest.mark.slow
@pytest.mark.parametrize("name,argument", CONFIG_ARGUMENTS)
def test_a_model_the_config_offers_learns_at_its_settings(name, argument, tmp_path):
  """The config with its argument (the model and its learning rate) at toy size on the fake CIFAR-10
  batches, as the ResNet-20 case above: 2 particles, 60 rounds of 2 steps of batch 8, evaluated at
  the end only. vgg_small at ResNet-20's learning rate 0.05 fails this (0.14 after 80 steps)."""
  config = importlib.import_module(f"configs.{name}").get_config(argument)
  config.data.source = "files"
  write_data(config.data.name, str(tmp_path / "data"))
  config = toy(config, str(tmp_path / "data"), rounds=60)
  config.num_particles, config.train.eval_every = 2, 0
  summary = train.train_and_evaluate(config, str(tmp_path / "run"))
  check_summary(summary, config)
  assert summary["config"]["model"]["name"] == argument
  losses = summary["final_train_loss_particles"]
  assert np.mean(losses) < np.log(10) - 0.5, losses  # chance is ln 10
  assert summary["final_test_accuracy"] > 0.3, summary["final_test_accuracy"]  # chance is 0.1


def test_text_lm_accelerator_argument_at_toy_size(tmp_path):
  """configs/text_lm.py:accelerator (bfloat16, 512-byte context, m35) on a fake fortune directory,
  the model at its tiny size (m35's 38M parameters, counted without compute in test_text.py, do not
  train on 2 CPU cores in a test)."""
  from configs import text_lm

  config = text_lm.get_config("accelerator")
  assert (config.model.size, config.data.context, config.model.dtype) == ("m35", 512, "bfloat16")
  write_data("text", str(tmp_path / "data"))
  config = toy(config, str(tmp_path / "data"), rounds=1)
  config.model.size, config.num_particles, config.train.batch_size = "tiny", 2, 2
  summary = train.train_and_evaluate(config, str(tmp_path / "run"))
  check_summary(summary, config)
  assert summary["task"] == "language_model" and summary["final_bits_per_byte"] is not None


def test_cifar10_config_through_tfds_mock(tmp_path):
  """The config's own source, TFDS, through tfds.testing.mock_data (MLP; ResNet-20 ran above)."""
  tfds = pytest.importorskip("tensorflow_datasets")
  config = toy(importlib.import_module("configs.cifar10_pso").get_config(), "", rounds=1)
  assert config.data.source == "tfds"
  config.model.name = "mlp"
  with tfds.testing.mock_data(num_examples=96):
    summary = train.train_and_evaluate(config, str(tmp_path / "run"))
  check_summary(summary, config)


def study_cells(name):
  """(grid name, cell name, config) of every cell of every grid of the study config `name`."""
  from studies import study as study_lib

  spec = importlib.import_module(f"configs.{name}").get_config()
  grids = [""] + [k for k, v in spec.items() if isinstance(v, dict) and "variants" in v]
  for grid in grids:
    study = study_lib.load_study(os.path.join(REPO, "configs", f"{name}.py"), grid)
    base = importlib.import_module(
      "configs." + os.path.splitext(os.path.basename(study.base))[0]
    ).get_config()
    for cell, _, _, _, _, overrides in study_lib.cells(study):
      config = base.copy_and_resolve_references()
      config.update_from_flattened_dict(overrides)
      yield grid, cell, config


def test_study_cells_are_valid_and_their_scenarios_run(tmp_path):
  """Every cell of every grid validates; one cell per distinct scenario (data set, partition, fault,
  validation split) runs at toy size with the MLP (the configs' own models run in the test above;
  every strategy in tests/test_train.py)."""
  seen = set()
  for name in STUDY_CONFIGS:
    for grid, cell, config in study_cells(name):
      config_check.validate(config)
      key = (
        config.data.name,
        config.data.partition,
        config.faults.kind,
        config.data.validation_size > 0,
      )
      if key in seen:
        continue
      seen.add(key)
      write_data(config.data.name, str(tmp_path / "data"))
      config = toy(config, str(tmp_path / "data"))
      if config.data.name != "text":  # text needs a language model: the config's, tiny
        config.model.name = "mlp"
      config.faults.step = 2  # the fault strikes in the second round
      summary = train.train_and_evaluate(config, str(tmp_path / "runs" / f"{name}_{grid}_{cell}"))
      assert summary["config"]["faults"]["kind"] == key[2], (name, grid, cell)
  # digits; fashion_mnist plain, validation, nan, noise, lr, dirichlet, sign_flip, scale, alie (and
  # alie on the validation split); text
  assert len(seen) >= 12


# The cells of the grids whose docstrings state their count and hours (study config, grid): cells.
STATED_CELL_COUNTS = {
  ("study_frontier", ""): 80,
  ("study_frontier", "tuning"): 6,
  ("study_frontier", "lm"): 90,
  ("study_frontier", "lm_tuning"): 5,
  **{("study_byzantine", grid): 60 for grid in ("", "none", "sign_flip_f1", "alie_f2")},
  ("study_byzantine", "quick"): 36,
  ("study_byzantine", "clip_tuning"): 10,
}


@pytest.mark.parametrize("name,grid", sorted(STATED_CELL_COUNTS))
def test_study_grids_have_the_cell_counts_their_docstrings_state(name, grid):
  from studies import study as study_lib

  study = study_lib.load_study(os.path.join(REPO, "configs", f"{name}.py"), grid)
  assert len(list(study_lib.cells(study))) == STATED_CELL_COUNTS[name, grid]


def test_the_byzantine_quick_grid_is_a_slice_of_its_scenario():
  """`quick` runs into alie_f2's directory: its cells must be alie_f2's, override for override."""
  from studies import study as study_lib

  path = os.path.join(REPO, "configs", "study_byzantine.py")
  full = {c[0]: c[-1] for c in study_lib.cells(study_lib.load_study(path, "alie_f2"))}
  quick = {c[0]: c[-1] for c in study_lib.cells(study_lib.load_study(path, "quick"))}
  assert quick and all(full[name] == overrides for name, overrides in quick.items())

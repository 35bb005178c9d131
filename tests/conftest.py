"""Test set-up: 8 virtual CPU devices, set before JAX is imported (package: pip install -e .), and
the `slow` marker on the tests that train, start processes or compile large models, so that
`pytest -m "not slow"` is a fast edit loop (CI runs everything)."""

import os

import pytest

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the test processes and the train.py, study and notebook
# processes they start (they inherit the environment): many tests compile the same toy programs.
# Keyed by the program and the backend, it changes no number; the size limit turns on JAX's file
# lock, which the two pytest-xdist workers need to share it.
os.environ.setdefault(
  "JAX_COMPILATION_CACHE_DIR",
  os.path.join(os.path.dirname(os.path.dirname(__file__)), ".pytest_cache", "jax_compilation"),
)
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2 * 1024**3))

# (test file, test name prefix, a piece of the parameter id or ""): the slow tests, in one place.
SLOW = (
  ("test_accelerator_check.py", "test_cpu_smoke", ""),
  ("test_batch_stats.py", "test_bfloat16", ""),
  ("test_batch_stats.py", "test_resnet20", ""),
  ("test_batch_stats.py", "test_every_strategy", "nested"),
  ("test_checkpoint.py", "", ""),
  ("test_cli.py", "", ""),
  ("test_configs.py", "", ""),
  ("test_models.py", "test_model_gives", "resnet20"),
  ("test_models.py", "test_model_gives", "vgg_small"),
  ("test_notebooks.py", "test_runs_top_to_bottom", ""),
  ("test_outer.py", "test_a_composed_strategy", ""),
  ("test_outer.py", "", "nested"),
  ("test_promised_paths.py", "", ""),
  ("test_readme.py", "test_readme_command", ""),
  ("test_study.py", "test_study_runs_the_grid", ""),
  ("test_sync.py", "test_pso_matches_numpy_over_several_rounds", "-8-"),
  ("test_sync.py", "test_pso_matches_numpy_over_several_rounds", "shard_map"),
  ("test_sync.py", "", "nested"),
  ("test_torch_models.py", "test_the_torch_copy", ""),
  ("test_train.py", "", ""),
  ("test_workdir.py", "test_a_second_train_py", ""),
)


def is_slow(nodeid: str) -> bool:
  path, _, name = nodeid.partition("::")
  test, _, params = name.partition("[")
  return any(
    os.path.basename(path) == file and test.startswith(prefix) and piece in params
    for file, prefix, piece in SLOW
  )


def pytest_collection_modifyitems(config, items):
  for item in items:
    if is_slow(item.nodeid):
      item.add_marker(pytest.mark.slow)

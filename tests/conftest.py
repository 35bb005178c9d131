"""Test set-up: 8 virtual CPU devices, set before JAX is imported (package: pip install -e .), and
one compilation cache for the test processes and those they start.

The tests that train, start processes or compile large models are marked where they are defined
(`@pytest.mark.slow`, `pytestmark = pytest.mark.slow` for a whole module, or
`pytest.param(..., marks=pytest.mark.slow)` for some cases), so that `pytest -m "not slow"` is a
fast edit loop (CI runs everything)."""

import os

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


def pytest_collection_modifyitems(items):
  """The slow tests first (a stable sort: in file order among themselves): with the two
  pytest-xdist workers stealing each other's queued tests (--dist worksteal, pyproject.toml), the
  run then ends on short tests and neither worker idles while the other finishes a long one."""
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)

"""Test set-up: 8 virtual CPU devices, set before JAX is imported (package: pip install -e .), and
one compilation cache for the test processes and those they start.

The tests that train, start processes or compile large models are marked where they are defined
(`@pytest.mark.slow`, `pytestmark = pytest.mark.slow` for a whole module, or
`pytest.param(..., marks=pytest.mark.slow)` for some cases), so that `pytest -m "not slow"` is a
fast edit loop (CI runs everything)."""

import os

from psops_jax import host_devices  # no JAX in it

# The tests compile far more than they compute (many small programs, each run for a few steps), so
# XLA's backend (LLVM) optimizations cost them more than they save: level 0 unless the caller chose
# one. It reaches the processes the tests start too (host_devices.child_environment keeps it); the
# measured effect is in docs/usage.md, "Tests and lint".
_flags = os.environ.get("XLA_FLAGS", "")
if "--xla_backend_optimization_level" not in _flags:
  _flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = host_devices.with_device_count(_flags.strip(), 8)
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

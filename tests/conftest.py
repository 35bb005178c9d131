"""Test set-up: 8 virtual CPU devices, set before JAX is imported (package: pip install -e .), and
one compilation cache for the test processes and those they start.

The tests that train, start processes or compile large models are marked where they are defined
(`@pytest.mark.slow`, `pytestmark = pytest.mark.slow` for a whole module, or
`pytest.param(..., marks=pytest.mark.slow)` for some cases), so that `pytest -m "not slow"` is a
fast edit loop (CI runs everything)."""

import os
import subprocess
import sys

import pytest

from psops_jax import host_devices  # no JAX in it

# The tests compile far more than they compute (many small programs, each run for a few steps), so
# XLA's backend (LLVM) optimizations cost them more than they save: level 0 unless the caller chose
# one, or the test is marked `xla_default` (below). It reaches the processes the tests start too
# (host_devices.child_environment keeps it); the measured effect is in docs/usage.md.
# the caller's own flags, kept for the pytest-xdist workers, which inherit the changed XLA_FLAGS
CALLER_XLA_FLAGS = os.environ.setdefault(
  "PSOPS_TESTS_CALLER_XLA_FLAGS", os.environ.get("XLA_FLAGS", "")
)
AT_DEFAULT_LEVEL = "PSOPS_TESTS_AT_XLA_DEFAULT_LEVEL"  # set in the child of an xla_default test
_flags = CALLER_XLA_FLAGS
if "--xla_backend_optimization_level" not in _flags and not os.environ.get(AT_DEFAULT_LEVEL):
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


def pytest_pyfunc_call(pyfuncitem):
  """A test marked `xla_default` runs in a child pytest at XLA's default backend optimization level
  (the caller's XLA_FLAGS): it claims bit-for-bit equality of two programs, which holds for what
  users run, the default level, and not at level 0, where XLA:CPU compiles the two differently
  enough to move last bits."""
  if pyfuncitem.get_closest_marker("xla_default") is None or os.environ.get(AT_DEFAULT_LEVEL):
    return None
  env = dict(os.environ, XLA_FLAGS=CALLER_XLA_FLAGS, **{AT_DEFAULT_LEVEL: "1"})
  child = subprocess.run(
    [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", pyfuncitem.nodeid],
    cwd=pyfuncitem.config.rootpath,
    env=env,
    capture_output=True,
    text=True,
  )
  if child.returncode != 0:
    pytest.fail(f"at XLA's default level: {(child.stdout + child.stderr)[-4000:]}", pytrace=False)
  return True

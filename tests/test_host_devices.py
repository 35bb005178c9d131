"""psops_jax/host_devices.py: the XLA_FLAGS a child process gets (its own device count, every other
flag kept)."""

import pytest

from psops_jax import host_devices

COUNT = host_devices.DEVICE_COUNT_FLAG


@pytest.mark.parametrize(
  "flags,expected",
  [
    ("", ""),
    (f"{COUNT}=8", ""),
    (f"--a=1 {COUNT}=8 --b", "--a=1 --b"),
    ("--xla_backend_optimization_level=0", "--xla_backend_optimization_level=0"),
  ],
)
def test_a_child_process_gets_the_xla_flags_without_the_device_count(flags, expected):
  """train.py, started by a study or a test, sets its own device count and keeps the other flags."""
  env = host_devices.child_environment({"XLA_FLAGS": flags, "OTHER": "x"})
  assert env.get("XLA_FLAGS") == (expected or None) and env["OTHER"] == "x"
  child = host_devices.with_device_count(env.get("XLA_FLAGS", ""), 3)
  assert child.split() == expected.split() + [f"{COUNT}=3"]


def test_a_count_already_set_is_kept():
  assert host_devices.with_device_count(f"--a=1 {COUNT}=8", 3) == f"--a=1 {COUNT}=8"
  assert host_devices.with_device_count("", 3) == f"{COUNT}=3"

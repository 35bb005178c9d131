"""The CPU host's device count, which XLA reads from XLA_FLAGS once, when JAX starts.

train.py sets the count its config asks for; a process that starts train.py (a study, a test, the
multi-process launcher) passes its own XLA_FLAGS on without its count, so that the child sets its
own and keeps every other flag the user or the test suite chose. No JAX here: this runs before JAX
starts.
"""

import os

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def with_device_count(flags: str, count: int) -> str:
  """XLA_FLAGS `flags` asking for `count` host devices, unless they already set a count."""
  if DEVICE_COUNT_FLAG in flags:
    return flags
  return f"{flags} {DEVICE_COUNT_FLAG}={count}".strip()


def without_device_count(flags: str) -> str:
  """XLA_FLAGS `flags` less any host device count (XLA reads `--flag=N` only)."""
  return " ".join(w for w in flags.split() if not w.startswith(DEVICE_COUNT_FLAG + "="))


def child_environment(environ=None) -> dict:
  """A copy of `environ` (default os.environ) for a child process that sets its own host device
  count: XLA_FLAGS without the count, dropped when nothing else is left in it."""
  env = dict(os.environ if environ is None else environ)
  flags = without_device_count(env.pop("XLA_FLAGS", ""))
  if flags:
    env["XLA_FLAGS"] = flags
  return env

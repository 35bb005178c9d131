"""A full or read-only workdir disk: its errors are recognised, on synthetic ones (texts as orbax
0.12 / tensorstore 0.1 raise them), and no other error is taken for one."""

import errno

import pytest

from psops_jax import errors
from psops_jax import workdir as workdir_lib

# What orbax raised for the toy run's 3rd checkpoint on a 4 MB tmpfs, and on a read-only bind mount
ORBAX_NO_SPACE = (
  'RESOURCE_EXHAUSTED: Error writing "opt_state.0.trace.Dense_1.bias/0.0" in OCDBT database at '
  'local file "{w}/checkpoints/3.orbax-checkpoint-tmp/swarm.orbax-checkpoint-tmp/ocdbt.process_0/"'
  ': Failed writing: "{w}/checkpoints/3.orbax-checkpoint-tmp/swarm.orbax-checkpoint-tmp/ocdbt.'
  'process_0/d/e1287ac4b1a059a2bbec7d504e3e1a2d": Failed to write 343414 bytes to file 15: No '
  "space left on device [os_error_code='28']"
)
ORBAX_READ_ONLY = (
  'PERMISSION_DENIED: Error writing "params.Dense_0.bias/0.0" in OCDBT database at local file '
  '"{w}/checkpoints/6.orbax-checkpoint-tmp/swarm.orbax-checkpoint-tmp/ocdbt.process_0/": Failed to '
  'open: "{w}/checkpoints/6.orbax-checkpoint-tmp/swarm.orbax-checkpoint-tmp/ocdbt.process_0/d/19c1'
  "5617402149c8153b012f87f15561\": Read-only file system [os_error_code='30']"
)
W = "/runs/w"  # the workdir of the synthetic errors (write_failure only reads their text)
ORBAX_NO_SPACE, ORBAX_READ_ONLY = ORBAX_NO_SPACE.format(w=W), ORBAX_READ_ONLY.format(w=W)


def wrapped(error: Exception, outer: Exception) -> Exception:
  """`outer`, raised from `error` (as a library that wraps orbax's error would)."""
  try:
    try:
      raise error
    except Exception as e:
      raise outer from e
  except Exception as e:
    return e


@pytest.mark.parametrize(
  "error, failure",
  [
    (ValueError(ORBAX_NO_SPACE), "No space left on device: checkpoints/3.orbax-checkpoint-tmp"),
    (ValueError(ORBAX_READ_ONLY), "Read-only file system: checkpoints/6.orbax-checkpoint-tmp"),
    (
      wrapped(ValueError(ORBAX_NO_SPACE), RuntimeError("save failed")),
      "No space left on device: checkpoints/3.orbax-checkpoint-tmp",
    ),
    (
      OSError(errno.ENOSPC, "No space left on device", f"{W}/metrics.jsonl"),
      "No space left on device: metrics.jsonl",
    ),
    (
      OSError(errno.EDQUOT, "Disk quota exceeded", f"{W}/summary.json.tmp.12"),
      "Disk quota exceeded: summary.json.tmp.12",
    ),
    (
      OSError(errno.EROFS, "Read-only file system", f"{W}/checkpoints/7.orbax-checkpoint-tmp"),
      "Read-only file system: checkpoints/7.orbax-checkpoint-tmp",
    ),
    (
      OSError(errno.EACCES, "Permission denied", f"{W}/config.json"),
      "Permission denied: config.json",
    ),
    # not the disk's: another errno, a path outside the workdir (a sibling's name starts the same),
    # no path, XLA's out-of-memory RESOURCE_EXHAUSTED, an error the library reports as it is
    (OSError(errno.ENOENT, "No such file or directory", f"{W}/metrics.jsonl"), None),
    (OSError(errno.ENOSPC, "No space left on device", f"{W}2/metrics.jsonl"), None),
    (OSError(errno.ENOSPC, "No space left on device", "/tmp/jax_cache/x"), None),
    (OSError(errno.ENOSPC, "No space left on device"), None),
    (ValueError(ORBAX_NO_SPACE.replace(W, "/elsewhere")), None),
    (RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.2G"), None),
    (errors.ConfigError(ORBAX_NO_SPACE), None),
    (ValueError("shapes (3,) and (4,) do not match"), None),
  ],
)
def test_write_failure_recognises_the_disks_errors_only(error, failure):
  assert workdir_lib.write_failure(error, W) == failure


def test_naming_gives_a_buffered_writes_error_its_file():
  with pytest.raises(OSError) as raised, workdir_lib.naming("/w/metrics.jsonl"):
    raise OSError(errno.ENOSPC, "No space left on device")
  assert raised.value.filename == "/w/metrics.jsonl"
  assert workdir_lib.write_failure(raised.value, "/w") == "No space left on device: metrics.jsonl"

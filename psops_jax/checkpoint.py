"""Checkpoints of a run (orbax-checkpoint) and the config check that guards resuming.

A checkpoint holds the whole swarm (every particle's weights and optimizer state, the sync
strategy's state) and, as JSON metadata, the number of rounds done and the seconds spent. Nothing
else is needed to continue exactly: mini-batches, augmentation and PSO randomness are drawn from
keys derived from (seed, particle, step) and (seed, round), so the round index is the whole RNG and
data-order state.

orbax writes each checkpoint into a temporary directory and renames it when complete, so a run
killed while saving leaves the previous checkpoints intact; the last `keep` are kept. The temporary
directory of a save that failed (a full disk) is removed then (`remove_partial`), or else when the
next run starts. The metadata also holds a checksum of the swarm, checked after restoring: orbax
does not notice every damaged byte. `Checkpointer.restore_latest` resumes from the newest checkpoint
that restores, and moves the newer damaged ones to WORKDIR/checkpoints_damaged/ (orbax does not list
them there; nothing is deleted).
"""

import glob
import json
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from psops_jax import errors
from psops_jax import workdir as workdir_lib

# Fields that may change between a run and its resumption: they do not change the numbers.
RESUMABLE_FIELDS = (
  "train.rounds",
  "train.log_every",
  "train.eval_every",
  "train.checkpoint_every",
  "train.keep_checkpoints",
  "train.allow_config_change",
  "train.max_unroll",
)
# Fields of the layout, where the particles run rather than what they compute: they may change too,
# so that a job that lost a host resumes on fewer devices (any processes x devices holding the same
# particles). The numbers stay bit for bit those of an uninterrupted run where the sync sums nothing
# over particles (none, pso); a sum over particles (average, ...) may change order, hence its last
# bits (docs/usage.md, "Checkpoints and resume").
LAYOUT_FIELDS = ("num_devices",)


CHECKSUM_KEY = "swarm_checksum"  # in the metadata of every checkpoint written since it existed
DAMAGED_DIR = "checkpoints_damaged"
PARTIAL = "*.orbax-checkpoint-tmp*"  # orbax's temporary directory of a save not yet complete
# Seconds a save may take in a multi-process run, its writes and the barrier that ends it. A save
# that fails in one process (a full disk) holds every process at orbax's barriers this long (each
# waits at a different one; orbax's default: 20 minutes); then every process exits.
MULTI_PROCESS_SAVE_TIMEOUT = 300


class CheckpointError(errors.BadInput, RuntimeError):
  """A checkpoint or workdir that cannot be used; the message names it."""


def all_processes(ok: bool) -> bool:
  """True when `ok` is true in every process (an all-gather when there are several)."""
  if jax.process_count() == 1:
    return ok
  return bool(multihost_utils.process_allgather(np.int32(ok)).all())


def as_uint32(a: jax.Array) -> jax.Array:
  """The bit patterns of `a` as uint32 (one per element; two per 64-bit element)."""
  if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
    a = jax.random.key_data(a)
  if a.dtype == jnp.bool_:
    return a.astype(jnp.uint32)
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[a.dtype.itemsize]
  return jax.lax.bitcast_convert_type(a, unsigned).astype(jnp.uint32)


def leaf_sums(a: jax.Array) -> jax.Array:
  """[sum of the bit patterns, sum weighted by position] mod 2**32. Modular sums do not depend on
  the order of the additions, so they are the same whatever the sharding."""
  bits = as_uint32(a)
  position = jnp.zeros(bits.shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(bits.ndim)):
    position += jax.lax.broadcasted_iota(jnp.uint32, bits.shape, axis) * jnp.uint32(stride % 2**32)
    stride *= bits.shape[axis]
  weight = position * jnp.uint32(2654435761) + jnp.uint32(1)  # Knuth's multiplicative hash
  return jnp.stack([bits.sum(dtype=jnp.uint32), (bits * weight).sum(dtype=jnp.uint32)])


tree_sums = jax.jit(lambda leaves: jnp.stack([leaf_sums(a) for a in leaves]))


def checksum(tree) -> str:
  """A checksum of every array of `tree`, computed where the arrays are (no copy to the host)."""
  sums = tree_sums(jax.tree.leaves(tree))
  if not sums.is_fully_replicated:
    sums = multihost_utils.process_allgather(sums, tiled=True)
  host = np.asarray(sums.addressable_data(0) if isinstance(sums, jax.Array) else sums)
  return host.astype("<u4").tobytes().hex()


def config_differences(saved: dict, current: dict) -> list[str]:
  """`field: saved -> current` for every field that differs, RESUMABLE_FIELDS and LAYOUT_FIELDS
  aside (workdir.config_differences: a field added since the save is no change at its old value)."""
  return workdir_lib.config_differences(saved, current, RESUMABLE_FIELDS + LAYOUT_FIELDS)


def check_config(workdir: str, config_dict: dict, allow_change: bool) -> None:
  """Refuse a workdir that holds a run of a different config, unless `allow_change`."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{path} cannot be read ({e}); use a new --workdir") from e
  differences = config_differences(saved, config_dict)
  if differences and not allow_change:
    raise CheckpointError(
      f"--workdir={workdir} holds a run of a different config; it would resume with:\n  "
      + "\n  ".join(differences)
      + "\nUse a new --workdir, or pass --config.train.allow_config_change=True to resume anyway."
    )


def directory_of(workdir: str) -> str:
  """Where the checkpoints of `workdir` are."""
  return os.path.abspath(os.path.join(workdir, "checkpoints"))


def newest_complete(directory: str) -> int | None:
  """The round of the newest complete checkpoint in `directory` (orbax renames a checkpoint to its
  round only once every process has written it), read from the disk alone: no collective, so it
  answers after a process of the run is lost. None when there is none."""
  try:
    rounds = [int(name) for name in os.listdir(directory) if name.isdigit()]
  except OSError:
    return None
  return max(rounds, default=None)


class Checkpointer:
  """Save and restore the swarm in `workdir/checkpoints`, the last `keep` kept."""

  def __init__(self, workdir: str, keep: int):
    self.directory = directory_of(workdir)
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=True,
        cleanup_tmp_directories=True,  # the partial checkpoint of a run that could not remove it
        async_options=ocp.AsyncOptions(
          timeout_secs=MULTI_PROCESS_SAVE_TIMEOUT
          if jax.process_count() > 1
          else ocp.AsyncOptions.timeout_secs,
          # created in the run's thread, a directory that cannot be (a read-only disk) fails the
          # save there; created in the background, it leaves orbax's threads that wait for it
          # holding the process for 5 minutes at its exit
          create_directories_asynchronously=False,
        ),
      ),
    )

  def latest_round(self) -> int | None:
    return self.manager.latest_step()

  def save(self, rounds_done: int, swarm, meta: dict) -> None:
    meta = {**meta, CHECKSUM_KEY: checksum(swarm)}
    self.manager.save(
      rounds_done,
      args=ocp.args.Composite(swarm=ocp.args.StandardSave(swarm), meta=ocp.args.JsonSave(meta)),
      force=True,
    )

  def restore(self, rounds_done: int, like):
    """(swarm, meta) of the checkpoint after `rounds_done` rounds; `like` gives structure, shapes
    and shardings. CheckpointError when it cannot be read in some process, or its checksum
    differs."""
    abstract = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), like
    )
    path = os.path.join(self.directory, str(rounds_done))
    error = None
    try:
      restored = self.manager.restore(
        rounds_done,
        args=ocp.args.Composite(
          swarm=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
        ),
      )
    except Exception as e:  # orbax/tensorstore raise many kinds on a damaged checkpoint
      error = f"{type(e).__name__}: {str(e)[:300]}"
    if not all_processes(error is None):  # every process moves on to the same checkpoint
      raise CheckpointError(
        f"checkpoint {path} cannot be restored ({error or 'in another process'})"
      )
    saved = restored.meta.get(CHECKSUM_KEY) if isinstance(restored.meta, dict) else None
    if saved is not None and saved != checksum(restored.swarm):
      raise CheckpointError(
        f"checkpoint {path} cannot be restored (its arrays do not match the "
        "checksum written with them)"
      )
    return restored.swarm, restored.meta

  def restore_latest(self, like):
    """(rounds_done, swarm, meta) of the newest checkpoint that restores, or None when there is no
    checkpoint. The newer ones that do not restore are named on stderr and moved to DAMAGED_DIR;
    when none restores, nothing is moved and CheckpointError names the latest."""
    failures = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        swarm, meta = self.restore(step, like)
      except CheckpointError as e:
        failures.append((step, e))
        continue
      self.set_aside(failures, step)
      return step, swarm, meta
    if not failures:
      return None
    older = f", nor can the {len(failures) - 1} before it" if len(failures) > 1 else ""
    raise CheckpointError(
      f"{failures[0][1]}{older}. {'They are' if older else 'It is'} damaged or from another "
      "config: use a new --workdir, or resume with the config of the run that wrote it."
    )

  def set_aside(self, failures, used: int) -> None:
    """Move the checkpoints of `failures` [(step, error)] to DAMAGED_DIR (process 0), saying so."""
    if not failures:
      return
    if jax.process_index() == 0:
      damaged = os.path.join(os.path.dirname(self.directory), DAMAGED_DIR)
      os.makedirs(damaged, exist_ok=True)
      for step, error in failures:
        target = os.path.join(damaged, str(step))
        copies = 1
        while os.path.exists(target):  # one damaged earlier under the same round
          target = os.path.join(damaged, f"{step}.{copies}")
          copies += 1
        os.rename(os.path.join(self.directory, str(step)), target)
        print(
          f"psops_jax: {error}; moved to {target}; resuming from round {used}",
          file=sys.stderr,
          flush=True,
        )
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("psops_jax: damaged checkpoints set aside")
    self.manager.reload()

  def remove_partial(self) -> list[str]:
    """Remove the temporary directories of saves that failed (call it once no save is in flight; in
    process 0: they are shared); the names of those that could not be removed (a read-only disk)."""
    left = []
    for path in sorted(glob.glob(os.path.join(self.directory, PARTIAL))):
      shutil.rmtree(path, ignore_errors=True)
      if os.path.exists(path):
        left.append(os.path.basename(path))
    return left

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()

"""Checkpoints of a run (orbax-checkpoint) and the config check that guards resuming.

A checkpoint holds the whole swarm (every particle's weights and optimizer state, the sync strategy's
state) and, as JSON metadata, the number of rounds done and the seconds spent. Nothing else is needed to
continue exactly: mini-batches, augmentation and PSO randomness are drawn from keys derived from
(seed, particle, step) and (seed, round), so the round index is the whole RNG and data-order state.

orbax writes each checkpoint into a temporary directory and renames it when complete, so a run killed
while saving leaves the previous checkpoints intact; the last `keep` are kept.
"""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

# Fields that may change between a run and its resumption: they do not change the numbers.
RESUMABLE_FIELDS = ("train.rounds", "train.log_every", "train.eval_every", "train.checkpoint_every",
                    "train.keep_checkpoints", "train.allow_config_change", "train.max_unroll")


class CheckpointError(RuntimeError):
  """A checkpoint or workdir that cannot be used; the message names it."""


def all_processes(ok: bool) -> bool:
  """True when `ok` is true in every process (an all-gather when there are several)."""
  if jax.process_count() == 1:
    return ok
  return bool(multihost_utils.process_allgather(np.int32(ok)).all())


def flatten(tree: dict, prefix: str = "") -> dict:
  """{"a": {"b": 1}} -> {"a.b": 1}."""
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      flat.update(flatten(value, name + "."))
    else:
      flat[name] = value
  return flat


def config_differences(saved: dict, current: dict) -> list[str]:
  """`field: saved -> current` for every field that differs, RESUMABLE_FIELDS aside."""
  a, b = flatten(saved), flatten(current)
  return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
          for k in sorted(set(a) | set(b))
          if k not in RESUMABLE_FIELDS and a.get(k) != b.get(k)]


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
        f"--workdir={workdir} holds a run of a different config; it would resume with:\n  " +
        "\n  ".join(differences) +
        "\nUse a new --workdir, or pass --config.train.allow_config_change=True to resume anyway.")


class Checkpointer:
  """Save and restore the swarm in `workdir/checkpoints`, the last `keep` kept."""

  def __init__(self, workdir: str, keep: int):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest_round(self) -> int | None:
    return self.manager.latest_step()

  def save(self, rounds_done: int, swarm, meta: dict) -> None:
    self.manager.save(rounds_done, args=ocp.args.Composite(
        swarm=ocp.args.StandardSave(swarm), meta=ocp.args.JsonSave(meta)), force=True)

  def restore(self, rounds_done: int, like):
    """(swarm, meta) of the checkpoint after `rounds_done` rounds; `like` gives structure, shapes and
    shardings."""
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                            like)
    path = os.path.join(self.directory, str(rounds_done))
    try:
      restored = self.manager.restore(rounds_done, args=ocp.args.Composite(
          swarm=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    except Exception as e:  # orbax/tensorstore raise many kinds on a damaged checkpoint
      raise CheckpointError(
          f"checkpoint {path} cannot be restored ({type(e).__name__}: {str(e)[:300]}). It is "
          "damaged or from another config: delete that directory to resume from the one before, "
          "or use a new --workdir.") from e
    return restored.swarm, restored.meta

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()

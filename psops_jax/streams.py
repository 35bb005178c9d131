"""The random streams of a run, each derived from the run's seed: one place for all of them.

A JAX stream's key is key(seed + OFFSETS[name]); each use folds in what makes it specific (a
particle's index, a step, a round). The host-side draws of the data (NumPy generators, before any
device holds the data) are seeded with seed + HOST_OFFSETS[name]. Streams that share an offset
have always shared it: another offset would change every run's numbers.

No JAX at import: psops_jax.data (host-side only) reads HOST_OFFSETS.
"""

OFFSETS = {
  "init": 0,  # the initial weights (train.init="independent" folds in the particle index)
  "batches": 0,  # each particle's mini-batch order: fold_in(key, particle), then the epoch
  "sync": 1,  # the sync's randomness (PSO's r1, r2): fold_in(key, round), then the particle
  "probe": 2,  # the probe subset of a round (probe_resample): fold_in(key, round)
  "faults": 3,  # "noise" faults: fold_in(key, particle)
  "augment": 4,  # random crops and flips: fold_in(key, particle), then the step
}

HOST_OFFSETS = {
  "split": 0,  # digits' train/test split
  "synthetic": 0,  # the synthetic images
  "shards": 0,  # the shuffle before the training set is cut into shards (or the Dirichlet draw)
  "probe": 1,  # the probe pool
  "validation": 2,  # the examples held out by data.validation_size
}


def key(seed: int, stream: str):
  """The JAX key of `stream` (a name in OFFSETS) for a run with this seed."""
  import jax

  return jax.random.key(seed + OFFSETS[stream])

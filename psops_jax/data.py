"""Data sets as in-memory uint8 arrays, and their per-particle shards.

Every loader returns a `Dataset`: uint8 images (N, H, W, C), int32 labels, and the normalisation
that the jitted round applies on device: x = (image / 255 - mean) / std, per channel.

Sources:
  sklearn  digits (1,797 real 8x8 images shipped inside scikit-learn; no download).
  files    MNIST-format IDX files (`train-images-idx3-ubyte[.gz]`, ...) for mnist / fashion_mnist,
  or
           CIFAR-10's python batches (`data_batch_1..5`, `test_batch`) for cifar10, in `data.dir`.
  tfds     tensorflow-datasets (`tfds.data_source`): mnist, fashion_mnist, cifar10.
  synthetic  random images of the data set's shape whose mean brightness depends on the class (so a
           model can learn them), `synthetic_size` training examples (0: the real set's size) and a
           fifth of that for testing: for smoke tests and benchmarks of a machine without the data.
"""

import gzip
import importlib.util
import os
import pickle
from typing import NamedTuple

import numpy as np

from psops_jax import errors, streams, text

NAMES = ("digits", "mnist", "fashion_mnist", "cifar10", "text")
SOURCES = ("sklearn", "files", "tfds", "synthetic")
PARTITIONS = ("iid", "dirichlet", "contiguous")

# Per-channel mean and std of the training images scaled to [0, 1].
NORMALIZATION = {
  "digits": ((0.3056,), (0.3761,)),  # sklearn digits, pixel values 0..16 stored as v * 255 / 16
  "mnist": ((0.1307,), (0.3081,)),
  "fashion_mnist": ((0.2860,), (0.3530,)),
  "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}

SHAPES = {
  "digits": (8, 8, 1),
  "mnist": (28, 28, 1),
  "fashion_mnist": (28, 28, 1),
  "cifar10": (32, 32, 3),
}
TRAIN_SIZES = {"digits": 1437, "mnist": 60000, "fashion_mnist": 60000, "cifar10": 50000}

DEFAULT_DIRS = {
  "mnist": "/usr/share/datasets/mnist",
  "fashion_mnist": "/usr/share/datasets/fashion-mnist",
  "cifar10": "~/data/cifar-10-batches-py",
}

HOW_TO_GET = {
  "mnist": "download the four MNIST IDX files (train-images-idx3-ubyte.gz, "
  "train-labels-idx1-ubyte.gz, "
  "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) into that directory, or use "
  "--config.data.source=tfds on a machine with network",
  "fashion_mnist": "on Debian/Ubuntu: apt-get install dataset-fashion-mnist (puts the IDX files in "
  "/usr/share/datasets/fashion-mnist), or use --config.data.source=tfds",
  "cifar10": "download and untar CIFAR-10's 'python version' (cifar-10-python.tar.gz) so that the "
  "directory holds data_batch_1..5 and test_batch, or use --config.data.source=tfds",
}


class DataError(errors.BadInput, ValueError):
  """A data set that cannot be found, read or understood; the message says where and how to fix."""


class Dataset(NamedTuple):
  train_inputs: np.ndarray  # uint8 (N, H, W, C)
  train_targets: np.ndarray  # int32 (N,)
  test_inputs: np.ndarray
  test_targets: np.ndarray
  mean: tuple
  std: tuple
  num_classes: int = 10
  unigram_bits_per_byte: float | None = None  # text: the entropy of the training bytes


# --------------------------------------------------------------------------------------------------
# Readers.


def read_idx(path: str) -> np.ndarray:
  """An IDX file (MNIST format, optionally gzipped) as a NumPy array.

  Header: two zero bytes, a type code (0x08 = uint8), the number of dimensions d, then d big-endian
  uint32 sizes; the data follow, row-major.
  """
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError) as e:
    raise DataError(f"cannot read IDX file {path}: {e}") from e
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
    raise DataError(f"{path} is not an IDX file of uint8 data (bad magic number)")
  ndim = raw[3]
  header = 4 + 4 * ndim
  shape = tuple(int(s) for s in np.frombuffer(raw[4:header], dtype=">u4"))
  expected = int(np.prod(shape))
  if len(raw) - header != expected:
    raise DataError(
      f"{path} is truncated or corrupt: header says {shape} = {expected} bytes of data, "
      f"the file holds {len(raw) - header}"
    )
  return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find_idx(directory: str, stem: str) -> str:
  for suffix in (".gz", ""):
    path = os.path.join(directory, stem + suffix)
    if os.path.exists(path):
      return path
  raise FileNotFoundError(stem)


def load_idx_dir(name: str, directory: str) -> tuple[np.ndarray, ...]:
  """train/test images and labels from the four MNIST-format IDX files in `directory`."""
  stems = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
  )
  paths = []
  for stem in stems:
    try:
      paths.append(_find_idx(directory, stem))
    except FileNotFoundError:
      raise DataError(
        f"data.name={name!r}, data.source='files': no {stem}[.gz] in "
        f"data.dir={directory!r}. To get it: {HOW_TO_GET[name]}."
      ) from None
  train_x, train_y, test_x, test_y = (read_idx(p) for p in paths)
  return train_x[..., None], train_y.astype(np.int32), test_x[..., None], test_y.astype(np.int32)


def load_cifar10_dir(directory: str) -> tuple[np.ndarray, ...]:
  """CIFAR-10's python batches (data_batch_1..5, test_batch) as NHWC uint8."""

  def read_batch(filename):
    path = os.path.join(directory, filename)
    if not os.path.exists(path):
      raise DataError(
        f"data.name='cifar10', data.source='files': no {filename} in "
        f"data.dir={directory!r}. To get it: {HOW_TO_GET['cifar10']}."
      )
    try:
      with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
      images = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
      return images, np.asarray(batch[b"labels"], np.int32)
    except Exception as e:  # pickle raises many kinds of errors on a corrupt file
      raise DataError(f"{path} is not a readable CIFAR-10 batch: {e!r}") from e

  train = [read_batch(f"data_batch_{i}") for i in range(1, 6)]
  test_x, test_y = read_batch("test_batch")
  return (
    np.concatenate([x for x, _ in train]),
    np.concatenate([y for _, y in train]),
    test_x,
    test_y,
  )


def digits_file() -> str:
  """scikit-learn's copy of the digits, a gzipped CSV of 1,797 rows of 64 pixel values (0..16) and
  the label: what `sklearn.datasets.load_digits` reads, found without importing scikit-learn (its
  import is a second or more of every digits run's start-up)."""
  spec = importlib.util.find_spec("sklearn")
  path = (
    os.path.join(os.path.dirname(spec.origin), "datasets", "data", "digits.csv.gz") if spec else ""
  )
  if not os.path.exists(path):
    raise DataError("data.name='digits' needs scikit-learn's digits: pip install scikit-learn")
  return path


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, ...]:
  """scikit-learn's 1,797 8x8 digits (values 0..16) as uint8 0..255, split by a seeded shuffle."""
  with gzip.open(digits_file(), "rt") as f:
    rows = np.loadtxt(f, delimiter=",")
  images = np.round(rows[:, :-1].reshape(-1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = rows[:, -1].astype(np.int32)
  order = np.random.RandomState(seed + streams.HOST_OFFSETS["split"]).permutation(len(labels))
  num_test = int(round(test_fraction * len(labels)))
  test, train = order[:num_test], order[num_test:]
  return images[train], labels[train], images[test], labels[test]


def load_tfds(name: str, directory: str | None) -> tuple[np.ndarray, ...]:
  """train/test splits through `tfds.data_source` (random-access, no TensorFlow needed to read)."""
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    raise DataError(
      "data.source='tfds' needs tensorflow-datasets: pip install tensorflow-datasets "
      "(and tensorflow, to download and prepare a data set the first time)"
    ) from None
  arrays = []
  for split in ("train", "test"):
    try:
      source = tfds.data_source(name, split=split, data_dir=directory, download=True)
    except ImportError as e:
      raise DataError(
        f"tfds could not prepare {name!r}: {e}. Preparing an image data set needs "
        "TensorFlow: pip install tensorflow (reading prepared data does not)."
      ) from e
    except Exception as e:
      raise DataError(f"tfds could not load {name!r} (data_dir={directory!r}): {e}") from e
    examples = [source[i] for i in range(len(source))]
    images = np.stack([np.asarray(ex["image"], np.uint8) for ex in examples])
    labels = np.asarray([ex["label"] for ex in examples], np.int32)
    arrays += [images, labels]
  return tuple(arrays)


def synthetic_images(rng: np.random.RandomState, n: int, shape: tuple):
  """n uint8 images of `shape` and their labels: uniform noise in 0..63 plus 20 x the label."""
  labels = rng.randint(0, 10, n)
  images = rng.randint(0, 64, (n,) + shape) + 20 * labels.reshape((n,) + (1,) * len(shape))
  return images.astype(np.uint8), labels.astype(np.int32)


def load_synthetic(name: str, size: int, seed: int) -> tuple[np.ndarray, ...]:
  """`size` (0: the real set's size) synthetic training examples of `name`, size // 5 test."""
  rng = np.random.RandomState(seed + streams.HOST_OFFSETS["synthetic"])
  size = size or TRAIN_SIZES[name]
  return (
    *synthetic_images(rng, size, SHAPES[name]),
    *synthetic_images(rng, max(1, size // 5), SHAPES[name]),
  )


def load(
  name: str, source: str, directory: str | None = None, seed: int = 0, synthetic_size: int = 0
) -> Dataset:
  """The data set `name` from `source` (see the module docstring)."""
  if name not in NAMES:
    raise DataError(f"data.name={name!r}: accepted values are {NAMES}")
  if name == "text":
    raise DataError("data.name='text' is read by load_text (its own sources: text.SOURCES)")
  if source not in SOURCES:
    raise DataError(f"data.source={source!r}: accepted values are {SOURCES}")
  if source == "sklearn":
    if name != "digits":
      raise DataError(
        f"data.source='sklearn' only has 'digits', not {name!r}; use data.source='files' or 'tfds'"
      )
    arrays = load_digits(seed=seed)
  elif source == "synthetic":
    arrays = load_synthetic(name, synthetic_size, seed)
  elif source == "files":
    if name == "digits":
      raise DataError("data.name='digits' comes from data.source='sklearn'")
    directory = os.path.expanduser(directory or DEFAULT_DIRS[name])
    arrays = load_cifar10_dir(directory) if name == "cifar10" else load_idx_dir(name, directory)
  else:
    if name == "digits":
      raise DataError("data.name='digits' comes from data.source='sklearn'")
    arrays = load_tfds(name, directory or None)
  train_x, train_y, test_x, test_y = arrays
  mean, std = NORMALIZATION[name]
  return Dataset(train_x, train_y, test_x, test_y, mean, std)


def load_text(
  source: str,
  directory: str,
  tfds_name: str,
  context: int,
  validation_fraction: float,
  eval_windows: int,
  seed: int = 0,
) -> Dataset:
  """The language-model data set of a text source (psops_jax/text.py): windows of `context` bytes
  and their next bytes, a fixed validation split as the evaluation split, 256 classes (bytes)."""
  *arrays, bits = text.load_text(
    source,
    directory,
    tfds_name,
    context,
    validation_fraction,
    eval_windows,
    seed + streams.HOST_OFFSETS["synthetic"],
  )
  return Dataset(*arrays, mean=(), std=(), num_classes=256, unigram_bits_per_byte=bits)


def carve_validation(dataset: Dataset, size: int, seed: int) -> Dataset:
  """Hold out `size` training examples (seeded) as the evaluation split, in place of the test split:
  for tuning without ever looking at the test set. The rest stays the training set."""
  n = len(dataset.train_targets)
  if not 0 < size < n:
    raise DataError(
      f"data.validation_size={size}: must be between 1 and {n - 1} "
      f"(the training split has {n} examples), or 0 to evaluate on the test split"
    )
  order = np.random.RandomState(seed + streams.HOST_OFFSETS["validation"]).permutation(n)
  held, kept = order[:size], order[size:]
  return dataset._replace(
    train_inputs=dataset.train_inputs[kept],
    train_targets=dataset.train_targets[kept],
    test_inputs=dataset.train_inputs[held],
    test_targets=dataset.train_targets[held],
  )


# --------------------------------------------------------------------------------------------------
# Splitting the training set between particles.


def shard(images: np.ndarray, labels: np.ndarray, num_particles: int, seed: int):
  """Disjoint, equal-sized, shuffled shards: arrays (num_particles, n // num_particles, ...).

  The n % num_particles examples left over after a seeded shuffle are dropped.
  """
  n = len(labels)
  per_particle = n // num_particles
  if per_particle == 0:
    raise DataError(f"{n} training examples cannot be split between num_particles={num_particles}")
  shuffle = np.random.RandomState(seed + streams.HOST_OFFSETS["shards"])
  order = shuffle.permutation(n)[: per_particle * num_particles]
  return (
    images[order].reshape(num_particles, per_particle, *images.shape[1:]),
    labels[order].reshape(num_particles, per_particle, *labels.shape[1:]),
  )


def shard_contiguous(inputs: np.ndarray, targets: np.ndarray, num_particles: int):
  """Shards of consecutive examples, in order (text: each particle reads its own run of documents,
  a non-IID split); the n % num_particles last examples are dropped."""
  per_particle = len(targets) // num_particles
  if per_particle == 0:
    raise DataError(
      f"{len(targets)} training examples cannot be split between num_particles={num_particles}"
    )
  keep = per_particle * num_particles
  return (
    inputs[:keep].reshape(num_particles, per_particle, *inputs.shape[1:]),
    targets[:keep].reshape(num_particles, per_particle, *targets.shape[1:]),
  )


def probe_batch(images: np.ndarray, labels: np.ndarray, size: int, seed: int):
  """A fixed batch of `size` training examples, the same for every particle (the PSO probe)."""
  order = np.random.RandomState(seed + streams.HOST_OFFSETS["probe"]).permutation(len(labels))[
    :size
  ]
  return images[order], labels[order]


def dirichlet_order(labels: np.ndarray, num_particles: int, alpha: float, seed: int) -> np.ndarray:
  """Example indices, (num_particles, n // num_particles), of label-skewed shards (the Dirichlet
  split of Hsu et al. 2019): the examples of each class c are divided between the particles in
  proportions p_c ~ Dirichlet(alpha 1_N). Each particle's share is then brought to the common size
  S = n // N (arrays need equal shards) by a seeded draw from its own examples: without replacement
  if it has more than S, every example then repeats to fill S if it has fewer. Label mixes are kept;
  small alpha (0.1): one or two classes per particle; large alpha (100): close to IID."""
  rng = np.random.RandomState(seed + streams.HOST_OFFSETS["shards"])
  size = len(labels) // num_particles
  if size == 0:
    raise DataError(
      f"{len(labels)} training examples cannot be split between num_particles={num_particles}"
    )
  for _ in range(100):  # redraw the (rare) splits that leave a particle with no example
    shares = [[] for _ in range(num_particles)]
    for c in np.unique(labels):
      examples = rng.permutation(np.flatnonzero(labels == c))
      cuts = np.cumsum(rng.dirichlet(alpha * np.ones(num_particles)))[:-1] * len(examples)
      for share, part in zip(shares, np.split(examples, cuts.astype(int))):
        share.extend(part.tolist())
    if all(shares):
      break
  else:
    raise DataError(f"data.dirichlet_alpha={alpha}: 100 draws left a particle without examples")

  def resize(share):
    share = rng.permutation(share)
    if len(share) >= size:
      return share[:size]
    return np.concatenate([np.tile(share, size // len(share)), share[: size % len(share)]])

  return np.stack([rng.permutation(resize(share)) for share in shares])


def shard_by_labels(
  images: np.ndarray, labels: np.ndarray, num_particles: int, alpha: float, seed: int
):
  """Like `shard`, with label-skewed shards (see `dirichlet_order`)."""
  order = dirichlet_order(labels, num_particles, alpha, seed)
  return images[order], labels[order]

"""Data sets of the real on-disk formats, written by the tests: MNIST-style IDX files and CIFAR-10's
python batches, of random images (psops_jax.data.synthetic_images: each class its own mean
brightness, so a short run can learn)."""

import gzip
import os
import pickle

import numpy as np

from psops_jax.data import synthetic_images

IDX_STEMS = (
  "train-images-idx3-ubyte",
  "train-labels-idx1-ubyte",
  "t10k-images-idx3-ubyte",
  "t10k-labels-idx1-ubyte",
)


def write_idx(path, array):
  """An IDX file of uint8 data: magic 0,0,8,ndim; big-endian uint32 sizes; the bytes."""
  header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
  payload = header + np.ascontiguousarray(array, np.uint8).tobytes()
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(payload)


def write_mnist_dir(directory, n_train=40, n_test=10, gz=True, seed=0):
  """The four MNIST IDX files (28x28) in `directory`; returns the arrays by file stem."""
  rng = np.random.RandomState(seed)
  train_x, train_y = synthetic_images(rng, n_train, (28, 28))
  test_x, test_y = synthetic_images(rng, n_test, (28, 28))
  arrays = dict(zip(IDX_STEMS, (train_x, train_y, test_x, test_y)))
  os.makedirs(directory, exist_ok=True)
  for stem, array in arrays.items():
    write_idx(os.path.join(directory, stem + (".gz" if gz else "")), array.astype(np.uint8))
  return arrays


def write_cifar10_dir(directory, per_batch=40, seed=0):
  """CIFAR-10's python batches (data_batch_1..5, test_batch: pickled dicts with b"data", rows of
  3,072 bytes in CHW order, and b"labels") in `directory`; returns [(NHWC, labels, CHW)]."""
  rng = np.random.RandomState(seed)
  os.makedirs(directory, exist_ok=True)
  batches = []
  for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    chw, labels = synthetic_images(rng, per_batch, (3, 32, 32))
    with open(os.path.join(directory, name), "wb") as f:
      pickle.dump({b"data": chw.reshape(per_batch, -1), b"labels": labels.tolist()}, f)
    batches.append((chw.transpose(0, 2, 3, 1), labels.tolist(), chw))
  return batches


def write_fortunes_dir(directory, files=("cookie", "computers", "science"), per_file=60, seed=0):
  """A fortune directory as Debian's `fortunes` package lays it out: text files of fortunes
  separated by lines holding only '%', each with a binary .dat index and a .u8 link (which the
  reader must skip). The fortunes are sentences of psops_jax.text's synthetic vocabulary
  (learnable). Returns the fortunes in the order a reader must find them (files sorted by name)."""
  from psops_jax import text

  os.makedirs(directory, exist_ok=True)
  found = []
  for f, name in enumerate(sorted(files)):
    fortunes = text.synthetic_documents(seed + f, count=per_file, words=12)
    with open(os.path.join(directory, name), "w") as out:
      out.write("\n%\n".join(fortunes) + "\n%\n")
    with open(os.path.join(directory, name + ".dat"), "wb") as out:
      out.write(bytes(range(256)))  # not UTF-8: a reader that opens it fails
    os.symlink(name, os.path.join(directory, name + ".u8"))
    found += fortunes
  return found

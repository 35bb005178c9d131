"""Data sets of the real on-disk formats, written by the tests: MNIST-style IDX files and CIFAR-10's
python batches. `learnable=True` gives each class its own mean brightness, so a short run can learn."""

import gzip
import os
import pickle

import numpy as np

IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")


def write_idx(path, array):
  """An IDX file of uint8 data: magic 0,0,8,ndim; big-endian uint32 sizes; the bytes."""
  header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
  payload = header + np.ascontiguousarray(array, np.uint8).tobytes()
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(payload)


def images_and_labels(rng, n, shape, learnable):
  labels = rng.randint(0, 10, n)
  noise = rng.randint(0, 256, (n,) + shape)
  if learnable:  # class c: pixels around 20 c
    noise = noise // 4 + 20 * labels.reshape((n,) + (1,) * len(shape))
  return noise.clip(0, 255).astype(np.uint8), labels


def write_mnist_dir(directory, n_train=40, n_test=10, gz=True, seed=0, learnable=False):
  """The four MNIST IDX files (28x28) in `directory`; returns the arrays by file stem."""
  rng = np.random.RandomState(seed)
  train_x, train_y = images_and_labels(rng, n_train, (28, 28), learnable)
  test_x, test_y = images_and_labels(rng, n_test, (28, 28), learnable)
  arrays = dict(zip(IDX_STEMS, (train_x, train_y, test_x, test_y)))
  os.makedirs(directory, exist_ok=True)
  for stem, array in arrays.items():
    write_idx(os.path.join(directory, stem + (".gz" if gz else "")), array.astype(np.uint8))
  return arrays


def write_cifar10_dir(directory, per_batch=40, seed=0, learnable=True):
  """CIFAR-10's python batches (data_batch_1..5, test_batch: pickled dicts with b"data", rows of
  3,072 bytes in CHW order, and b"labels") in `directory`; returns [(NHWC, labels, CHW)]."""
  rng = np.random.RandomState(seed)
  os.makedirs(directory, exist_ok=True)
  batches = []
  for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    chw, labels = images_and_labels(rng, per_batch, (3, 32, 32), learnable)
    with open(os.path.join(directory, name), "wb") as f:
      pickle.dump({b"data": chw.reshape(per_batch, -1), b"labels": labels.tolist()}, f)
    batches.append((chw.transpose(0, 2, 3, 1), labels.tolist(), chw))
  return batches

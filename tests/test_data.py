"""Data loaders on files the tests write, TFDS through its mock, sharding and augmentation."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fake_data import write_cifar10_dir, write_mnist_dir

from psops_jax import data as data_lib
from psops_jax import swarm as swarm_lib


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader_round_trips(tmp_path, gz):
  arrays = write_mnist_dir(str(tmp_path), gz=gz)
  ds = data_lib.load("mnist", "files", str(tmp_path))
  np.testing.assert_array_equal(ds.train_inputs[..., 0], arrays["train-images-idx3-ubyte"])
  np.testing.assert_array_equal(ds.train_targets, arrays["train-labels-idx1-ubyte"])
  np.testing.assert_array_equal(ds.test_inputs[..., 0], arrays["t10k-images-idx3-ubyte"])
  np.testing.assert_array_equal(ds.test_targets, arrays["t10k-labels-idx1-ubyte"])
  assert ds.train_inputs.shape == (40, 28, 28, 1) and ds.train_inputs.dtype == np.uint8
  assert ds.mean == data_lib.NORMALIZATION["mnist"][0]


def test_truncated_idx_file_is_named(tmp_path):
  write_mnist_dir(str(tmp_path), gz=False)
  path = os.path.join(str(tmp_path), "train-images-idx3-ubyte")
  with open(path, "rb") as f:
    raw = f.read()
  with open(path, "wb") as f:
    f.write(raw[:-100])
  with pytest.raises(data_lib.DataError, match="train-images-idx3-ubyte is truncated or corrupt"):
    data_lib.load("mnist", "files", str(tmp_path))


def test_not_an_idx_file(tmp_path):
  write_mnist_dir(str(tmp_path), gz=False)
  with open(os.path.join(str(tmp_path), "t10k-labels-idx1-ubyte"), "wb") as f:
    f.write(b"<html>not found</html>")
  with pytest.raises(data_lib.DataError, match="t10k-labels-idx1-ubyte is not an IDX file"):
    data_lib.load("mnist", "files", str(tmp_path))


def test_missing_files_say_where_and_how(tmp_path):
  with pytest.raises(data_lib.DataError) as err:
    data_lib.load("fashion_mnist", "files", str(tmp_path / "nowhere"))
  message = str(err.value)
  assert "nowhere" in message and "apt-get install dataset-fashion-mnist" in message


def test_unknown_names_list_the_accepted_values():
  with pytest.raises(data_lib.DataError, match=r"data.name='svhn'.*'digits', 'mnist'"):
    data_lib.load("svhn", "files")
  with pytest.raises(data_lib.DataError, match=r"data.source='http'.*'sklearn', 'files', 'tfds'"):
    data_lib.load("mnist", "http")


def test_cifar10_python_batches(tmp_path):
  expected = write_cifar10_dir(str(tmp_path), per_batch=4)
  ds = data_lib.load("cifar10", "files", str(tmp_path))
  assert ds.train_inputs.shape == (20, 32, 32, 3)
  np.testing.assert_array_equal(ds.train_inputs[4:8], expected[1][0])
  np.testing.assert_array_equal(ds.test_targets, expected[5][1])
  # pixel (row 5, col 7) of image 0 channel 2 is chw[0, 2, 5, 7]
  assert ds.test_inputs[0, 5, 7, 2] == expected[5][2][0, 2, 5, 7]


def test_digits_split_is_disjoint_and_complete():
  from sklearn.datasets import load_digits

  train_x, train_y, test_x, test_y = data_lib.load_digits()
  assert len(train_y) + len(test_y) == 1797
  assert train_x.dtype == np.uint8 and train_x.max() == 255
  as_bytes = lambda images, labels: [row.tobytes() + bytes([y]) for row, y in zip(images, labels)]
  train_rows = set(as_bytes(train_x, train_y))
  overlap = sum(row in train_rows for row in as_bytes(test_x, test_y))
  assert overlap < 10  # digits has a handful of exact duplicate images, no more
  digits = load_digits()  # the file read directly holds scikit-learn's digits, rescaled
  scaled = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  ours = as_bytes(train_x, train_y) + as_bytes(test_x, test_y)
  assert sorted(ours) == sorted(as_bytes(scaled, digits.target))


def test_tfds_source_through_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=24):
    ds = data_lib.load("cifar10", "tfds")
  assert ds.train_inputs.shape == (24, 32, 32, 3) and ds.train_inputs.dtype == np.uint8
  assert ds.train_targets.shape == (24,) and set(ds.train_targets) <= set(range(10))
  assert ds.mean == data_lib.NORMALIZATION["cifar10"][0]


@pytest.mark.parametrize("n", [1, 3, 8])
def test_each_particle_sees_a_disjoint_shard(n):
  ids = np.arange(101)
  images = ids.astype(np.uint8).reshape(-1, 1, 1, 1)
  shards_x, shards_y = data_lib.shard(images, ids, n, seed=0)
  assert shards_x.shape == (n, 101 // n, 1, 1, 1)
  np.testing.assert_array_equal(shards_x[..., 0, 0, 0], shards_y)  # images and labels stay paired
  seen = shards_y.reshape(-1)
  assert len(set(seen.tolist())) == len(seen)  # no example in two shards


def test_batch_indices_cover_each_shard_once_per_epoch():
  key = jax.random.key(0)
  shard_size, batch = 50, 8  # 6 steps per epoch, 2 examples left out per epoch
  epoch0 = np.concatenate(
    [np.asarray(swarm_lib.batch_indices(key, s, shard_size, batch)) for s in range(6)]
  )
  epoch1 = np.concatenate(
    [np.asarray(swarm_lib.batch_indices(key, s, shard_size, batch)) for s in range(6, 12)]
  )
  assert len(set(epoch0.tolist())) == 48 and len(set(epoch1.tolist())) == 48
  assert not np.array_equal(epoch0, epoch1)


@pytest.mark.parametrize("period", [1, 4, 6, 13])
def test_round_batch_indices_equal_the_per_step_definition(period):
  # 6 steps per epoch: rounds start inside an epoch, at its last step, and span up to 3 epochs.
  key, shard_size, batch = jax.random.key(3), 50, 8
  for first_step in (0, 5, 7, 17):
    expected = np.stack(
      [
        np.asarray(swarm_lib.batch_indices(key, first_step + t, shard_size, batch))
        for t in range(period)
      ]
    )
    got = jax.jit(swarm_lib.round_batch_indices, static_argnums=(2, 3, 4))(
      key, jnp.int32(first_step), period, shard_size, batch
    )
    np.testing.assert_array_equal(np.asarray(got), expected)


@pytest.mark.parametrize("chunk", [1, 4, 13])
def test_epoch_orders_draw_each_epoch_once_and_give_the_per_step_batches(chunk):
  """A round in calls of `chunk` steps reads each epoch's order from EpochOrders: every epoch is
  permuted once (not once per call), and the indices are batch_indices' at every step."""
  key, shard_size, batch = jax.random.key(3), 50, 8  # 6 steps per epoch
  drawn = []

  def orders_fn(data, epoch):
    drawn.append(int(epoch))
    return swarm_lib.epoch_order(key, epoch, shard_size)[None]  # one particle: (1, S)

  data = swarm_lib.DeviceData(None, np.zeros((1, shard_size)), None, None)
  orders_of = swarm_lib.EpochOrders(orders_fn)
  for first_step in range(0, 40, chunk):
    orders = orders_of(data, first_step, chunk, batch)
    got = swarm_lib.indices_from_orders(jnp.stack(orders, 1)[0], first_step, chunk, batch)
    expected = [
      swarm_lib.batch_indices(key, first_step + t, shard_size, batch) for t in range(chunk)
    ]
    np.testing.assert_array_equal(np.asarray(got), np.stack(expected))
  assert drawn == list(range(max(drawn) + 1))  # each epoch once, in order


def test_augmentation_is_a_shifted_window_or_its_mirror():
  rng = np.random.RandomState(0)
  images = rng.randint(1, 256, (16, 6, 6, 3)).astype(np.uint8)
  out = np.asarray(swarm_lib.augment_batch(jax.random.key(3), images, pad=2))
  assert out.shape == images.shape
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
  flips = 0
  for img, pad_img, got in zip(images, padded, out):
    matches = [
      (dy, dx, flip)
      for dy in range(5)
      for dx in range(5)
      for flip in (False, True)
      if np.array_equal(
        (pad_img[dy : dy + 6, dx : dx + 6][:, ::-1] if flip else pad_img[dy : dy + 6, dx : dx + 6]),
        got,
      )
    ]
    assert matches, "output is not a crop of the padded image"
    flips += all(m[2] for m in matches)
  assert 0 < flips < 16  # some images flipped, some not


def test_validation_split_is_carved_from_training_data_only():
  ids = np.arange(500)
  ds = data_lib.Dataset(
    train_inputs=ids.reshape(-1, 1, 1, 1),
    train_targets=ids,
    test_inputs=np.full((10, 1, 1, 1), -1),
    test_targets=np.full(10, -1),
    mean=(0.0,),
    std=(1.0,),
  )
  carved = data_lib.carve_validation(ds, 120, seed=0)
  held, kept = set(carved.test_targets.tolist()), set(carved.train_targets.tolist())
  assert len(held) == 120 and len(kept) == 380 and not held & kept
  assert held | kept == set(ids.tolist())  # nothing from the test split, nothing lost
  np.testing.assert_array_equal(carved.test_inputs[:, 0, 0, 0], carved.test_targets)
  with pytest.raises(data_lib.DataError, match=r"data.validation_size=500: must be between 1 and"):
    data_lib.carve_validation(ds, 500, seed=0)


def test_dirichlet_shards_are_disjoint_equal_and_skewed_by_alpha():
  labels = np.repeat(np.arange(10), 200)  # 2,000 examples, 10 balanced classes
  images = np.arange(len(labels))
  top_share = {}
  for alpha in (0.1, 1.0, 100.0):
    x, y = data_lib.shard_by_labels(images, labels, 8, alpha, seed=0)
    assert x.shape == (8, 250) and y.shape == (8, 250)
    owners = {}  # shards are disjoint (an example may repeat within its own shard only)
    for i, row in enumerate(x):
      for e in set(row.tolist()):
        assert owners.setdefault(e, i) == i
    np.testing.assert_array_equal(labels[x], y)  # images and labels stay paired
    counts = np.stack([np.bincount(row, minlength=10) for row in y])
    top_share[alpha] = float((counts.max(1) / 250).mean())
  assert top_share[0.1] > 0.5 and top_share[100.0] < 0.2
  assert top_share[0.1] > top_share[1.0] > top_share[100.0]

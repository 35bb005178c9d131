"""PSO-PS on Fashion-MNIST with LeNet-5, 8 particles, period 16, about 3 passes over each shard.

  python train.py --config configs/fashion_mnist_pso.py --workdir /tmp/fashion_mnist_pso
Reads the IDX files of Debian's `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist), or
--config.data.source=tfds on a machine with network.
"""

from configs import mnist_pso


def get_config():
  config = mnist_pso.get_config()
  config.data.name = "fashion_mnist"
  config.data.dir = "/usr/share/datasets/fashion-mnist"
  return config

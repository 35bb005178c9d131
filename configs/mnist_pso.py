"""PSO-PS on MNIST with LeNet-5, 8 particles, period 16, about 3 passes over each particle's shard.

  python train.py --config configs/mnist_pso.py --workdir /tmp/mnist_pso
Reads the four MNIST IDX files from data.dir (data.source=files), or --config.data.source=tfds on a
machine with network.
"""

from configs import digits_pso


def get_config():
  config = digits_pso.get_config()
  config.data.name = "mnist"
  config.data.source = "files"
  config.data.dir = "/usr/share/datasets/mnist"
  config.model.name = "lenet5"
  config.sync.period = 16
  config.train.rounds = 44  # 704 steps x batch 32 = 3 passes over 7,500 examples/particle
  config.train.eval_every = 11
  return config

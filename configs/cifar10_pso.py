"""PSO-PS on CIFAR-10 with ResNet-20 (BatchNorm), 8 particles, period 16, 20 passes per shard.

  python train.py --config configs/cifar10_pso.py --workdir /tmp/cifar10_pso
Through TFDS by default (needs network the first time, and TensorFlow to prepare the data); or
--config.data.source=files --config.data.dir=DIR with CIFAR-10's python batches (data_batch_1..5,
test_batch) in DIR. Random crop and flip are applied inside the jitted round. Meant for GPUs/TPUs (a
round of 8 ResNet-20 particles takes tens of seconds on a 2-core CPU); --config.model.name=vgg_small
for the VGG-style net (GroupNorm), --config.model.dtype=bfloat16 for mixed precision.
"""

from configs import digits_pso


def get_config():
  config = digits_pso.get_config()
  config.data.name = "cifar10"
  config.data.source = "tfds"
  config.model.name = "resnet20"
  config.optimizer.learning_rate = 0.05
  config.sync.period = 16
  config.train.rounds = 244  # 3,904 steps x batch 32 = 20 passes over 6,250 examples/particle
  config.train.log_every = 10  # reading metrics is a host sync: rare on accelerators
  config.train.eval_every = 25
  return config

"""PSO-PS on CIFAR-10 with ResNet-20 (BatchNorm), 8 particles, period 16, 20 passes per shard.

  python train.py --config configs/cifar10_pso.py --workdir /tmp/cifar10_pso
  python train.py --config configs/cifar10_pso.py:vgg_small --workdir /tmp/cifar10_vgg
Through TFDS by default (needs network the first time, and TensorFlow to prepare the data); or
--config.data.source=files --config.data.dir=DIR with CIFAR-10's python batches (data_batch_1..5,
test_batch) in DIR. Random crop and flip are applied inside the jitted round. Meant for GPUs/TPUs (a
round of 8 ResNet-20 particles takes tens of seconds on a 2-core CPU).

The argument after the colon picks the model and its learning rate (LEARNING_RATES): `resnet20` (the
default) or `vgg_small`, the VGG-style net with GroupNorm. Prefer it to --config.model.name, which
changes the model only: vgg_small does not learn at ResNet-20's learning rate.
--config.model.dtype=bfloat16 for mixed precision.
"""

from configs import digits_pso

# model -> SGD learning rate (momentum 0.9, batch 32 per particle). vgg_small does not learn at
# ResNet-20's 0.05. Measured on tests/fake_data.py's class-coloured CIFAR-10 batches (2 particles,
# period 2, batch 8: tests/test_configs.py's toy), test accuracy after 120-160 steps (chance 0.1):
# lr 0.05: 0.14 after 80 steps (the loss jumped to 4.6-5.9), 0.27 after 120; 0.02: 0.31;
# 0.01: 0.17-0.59 over seeds 0-2; 0.005: 0.48-0.61 over seeds 0-2, the loss near 1.0. Not measured
# on the real CIFAR-10.
LEARNING_RATES = {"resnet20": 0.05, "vgg_small": 0.005}


def get_config(model: str = "resnet20"):
  if model not in LEARNING_RATES:
    raise ValueError(
      f"the argument {model!r} (configs/cifar10_pso.py:MODEL) names no model here; accepted values "
      f"are {tuple(LEARNING_RATES)}"
    )
  config = digits_pso.get_config()
  config.data.name = "cifar10"
  config.data.source = "tfds"
  config.model.name = model
  config.optimizer.learning_rate = LEARNING_RATES[model]
  config.sync.period = 16
  config.train.rounds = 244  # 3,904 steps x batch 32 = 20 passes over 6,250 examples/particle
  config.train.log_every = 10  # reading metrics is a host sync: rare on accelerators
  config.train.eval_every = 25
  return config

"""A byte-level transformer language model on Debian's fortunes (offline once `apt-get install
fortunes`), 8 workers synchronized by DiLoCo every 16 steps: the task on which the field compares
communication-efficient training, at a size that trains in a few minutes on 2 CPU cores.

  python train.py --config configs/text_lm.py --workdir /tmp/text_lm

`configs/text_lm.py:accelerator` is the same run at the size of the DiLoCo papers' smallest models
(m35: 38M parameters, 512-byte context, bfloat16 compute) for a GPU or TPU. Other texts:
--config.data.source=files --config.data.dir=PATH (a UTF-8 file or a directory of them), or
--config.data.source=tfds --config.data.tfds_name=tiny_shakespeare.
"""

from configs import digits_pso

# model.size, data.context, train.batch_size, train.rounds, model.dtype by argument
SIZES = {
  "": ("small", 64, 16, 40, "float32"),
  "accelerator": ("m35", 512, 32, 500, "bfloat16"),
}


def get_config(argument: str = ""):
  if argument not in SIZES:
    raise ValueError(f"configs/text_lm.py:{argument}: accepted arguments are {tuple(SIZES)}")
  size, context, batch_size, rounds, dtype = SIZES[argument]
  config = digits_pso.get_config()
  config.data.name = "text"
  config.data.source = "fortunes"
  config.data.context = context
  config.data.validation_fraction = 0.05
  config.data.eval_windows = 256
  config.model.name = "transformer"
  config.model.size = size
  config.model.dtype = dtype
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 0.003
  config.train.batch_size = batch_size  # windows of `context` bytes per worker and step
  config.train.rounds = rounds
  config.train.eval_every = 10
  config.train.eval_particles = False
  config.sync.strategy = "diloco"
  config.sync.period = 16
  config.sync.pso.probe_size = 64  # windows: the probe, for the strategies that rank workers
  return config

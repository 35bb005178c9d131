"""A byte-level transformer language model on Debian's fortunes (offline once `apt-get install
fortunes`), 8 workers synchronized by DiLoCo every 16 steps: the task on which the field compares
communication-efficient training, at a size that trains in a few minutes on 2 CPU cores.

  python train.py --config configs/text_lm.py --workdir /tmp/text_lm

The default: the tiny transformer (2 blocks of width 64, 0.12M parameters), 100 rounds of 16 steps
of 8 windows of 64 bytes per worker (6.6M bytes seen in all), AdamW (peak 0.01, weight decay 0.1)
with 50 warmup steps and a cosine to a tenth, gradients clipped to norm 1, the local steps in
`lax.scan` (on CPU this transformer compiles several times faster and runs faster scanned than
unrolled: docs/RESULTS.md). The validation bits per byte fall from the unigram entropy of the text
(4.77) to about 3 (docs/RESULTS.md gives the measured run).

`configs/text_lm.py:accelerator` is the same run at the size of the DiLoCo papers' smallest models
(m35: 38M parameters, 512-byte context, bfloat16 compute) for a GPU or TPU. Other texts:
--config.data.source=files --config.data.dir=PATH (a UTF-8 file or a directory of them), or
--config.data.source=tfds --config.data.tfds_name=tiny_shakespeare.
"""

from configs import digits_pso

# model.size, data.context, train.batch_size, train.rounds, model.dtype, optimizer.learning_rate by
# argument. The accelerator's rate is a common one for models of this size (not tuned here: no
# accelerator has run it).
SIZES = {
  "": ("tiny", 64, 8, 100, "float32", 0.01),
  "accelerator": ("m35", 512, 32, 500, "bfloat16", 0.002),
}


def get_config(argument: str = ""):
  if argument not in SIZES:
    raise ValueError(f"configs/text_lm.py:{argument}: accepted arguments are {tuple(SIZES)}")
  size, context, batch_size, rounds, dtype, learning_rate = SIZES[argument]
  config = digits_pso.get_config()
  config.data.name = "text"
  config.data.source = "fortunes"
  config.data.context = context
  config.data.validation_fraction = 0.05
  config.data.eval_windows = 256
  config.model.name = "transformer"
  config.model.size = size
  config.model.dtype = dtype
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = learning_rate
  config.optimizer.weight_decay = 0.1
  config.optimizer.schedule = "warmup_cosine"
  config.optimizer.warmup_steps = 50
  config.optimizer.final_fraction = 0.1
  config.optimizer.clip_norm = 1.0
  config.train.loop = "scan"
  config.train.batch_size = batch_size  # windows of `context` bytes per worker and step
  config.train.rounds = rounds
  config.train.eval_every = 10
  config.train.eval_particles = False
  config.sync.strategy = "diloco"
  config.sync.period = 16
  config.sync.pso.probe_size = 64  # windows: the probe, for the strategies that rank workers
  return config

"""The train.py flags of the tests' toy digits run: 4 MLP particles, period 2, a small probe, no
evaluation on the way (the tests that start train.py processes add their rounds and checkpoints)."""

TINY = [
  "--config",
  "configs/digits_pso.py",
  "--config.num_particles=4",
  "--config.model.name=mlp",
  "--config.sync.period=2",
  "--config.sync.pso.probe_size=64",
  "--config.train.eval_every=0",
]

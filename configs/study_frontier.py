"""Bytes against accuracy: SparseLoCo and MuLoCo against DiLoCo sending float32, int8, int4 and int2
pseudo-gradients, and averaging, at periods 16 and 64; then the time to a target accuracy on the
communication clock. Fashion-MNIST, LeNet-5, 8 workers, 704 local steps of batch 32, seeds 0-4,
evaluated at 11 points (the clock's curves), every cell on one code version:

  python studies/study.py --study configs/study_frontier.py --grid tuning \
      --out studies/results/frontier_tuning      # muon's inner learning rate: run this first
  python studies/study.py --study configs/study_frontier.py --out studies/results/frontier
  python studies/time_report.py studies/results/frontier --profile lenet5_h100_1gbit
  python studies/study.py --study configs/study_frontier.py --grid lm_tuning \
      --out studies/results/frontier_lm_tuning   # muon's peak rate on the language model
  python studies/study.py --study configs/study_frontier.py --grid lm \
      --out studies/results/frontier_lm          # the same variants on configs/text_lm.py

Variants (outer step of the DiLoCo kin: Nesterov, learning rate 0.7, momentum 0.9; inner SGD at the
tuned rates of configs/study_fashion_mnist.py: averaging 0.025, DiLoCo's inner steps 0.0125):
  average                 parameter averaging, float32 (the plain reference)
  diloco                  the outer Nesterov step on the mean pseudo-gradient, float32
  diloco_int8, diloco_int4, diloco_int2
                          the same, pseudo-gradients absmax-quantized per block of 256 values
                          (int2 with error feedback: the control of muloco_int2)
  sparseloco              SparseLoCo at its paper's settings (Sarfi et al. 2025; the defaults of
                          sync.sparseloco): per block of 4096 values the 2% largest of the
                          error-feedback accumulator at 2 bits, feedback decay 0.95, outer SGD at
                          learning rate 1 without momentum; inner SGD at DiLoCo's inner rate
  muloco, muloco_int2     MuLoCo (Therien et al. 2025): muon as the inner optimizer under DiLoCo's
                          outer step, float32 or 2-bit pseudo-gradients with error feedback (int2,
                          the outer sync's only quantizer that keeps what it drops)

Cells: 8 variants x 2 periods x 5 seeds = 80, about 1.3-2 hours on 2 cores (a cell: 60-90 s). The
muon learning rate: no tuned one exists, so `tuning` runs muloco at MUON_TUNING_LEARNING_RATES
(period 16, seed 100, which the study's seeds do not use, on a 5,000-example validation split: 6
cells, about 15 minutes; studies/results/frontier_tuning, AMD EPYC); MUON_LEARNING_RATE is its best.
The validation accuracy at 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1: 0.875, 0.890, 0.886, 0.849, 0.742,
0.100 (diverged); 0.0003 was added when the first five put the best at the grid's edge. One seed.
Muon acts on LeNet-5's dense kernels only (58,920 of its 61,706 weights); its convolution kernels
and biases take muon's AdamW step.

`lm`: the same variants on the byte-level transformer of configs/text_lm.py at its study's settings
(configs/study_lm.py: 512 local steps of batch 8 windows per worker, the inner AdamW rates its
`tuning` chose per family, DiLoCo's for every outer-step variant), and one more, `average_muon`:
averaging with muon's inner steps at MuLoCo's rate (the control that tells muon's gain from the
outer step's; its rate not tuned for averaging); periods 16 and 64, seeds 0-4, evaluated at 8
points: 90 cells, 1-2 hours (a cell: 35-40 s on a 2-core Intel Xeon, 85 s on an AMD EPYC, its
compile included). Its muon rate, LM_MUON_LEARNING_RATE, is the best of `lm_tuning` (muloco at
configs/study_lm.py's 5 rates, seed 100, validation bits per byte;
studies/results/frontier_lm_tuning, AMD EPYC): 3.778 / 3.526 / 3.152 / 3.109 / 3.173 at 0.001 /
0.003 / 0.01 / 0.03 / 0.1, so 0.03, the same as DiLoCo's tuned AdamW rate (muon's update is scaled
to AdamW's RMS so that one rate can serve both: psops_jax/optimizers.py). One seed.

The clock prices every compressed payload as a ring all-reduce of the compressed bytes
(sync.outer's collective is its aggregate's: the mean's all_reduce), which a real exchange of
quantized or sparse values cannot do without re-quantizing at each hop or densifying; sent as an
all-gather it would move (N - 1) P instead of 2 (N - 1) / N P per worker, 4x the bytes at N = 8. The
projected times of every compressed variant (int8, int4, int2, SparseLoCo's sparse 2 bits) are
optimistic against float32 DiLoCo's by up to that factor in the bandwidth term (studies/README.md).
"""

from configs import study_fashion_mnist, study_lm, study_outer

MUON_TUNING_LEARNING_RATES = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1)
MUON_LEARNING_RATE = 0.001  # the `tuning` grid's best (module doc)
LM_MUON_LEARNING_RATE = 0.03  # the `lm_tuning` grid's best (module doc)
SPARSELOCO = {  # the paper's settings, as sync.sparseloco's defaults hold them
  "sync.strategy": "sparseloco",
  "sync.sparseloco.learning_rate": 1.0,
  "sync.sparseloco.fraction": 0.02,
  "sync.sparseloco.block_size": 4096,
  "sync.sparseloco.bits": 2,
  "sync.sparseloco.feedback_decay": 0.95,
}
MUON = {"optimizer.name": "muon"}
INT2 = {"sync.strategy": "outer", "sync.outer.optimizer": "nesterov", "sync.outer.compress": "int2"}
PERIODS = [16, 64]
SEEDS = [0, 1, 2, 3, 4]
LM_SEEDS = SEEDS  # 5, as on the images (configs/study_lm.py's grids ran 3)
TUNING_SEED = 100  # not one of the study's seeds


def muloco(learning_rate: float) -> dict:
  return dict(study_outer.tuned("diloco"), **MUON, **{"optimizer.learning_rate": learning_rate})


VARIANTS = {
  **{
    name: study_outer.VARIANTS[name] for name in ("average", "diloco", "diloco_int8", "diloco_int4")
  },
  "diloco_int2": study_outer.outer(compress="int2"),
  "sparseloco": dict(SPARSELOCO, **{"optimizer.learning_rate": study_outer.INNER}),
  "muloco": muloco(MUON_LEARNING_RATE),
  "muloco_int2": dict(
    study_outer.outer(compress="int2"), **MUON, **{"optimizer.learning_rate": MUON_LEARNING_RATE}
  ),
}


def lm_variants(muon_rate: float) -> dict:
  """The variants on configs/text_lm.py at configs/study_lm.py's tuned inner rates."""
  outer_rate = {"optimizer.learning_rate": study_lm.TUNED[study_lm.FAMILY["diloco"]]}
  muon = dict(MUON, **{"optimizer.learning_rate": muon_rate})
  return {
    **{
      name: study_lm.variant(name) for name in ("average", "diloco", "diloco_int8", "diloco_int4")
    },
    "diloco_int2": dict(INT2, **outer_rate),
    "sparseloco": dict(SPARSELOCO, **outer_rate),
    "muloco": dict(study_lm.STRATEGY["diloco"], **muon),
    "muloco_int2": dict(INT2, **muon),
    "average_muon": dict(study_lm.variant("average"), **muon),
  }


def get_config() -> dict:
  base = study_fashion_mnist.get_config()
  for grid in ("quick", "tuning", "tuned", "tuned_periods"):
    base.pop(grid)
  study = dict(
    base,
    variants=VARIANTS,
    periods=PERIODS,
    variant_periods={},
    num_particles=[8],
    seeds=SEEDS,
    evals=11,
    overrides={"train.eval_particles": False},  # the curves need the exported model only
    one_big_worker=False,
    reference=["diloco", "average"],
  )
  study["tuning"] = dict(
    study,
    variants={f"muloco_lr{lr}": muloco(lr) for lr in MUON_TUNING_LEARNING_RATES},
    periods=[16],
    seeds=[TUNING_SEED],
    evals=1,
    overrides={"data.validation_size": 5000},
    reference=None,
  )
  lm = study_lm.get_config()
  for grid in ("tuning", "workers"):
    lm.pop(grid)
  study["lm"] = dict(
    lm,
    variants=lm_variants(LM_MUON_LEARNING_RATE),
    periods=PERIODS,
    variant_periods={},
    seeds=LM_SEEDS,
    evals=8,
    reference=["diloco", "average", "muloco"],  # muloco: what 2 bits and the outer step cost it
  )
  study["lm_tuning"] = dict(
    study["lm"],
    variants={f"muloco_lr{lr}": lm_variants(lr)["muloco"] for lr in study_lm.TUNING_LEARNING_RATES},
    periods=[16],
    seeds=[TUNING_SEED],
    evals=1,
    reference=None,
  )
  return study

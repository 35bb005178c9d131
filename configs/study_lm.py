"""The sync methods on the language-model task (configs/text_lm.py: a byte-level transformer on
Debian's fortunes): a fixed token budget, the validation bits per byte at the end, and the time to
a target loss on the communication clock.

  python studies/study.py --study configs/study_lm.py --grid tuning \
      --out studies/results/study_lm_tuning       # inner learning rates, seed 100
  python studies/study.py --study configs/study_lm.py --grid outer_tuning \
      --out studies/results/study_lm_outer_tuning    # DiLoCo's outer rate, seed 100
  python studies/study.py --study configs/study_lm.py --out studies/results/study_lm
  python studies/study.py --study configs/study_lm.py --grid workers \
      --out studies/results/study_lm_workers      # M = 1, 2, 4 workers, the same tokens
  python studies/time_report.py studies/results/study_lm

Every cell sees the same tokens: TOTAL_STEPS local steps of batch 8 windows of 64 bytes for each of
8 workers (2.1M bytes, 0.86 of a pass over the 2.4M of training text), or with M workers 8 / M times
the steps each (`fixed_tokens`). The inner optimizer is AdamW with linear warmup and cosine decay
and gradient clipping at norm 1 (configs/text_lm.py); its peak learning rate is tuned per method
family (`tuning`: 5 values, period 16, 8 workers, on seed 100, which the study's seeds do not use).
The text has one held-out split, the validation split, which both the tuning and the reported
figures use: the tuning's seed differs, its split does not.

Variants (the outer step of diloco and its kin: learning rate 0.7, Nesterov momentum 0.9):
  ssgd                 data parallel: gradients all-reduced every step (only at period 16: the
                       period does not change it)
  average              parameter averaging (local SGD) every H steps
  diloco               the outer Nesterov step on the mean pseudo-gradient
  streaming            Streaming DiLoCo: 4 fragments, one synced per round, landing a round late,
                       mixed 0.5
  diloco_int8, diloco_int4
                       DiLoCo with its pseudo-gradients sent at 8 or 4 bits (absmax per block)
  pso                  PSO-PS, fitness by the probe loss
  median               the coordinate-wise median (robust_average), no outer step
at H = 16 and 64, and average and diloco also at 256 (2 syncs in the run). The `workers` grid runs
ssgd and diloco at H = 16 with M = 1, 2 and 4: does DiLoCo beat data parallel at M = 1 and lose
ground as M grows?
"""

TOTAL_STEPS = 512  # per worker at 8 workers
TUNING_LEARNING_RATES = (0.001, 0.003, 0.01, 0.03, 0.1)
# The best of TUNING_LEARNING_RATES on the validation split per family (grid `tuning`;
# docs/RESULTS.md gives its table): ssgd and its data-parallel kin; average, pso and median (no
# outer step); diloco and its kin (the outer Nesterov step).
TUNED = {"ssgd": 0.003, "average": 0.003, "diloco": 0.03}
# DiLoCo's outer learning rate besides the preset 0.7 (grid `outer_tuning`, seed 100): at the
# inner rate tuned for it and at data parallel's (with momentum 0.9; 1.0 without momentum is
# averaging).
OUTER_LEARNING_RATES = (0.1, 0.3)
FAMILY = {
  "ssgd": "ssgd",
  "average": "average",
  "pso": "average",
  "median": "average",
  "diloco": "diloco",
  "streaming": "diloco",
  "diloco_int8": "diloco",
  "diloco_int4": "diloco",
}
STRATEGY = {
  "ssgd": {"sync.strategy": "ssgd"},
  "average": {"sync.strategy": "average"},
  "diloco": {"sync.strategy": "diloco"},
  "streaming": {
    "sync.strategy": "streaming",
    "sync.streaming.fragments": 4,
    "sync.streaming.delay": 1,
    "sync.streaming.mix": 0.5,
  },
  **{
    f"diloco_{bits}": {
      "sync.strategy": "outer",
      "sync.outer.optimizer": "nesterov",
      "sync.outer.compress": bits,
    }
    for bits in ("int8", "int4")
  },
  "pso": {"sync.strategy": "pso"},
  "median": {"sync.strategy": "robust_average"},
}
PERIODS = {"ssgd": [16], "average": [16, 64, 256], "diloco": [16, 64, 256]}


def variant(name: str) -> dict:
  return dict(STRATEGY[name], **{"optimizer.learning_rate": TUNED[FAMILY[name]]})


def get_config() -> dict:
  study = {
    "base": "configs/text_lm.py",
    "variants": {name: variant(name) for name in STRATEGY},
    "periods": [16, 64, 256],
    "variant_periods": {name: PERIODS.get(name, [16, 64]) for name in STRATEGY},
    "num_particles": [8],
    "seeds": [0, 1, 2, 3, 4],
    "total_steps": TOTAL_STEPS,
    "fixed_tokens": 8,
    "evals": 4,
    "overrides": {},
    "one_big_worker": False,
    "reference": ["ssgd", "average", "diloco"],
  }
  study["tuning"] = dict(
    study,
    variants={
      f"{family}_lr{lr}": dict(STRATEGY[family], **{"optimizer.learning_rate": lr})
      for family in TUNED
      for lr in TUNING_LEARNING_RATES
    },
    periods=[16],
    variant_periods={},
    seeds=[100],
    reference=[],
  )
  study["outer_tuning"] = dict(
    study["tuning"],
    variants={
      f"diloco_outer{outer}_lr{lr}": dict(
        STRATEGY["diloco"],
        **{"sync.diloco.learning_rate": outer, "optimizer.learning_rate": lr},
      )
      for outer in OUTER_LEARNING_RATES
      for lr in (TUNED["ssgd"], TUNED["diloco"])
    },
  )
  study["workers"] = dict(
    study,
    variants={name: variant(name) for name in ("ssgd", "diloco")},
    periods=[16],
    variant_periods={},
    num_particles=[1, 2, 4],
    reference="ssgd",
  )
  return study

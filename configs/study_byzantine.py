"""Byzantine workers against every defence: does selecting by probe loss beat the best
coordinate-wise defence under "a little is enough" by more than the paired 95% interval?
Fashion-MNIST, LeNet-5, 8 workers, period 16, 704 local steps of batch 32, seeds 0-4, the test
accuracy at the end. Each scenario is a named sub-grid with its own output directory:

  python studies/study.py --study configs/study_byzantine.py --grid quick \
      --out studies/results/byzantine_alie_f2    # the headline first: alie, f = 2, seeds 0-2
  python studies/study.py --study configs/study_byzantine.py --grid alie_f2 \
      --out studies/results/byzantine_alie_f2    # the same directory: adds seeds 3 and 4
  python studies/study.py --study configs/study_byzantine.py --grid clip_tuning \
      --out studies/results/byzantine_clip_tuning
  python studies/study.py --study configs/study_byzantine.py --grid none \
      --out studies/results/byzantine_none       # and sign_flip_f1 ... alie_f1 alike

Scenarios (psops_jax/faults.py; the last f of the 8 workers attack at every sync from the first):
  none                  no fault: what each defence costs on clean runs
  sign_flip_f<f>        the attacker sends x0 - u (u its honest round update)
  scale_f<f>            x0 - 4 u (faults.scale -4: at f = 2 the mean's update turns around, at f = 1
                        it shrinks to 3/8)
  alie_f<f>             x0 + mu - z sigma, mu and sigma the honest updates' mean and standard
                        deviation per coordinate, z = 1 fixed: the paper's z_max(n, f) is 0 at
                        n = 8, f = 1 (the attack would send the honest mean) and 0.32 at f = 2
for f = 1 and 2; the top-level grid is alie_f2.

Defences (inner SGD at the tuned rates of configs/study_fashion_mnist.py: 0.025 without an outer
step, 0.0125 under the Nesterov outer step, learning rate 0.7, momentum 0.9):
  average, diloco       no defence (the mean), without and with the outer step
  median, trimmed       coordinate-wise median and trimmed mean (2 dropped at each end), no outer
                        step
  median_nesterov, trimmed_nesterov
                        the same aggregates of the pseudo-gradients under the Nesterov step
  centered_clip, centered_clip_nesterov
                        centered clipping (Karimireddy et al. 2021), one iteration from the round's
                        start at CLIP_TAU (per defence), without and with the outer step
  pso                   PSO-PS, fitness by the probe loss of the weights each worker sends
  topk6, topk6_nesterov the mean of the 6 best of 8 by probe loss, without and with the outer step
  fitness_weighted_t0.01
                        softmax(-probe loss / 0.01) weights under the outer step
The registry offers no Krum (psops_jax/sync/registry.py, AGGREGATES); best_pull keeps the mean in
its update, so it is no defence and is left out. The gap tables of each grid are to the mean
(`average`: what a defence gains over none) and to the four coordinate-wise defences, paired by
seed: a selecting defence beats the best of them when its gap's 95% interval lies above 0.

Cells: 12 defences x 7 scenarios x 5 seeds = 420, about 7-10.5 hours on a 2-core AMD EPYC (a
cell: 60-90 s), about 4.5-6.5 hours on a 2-core Intel Xeon (38-55 s a cell, its start included,
on the Intel hosts so far);
`quick`: 12 x 3 seeds = 36, 50-70 minutes (AMD EPYC), and its cells are alie_f2's. CLIP_TAU, the
clipping radius per defence, comes from `clip_tuning`: both centered-clipping defences at CLIP_TAUS
under alie_f2, seed 100, on a 5,000-example validation split (10 cells;
studies/results/byzantine_clip_tuning, AMD EPYC). Without the outer step the validation accuracy was
0.753, 0.844, 0.873, 0.873, 0.873 at tau 0.1, 0.3, 1, 3, 10 (at 3 and 10 nothing is clipped: the two
runs' weights are bit-identical; at 1 they differ, at the same accuracy; below 1 the clipping slows
training more than it stops the attack): tau 1, the smallest of the best; under the Nesterov step
0.857, 0.871, 0.856, 0.861, 0.861 (3 and 10 bit-identical again): tau 0.3. One seed: differences
under a point are within its noise.
"""

from configs import study_fashion_mnist, study_outer

CLIP_TAU = {"centered_clip": 1.0, "centered_clip_nesterov": 0.3}  # clip_tuning (module doc)
CLIP_TAUS = (0.1, 0.3, 1.0, 3.0, 10.0)
ATTACKS = {
  "sign_flip": {"faults.kind": "sign_flip"},
  "scale": {"faults.kind": "scale", "faults.scale": -4.0},
  "alie": {"faults.kind": "alie", "faults.z_rule": "fixed", "faults.z": 1.0},
}
FAULTY = (1, 2)  # f of the 8 workers
SCENARIOS = {
  "none": {},
  **{
    f"{attack}_f{f}": dict(fields, **{"faults.particles": f, "faults.step": 0})
    for attack, fields in ATTACKS.items()
    for f in FAULTY
  },
}
AVERAGING_RATE = {"optimizer.learning_rate": study_fashion_mnist.TUNED["average"]}


def centered_clip(tau: float) -> dict:
  return dict(
    AVERAGING_RATE,
    **{
      "sync.strategy": "outer",
      "sync.outer.optimizer": "none",
      "sync.outer.aggregate": "centered_clip",
      "sync.outer.clip_tau": tau,
    },
  )


def centered_clip_nesterov(tau: float) -> dict:
  return study_outer.outer(aggregate="centered_clip", clip_tau=tau)


VARIANTS = {
  **{name: study_outer.VARIANTS[name] for name in ("average", "diloco", "median")},
  "trimmed": dict(
    study_outer.VARIANTS["median"],
    **{"sync.robust.method": "trimmed_mean", "sync.robust.trim": 2},
  ),
  **{name: study_outer.VARIANTS[name] for name in ("median_nesterov", "trimmed_nesterov")},
  "centered_clip": centered_clip(CLIP_TAU["centered_clip"]),
  "centered_clip_nesterov": centered_clip_nesterov(CLIP_TAU["centered_clip_nesterov"]),
  "pso": study_outer.VARIANTS["pso"],
  "topk6": dict(AVERAGING_RATE, **{"sync.strategy": "topk_average", "sync.topk": 6}),
  **{name: study_outer.VARIANTS[name] for name in ("topk6_nesterov", "fitness_weighted_t0.01")},
}
COORDINATE_WISE = ["median", "trimmed", "median_nesterov", "trimmed_nesterov"]
QUICK_SEEDS = [0, 1, 2]
TUNING_SEED = 100  # not one of the study's seeds


def get_config() -> dict:
  base = study_fashion_mnist.get_config()
  for grid in ("quick", "tuning", "tuned", "tuned_periods"):
    base.pop(grid)
  base.update(
    variants=VARIANTS,
    periods=[16],
    num_particles=[8],
    seeds=study_outer.SEEDS,
    evals=1,  # the scenarios are compared by the final test accuracy
    one_big_worker=False,
    reference=["average"] + COORDINATE_WISE,
  )
  study = {name: dict(base, overrides=overrides) for name, overrides in SCENARIOS.items()}
  study["none"]["reference"] = ["average", "diloco"]  # what each defence costs without a fault
  study["quick"] = dict(study["alie_f2"], seeds=QUICK_SEEDS)
  study["clip_tuning"] = dict(
    study["alie_f2"],
    variants={
      f"{name}_tau{tau:g}": make(tau)
      for name, make in (
        ("centered_clip", centered_clip),
        ("centered_clip_nesterov", centered_clip_nesterov),
      )
      for tau in CLIP_TAUS
    },
    seeds=[TUNING_SEED],
    overrides=dict(study["alie_f2"]["overrides"], **{"data.validation_size": 5000}),
    reference=None,
  )
  study.update(study["alie_f2"])  # the top-level grid: the headline scenario
  return study

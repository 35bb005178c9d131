"""PSO-PS on scikit-learn's digits (8x8, shipped with scikit-learn: no download), 8 particles.

The default config: every field a run reads is set here; the other configs start from it.
  python train.py --config configs/digits_pso.py --workdir /tmp/digits_pso
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_particles = 8
  config.num_devices = 0  # devices the particles are spread over; 0: one per particle
  # (or the largest divisor of num_particles that exists)

  config.data = ml_collections.ConfigDict()
  config.data.name = "digits"  # digits | mnist | fashion_mnist | cifar10 (classification)
  # | text (language modelling: configs/text_lm.py)
  config.data.source = "sklearn"  # sklearn (digits) | files | tfds | synthetic (random
  # class-coloured images of the data set's shape); text: fortunes (Debian's package) | files
  # (a UTF-8 file or directory) | tfds | synthetic (sentences of a small vocabulary)
  config.data.synthetic_size = 0  # synthetic: training examples (0: the real set's size)
  config.data.dir = ""  # files: the directory of the files (text: or one file); tfds: data_dir;
  # fortunes: the fortune directory ("" = default)
  config.data.tfds_name = "tiny_shakespeare"  # text from tfds: the data set (its `text` feature)
  config.data.context = 64  # text: bytes a window holds (the model's context)
  config.data.validation_fraction = 0.05  # text: documents held out, the same for every seed
  config.data.eval_windows = 256  # text: validation windows evaluated
  config.data.validation_size = 0  # > 0: hold out this many training examples and evaluate on
  # them instead of the test split (for tuning)
  config.data.partition = "iid"  # iid | dirichlet: each particle's label mix ~ Dirichlet(alpha)
  # | contiguous: each particle a run of consecutive examples (text: of documents, non-IID)
  config.data.dirichlet_alpha = 1.0  # dirichlet: 0.1 nearly one class per particle, 100 ~ iid

  config.model = ml_collections.ConfigDict()
  config.model.name = "small_cnn"  # mlp | lenet5 | small_cnn | vgg_small | resnet20 (BatchNorm)
  # | transformer (text only)
  config.model.size = "tiny"  # transformer: tiny | small | medium | m35 | m150 (models.py)
  config.model.tie_embeddings = True  # transformer: logits through the token embedding
  config.model.dtype = "float32"  # float32 | bfloat16: the computation's dtype (mixed precision);
  # params, optimizer state and the sync stay float32
  config.model.conv = "lax"  # lax | im2col | im2col_input | auto (im2col on CPU, lax on GPU/TPU):
  # how the convolutions are computed (psops_jax/conv.py, im2col_input: im2col for the first one
  # only); the same parameters, equal to float tolerance.
  # lax stays the default: which one is faster depends on the CPU (benchmarks/README.md)

  # The inner optimizer of every particle (psops_jax/optimizers.py gives the math). The outer one,
  # where a strategy has one, is the strategy's: DiLoCo's Nesterov step (learning rate 0.7,
  # momentum 0.9) is the `diloco` strategy's default (sync.diloco.*); MuLoCo is muon under it.
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "sgd"  # sgd | adam | adamw | muon (Muon on the 2-D weights, AdamW on
  # the other leaves: biases, norm scales, convolution kernels, embedding tables)
  config.optimizer.learning_rate = 0.05  # the peak of the schedule (the MLP on digits trains
  # with adamw at 1e-3 and muon at 1e-2: tests/test_optimizers.py)
  config.optimizer.momentum = 0.9  # sgd: heavy-ball momentum in [0, 1) (0: plain SGD)
  config.optimizer.b1 = 0.9  # adam, adamw: first-moment decay; muon: its momentum too
  config.optimizer.b2 = 0.999  # adam, adamw, muon: second-moment decay
  config.optimizer.weight_decay = 1e-4  # adamw, muon: decoupled, x := x - lr (update + wd x)
  config.optimizer.schedule = "constant"  # constant | warmup_cosine: 0 -> learning_rate linearly
  # over warmup_steps, then a cosine down to final_fraction x learning_rate at the run's end
  # (local step train.rounds x sync.period)
  config.optimizer.warmup_steps = 0  # warmup_cosine: 0 .. train.rounds x sync.period - 1
  config.optimizer.final_fraction = 0.1  # warmup_cosine: in [0, 1]
  config.optimizer.clip_norm = 0.0  # > 0: gradients clipped to this global L2 norm (0: off)

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 32  # per particle
  config.train.rounds = 25  # total local steps per particle = rounds * sync.period
  config.train.log_every = 1  # rounds between lines of metrics.jsonl
  config.train.eval_every = 5  # rounds between test evaluations (0: only at the end)
  config.train.eval_particles = True  # evaluations before the last also test every particle and
  # the averaged weights (False: the exported model only, a tenth of the cost with 8 particles)
  config.train.loop = "auto"  # auto | unroll | scan: how a round's local steps are compiled
  config.train.max_unroll = 4  # unrolled rounds longer than this run as several calls of at
  # most this many steps (faster on CPU and compile time bounded:
  # benchmarks/results/max_unroll.json); 0: one call
  config.train.local_layout = "unroll"  # unroll | vmap: passes of several particles on one device
  config.train.init = "shared"  # shared | independent: initial weights of the particles
  config.train.checkpoint_every = 10  # rounds between checkpoints (and one at the end)
  config.train.keep_checkpoints = 3  # the last few kept
  config.train.allow_config_change = False  # resume a workdir whose run had another config

  # Faulty workers (a robustness scenario): the last `particles` particles are hit from the round
  # holding local step `step` on (psops_jax/faults.py).
  config.faults = ml_collections.ConfigDict()
  config.faults.kind = "none"  # none | nan (weights := NaN) | noise (weights := N(0, scale^2))
  # | lr (their updates scale x larger from then on); Byzantine workers, which at every sync send
  # crafted weights instead of x' (x0: the round's starting weights, u = x' - x0):
  # | sign_flip (x0 - u) | scale (x0 + scale * u) | alie (x0 + mu - z sigma, mu and sigma the
  # honest workers' mean and standard deviation of u per coordinate: Baruch et al. 2019)
  config.faults.particles = 1
  config.faults.step = 0  # the fault strikes at the start of the round holding this
  # local step (0-based): round step // sync.period
  config.faults.scale = 10.0  # noise: standard deviation; lr: the learning-rate factor; scale:
  # the factor s of the update (any sign, e.g. -4)
  config.faults.z = 1.0  # alie: standard deviations from the honest mean (z_rule fixed)
  config.faults.z_rule = "fixed"  # alie: fixed (faults.z) | paper (z_max(n, f) of Baruch et
  # al.: Phi^-1((n - s) / n), s = floor(n / 2 + 1) - f; 0 for 8 workers with 1 faulty)

  config.sync = ml_collections.ConfigDict()
  config.sync.strategy = "pso"  # pso | pso_average | average | ssgd | easgd | diloco | none
  # | best_pull | topk_average | robust_average | outer | streaming | sparseloco | gossip
  # (sync.strategy_names())
  config.sync.period = 8  # local steps between two synchronizations
  config.sync.pso = ml_collections.ConfigDict()
  # Defaults from measurements (the search over PSO-PS's options, configs/study_pso_variants.py; its
  # tables: docs/RESULTS.md at commit 0b3a7f5): bests forgotten each round and particles compared
  # on one common probe batch came closest to averaging.
  config.sync.pso.inertia = 0.0  # w
  config.sync.pso.cognitive = 0.0  # c1
  config.sync.pso.social = 1.0  # c2
  config.sync.pso.mean_pull = 0.5  # c3, used by pso_average only
  # fitness also ranks the particles for best_pull and topk_average
  config.sync.pso.fitness = "probe"  # probe (common batch of training data) | round_loss
  config.sync.pso.probe_size = 1024  # examples in the probe batch
  config.sync.pso.probe_resample = False  # True: a new probe batch every round (the same on every
  # particle), drawn from a pool of 8 x probe_size training examples
  config.sync.pso.memory = "round"  # round (bests forgotten every sync) | forever (textbook PSO)
  # | decay | reevaluate (f(p_i) measured again on the probe batch)
  config.sync.pso.memory_decay = 0.1  # decay: a remembered f(p_i) grows by this factor every sync
  config.sync.pso.random = "particle"  # r1, r2 drawn per particle | per coordinate | none (= 1)
  config.sync.pso.max_velocity_norm = 0.0  # clip ||v_i|| (global L2 norm) to this; 0: no clipping
  config.sync.pso.max_velocity_ratio = 0.0  # clip ||v_i|| to this times ||x_i||; 0: no clipping
  config.sync.pso.opt_state_on_move = (
    "keep"  # keep | reset | follow: the optimizer state (momentum)
  )
  # of a particle PSO moves: kept, zeroed, or moved like the weights
  config.sync.pso.schedule = "constant"  # constant | linear: w, c1, c2 go linearly from the values
  config.sync.pso.inertia_final = 0.0  # above to these *_final values over train.rounds syncs
  config.sync.pso.cognitive_final = 0.0
  config.sync.pso.social_final = 1.0
  config.sync.average_opt_state = False  # average: also average the optimizer state (momentum)
  config.sync.best_pull = 0.25  # best_pull: x_i := mean + best_pull * (best - mean)
  config.sync.topk = 4  # topk_average: x_i := mean of the topk best particles
  config.sync.robust = ml_collections.ConfigDict()
  config.sync.robust.method = "median"  # robust_average: median | trimmed_mean (coordinate-wise)
  config.sync.robust.trim = 1  # trimmed_mean: particles dropped at each end per coordinate
  config.sync.easgd = ml_collections.ConfigDict()
  config.sync.easgd.alpha = 0.1  # elastic strength; N * alpha <= 1
  config.sync.diloco = ml_collections.ConfigDict()
  config.sync.diloco.learning_rate = 0.7  # outer learning rate (1 with momentum 0 = average)
  config.sync.diloco.momentum = 0.9
  config.sync.diloco.nesterov = True
  # outer: a sync built from parts (psops_jax/sync/outer_sync.py); trim, k and pull come from
  # sync.robust.trim, sync.topk and sync.best_pull
  config.sync.outer = ml_collections.ConfigDict()
  config.sync.outer.aggregate = "mean"  # mean | median | trimmed_mean | topk | fitness_weighted
  # | best_pull | centered_clip
  config.sync.outer.optimizer = "nesterov"  # none (x := the aggregate) | sgd | nesterov | adam
  config.sync.outer.learning_rate = 0.7  # outer learning rate
  config.sync.outer.momentum = 0.9  # sgd / nesterov momentum
  config.sync.outer.compress = "none"  # none | bfloat16 | int8 | int4 | int2 | topk_fraction
  # | sparse_2bit: what each particle sends (its pseudo-gradient theta - x_i, quantized; int2,
  # topk_fraction and sparse_2bit keep what they drop and send it later: error feedback)
  config.sync.outer.block_size = 256  # int8 / int4 / int2: values per absmax scale; sparse_2bit:
  # values per top-k block (each with its scale)
  config.sync.outer.fraction = 0.1  # topk_fraction, sparse_2bit (per block): the share of values
  # sent
  config.sync.outer.bits = 2  # sparse_2bit: bits per value sent, 2 | 4 | 8 | 32 (unquantized)
  config.sync.outer.feedback_decay = 1.0  # int2 / topk_fraction / sparse_2bit: the error
  # feedback kept, e := feedback_decay * e + pseudo-gradient - sent (1: all of it)
  config.sync.outer.temperature = 1.0  # fitness_weighted: softmax(-fitness / temperature)
  # centered_clip (Karimireddy et al. 2021): v := v + mean_k clip(x_k - v), clip(u) = u min(1,
  # clip_tau / ||u||) (L2 norm of a worker's whole round update), clip_iterations times, from the
  # center (the round's starting weights: a zero pseudo-gradient)
  config.sync.outer.clip_tau = 1.0  # > 0 (inf: the mean)
  config.sync.outer.clip_iterations = 1  # >= 1, one all-reduce each
  # streaming: the outer sync of sync.outer's parts, one of `fragments` equal slices of the weights
  # per sync (each fragment every fragments * sync.period steps), its update applied `delay` syncs
  # later (overlapping the transfer with compute) and mixed: x := theta + mix * (x - theta)
  config.sync.streaming = ml_collections.ConfigDict()
  config.sync.streaming.fragments = 4
  config.sync.streaming.delay = 1  # 0..fragments syncs
  config.sync.streaming.mix = 0.5  # 0: take the new theta; 1: keep the local weights
  config.sync.streaming.eager = False  # True: when an update lands, each particle's own share of
  # it is replaced by its current pseudo-gradient (eager updates; needs sync.outer.aggregate=mean)
  # sparseloco: top-k per block of the error-feedback accumulator, values at 2 bits, outer SGD
  # without momentum: e := feedback_decay * e + (theta - x), theta -= learning_rate * mean(sent)
  config.sync.sparseloco = ml_collections.ConfigDict()
  config.sync.sparseloco.learning_rate = 1.0  # outer learning rate
  config.sync.sparseloco.fraction = 0.02  # share of each block's values sent
  config.sync.sparseloco.block_size = 4096  # values per top-k block (the paper's chunk)
  config.sync.sparseloco.bits = 2  # bits per value sent: 2 | 4 | 8 | 32 (unquantized)
  config.sync.sparseloco.feedback_decay = 0.95  # the error feedback kept at each sync (beta)
  # gossip: each particle averages its weights with `peers` others drawn at random every sync,
  # point to point (no all-reduce): x_i := (x_i + sum of the peers' x) / (peers + 1)
  config.sync.gossip = ml_collections.ConfigDict()
  config.sync.gossip.peers = 1  # 1..num_particles - 1 (num_particles - 1: the mean)
  return config

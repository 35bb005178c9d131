"""Samples per second of the project's round against the number of devices.

The framework's round (PSO-PS sync) with one particle per device on 1, 2, 4, 8 devices, and with
--particles particles (8) packed on 1, 2, 4 devices, against the plain-JAX floor of one particle on
one device (`common.build_floor`, the unrolled round), all in interleaved repetitions (a new random
order each time; 7 with --quick, 21 without) after two warm-up rounds. On CPU the devices are
virtual (threads of this process sharing the machine's cores): the plot also shows the cores the
process kept busy (CPU seconds / wall seconds) and the compile seconds of each round.

  python benchmarks/scaling.py --quick                  # small CNN, period 8
  python benchmarks/scaling.py --model lenet5 --period 16

Writes benchmarks/results/scaling.json and scaling.png beside it (--out) with the command, machine
and load. The last printed line is one JSON object (scaling_samples_per_second,
floor_samples_per_second, config, machine).
"""

import os

from benchmarks import common, harness

DEVICE_COUNTS = (1, 2, 4, 8)


def cells(particles: int, device_counts: list) -> list:
  """(particles, devices) of every round timed: one particle per device, then `particles` packed
  on each smaller device count that divides them."""
  return [(d, d) for d in device_counts] + [
    (particles, d) for d in device_counts if d < particles and particles % d == 0
  ]


def build(args, device_counts: list) -> tuple:
  """The rounds of `cells` and the floor. Returns (runners, {name: (particles, devices, compile
  seconds)})."""
  runners, info = {}, {}
  for particles, devices in cells(args.particles, device_counts):
    name = f"{particles}on{devices}"
    runners[name], built = common.build_round(
      args.model,
      particles,
      devices,
      args.period,
      args.batch_size,
      "pso",
      args.train_size // particles,
      fitness=args.fitness,
      max_unroll=args.max_unroll,
    )
    info[name] = (particles, devices, built["compile_seconds"])
    print(f"  compiled {particles} particles on {devices} devices: {built['compile_seconds']} s")
  shard_size = args.train_size // args.particles  # the floor: one particle's run
  config = common.run_config(args.model, 1, 1, args.period, args.batch_size, "pso", shard_size)
  floor, _, _ = common.build_floor(*common.floor_parts(config), args.period, args.batch_size)
  runners["floor"] = floor["unrolled/slice"]
  return runners, info


def row(timing: dict, particles: int, period: int, batch_size: int, floor_seconds=None) -> dict:
  """Samples/s, ms per particle-step, cores kept busy (and the paired ratio to the floor)."""
  seconds = timing["seconds"]
  result = {
    "samples_per_second": harness.spread(
      [common.samples(particles, period, batch_size) / s for s in seconds]
    ),
    "ms_per_particle_step": harness.spread([1000 * s / (particles * period) for s in seconds]),
    "cpu_over_wall": timing["cpu_over_wall"],
  }
  if floor_seconds is not None:  # samples/s of the round over the floor's (1 particle)
    result["vs_floor"] = harness.paired_ratio([particles * f for f in floor_seconds], seconds)
  return result


def rows(timed: dict, info: dict, args) -> tuple:
  """One row per round (one particle per device first, by device count) and the floor's."""
  floor_seconds = timed["floor"]["seconds"]
  table = []
  for name, (particles, devices, compile_seconds) in info.items():
    r = row(timed[name], particles, args.period, args.batch_size, floor_seconds)
    table.append(
      {
        "particles": particles,
        "devices": devices,
        "particles_per_device": particles // devices,
        **r,
        "compile_seconds": compile_seconds,
      }
    )
  table.sort(key=lambda r: (r["particles"] != r["devices"], r["devices"]))
  return table, row(timed["floor"], 1, args.period, args.batch_size)


def table_lines(table: list, floor: dict) -> list:
  """The printed report: one line per round, then the floor."""
  lines = [
    f"{'particles':>9} {'devices':>7} {'per dev':>7} {'samples/s':>10} {'[min, max]':>17} "
    f"{'ms/particle-step':>16} {'vs floor':>8} {'cores':>5} {'compile s':>9}"
  ]
  for r in table + [dict(floor, label="floor: plain JAX, 1 dev")]:
    s = r["samples_per_second"]
    head = r.get("label") or f"{r['particles']:9d} {r['devices']:7d} {r['particles_per_device']:7d}"
    vs_floor = r["vs_floor"]["median"] if "vs_floor" in r else 1.0
    compiled = f"{r['compile_seconds']:9.2f}" if "compile_seconds" in r else ""
    lines.append(
      f"{head:25} {s['median']:10.0f} [{s['min']:7.0f}, {s['max']:7.0f}] "
      f"{r['ms_per_particle_step']['median']:16.3f} {vs_floor:8.2f} {r['cpu_over_wall']:5.2f} "
      f"{compiled}".rstrip()
    )
  return lines


def plot(table: list, floor: dict, args, png: str) -> None:
  """Three panels against the device count: samples/s (median, min-max bars) with the floor, cores
  kept busy, compile seconds; one line for one particle per device, one for --particles packed."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.5))
  by_devices = lambda rs: sorted(rs, key=lambda r: r["devices"])
  series = {
    "one particle per device (N = devices)": by_devices(
      [r for r in table if r["particles"] == r["devices"]]
    ),
    f"{args.particles} particles on the devices": by_devices(
      [r for r in table if r["particles"] == args.particles]
    ),
  }
  for (label, rs), marker in zip(series.items(), ("o", "s")):
    xs = [r["devices"] for r in rs]
    med = [r["samples_per_second"]["median"] for r in rs]
    err = [
      [m - r["samples_per_second"]["min"] for m, r in zip(med, rs)],
      [r["samples_per_second"]["max"] - m for m, r in zip(med, rs)],
    ]
    ax.errorbar(xs, med, yerr=err, marker=marker, capsize=3, label=label)
    ax2.plot(xs, [r["cpu_over_wall"] for r in rs], marker=marker, label=label)
    ax3.plot(xs, [r["compile_seconds"] for r in rs], marker=marker, label=label)
  floor_sps = floor["samples_per_second"]["median"]
  ax.axhline(floor_sps, color="gray", ls="--", label="floor: 1 particle, plain JAX, 1 device")
  ax.axhline(2 * floor_sps, color="gray", ls=":", label="2 x floor (both cores, perfectly used)")
  ax2.axhline(floor["cpu_over_wall"], color="gray", ls="--", label="floor")
  ax2.axhline(os.cpu_count(), color="black", lw=0.8, label=f"{os.cpu_count()} cores")
  for a in (ax, ax2, ax3):
    a.set_xscale("log", base=2)
    a.set_xticks(list(DEVICE_COUNTS))
    a.set_xticklabels([str(d) for d in DEVICE_COUNTS])
    a.set_xlabel("virtual CPU devices (all share the machine's cores)")
    a.grid(alpha=0.3)
  ax.set_ylim(bottom=0)
  ax.set_ylabel("samples / s (median, bars: min-max)")
  ax.set_title(
    f"{args.model}: framework round (PSO-PS), period {args.period}, batch {args.batch_size}",
    fontsize=10,
  )
  ax.legend(fontsize=8, loc="lower right")
  ax2.set_ylabel("process CPU s / wall s (median)")
  ax2.set_ylim(0, os.cpu_count() + 0.5)
  ax2.set_title("cores kept busy during the round", fontsize=10)
  ax2.legend(fontsize=8, loc="lower right")
  ax3.set_ylabel("compile seconds")
  ax3.set_ylim(bottom=0)
  ax3.set_title("compile time of the round", fontsize=10)
  ax3.legend(fontsize=8)
  load = ", ".join(f"{x:.1f}" for x in harness.load_average())
  fig.suptitle(
    f"{os.cpu_count()} CPU cores shared by all virtual devices; {args.reps} interleaved "
    f"repetitions; load average at the end {load} (other processes on the machine)",
    fontsize=9,
  )
  fig.tight_layout()
  fig.savefig(png, dpi=110)


def main():
  parser = common.round_parser(__doc__, reps=(21, 7), devices=False)
  args = common.start(parser, "scaling", host_devices=max(DEVICE_COUNTS))
  import jax

  device_counts = [d for d in DEVICE_COUNTS if d <= len(jax.devices())]
  runners, info = build(args, device_counts)
  timed = harness.measure(runners, args.reps, warmup=2, seed=0)
  table, floor = rows(timed, info, args)
  lines = table_lines(table, floor)
  print("\n".join(lines), flush=True)
  out = args.out or os.path.join(harness.RESULTS, "scaling.json")
  png = os.path.splitext(out)[0] + ".png"
  plot(table, floor, args, png)
  summary = {
    "scaling_samples_per_second": {
      f"{r['particles']}on{r['devices']}": r["samples_per_second"]["median"] for r in table
    },
    "floor_samples_per_second": floor["samples_per_second"]["median"],
    "config": common.round_config(args),
  }
  details = {"rows": table, "floor": floor, "plot": os.path.relpath(png), "table": lines}
  harness.publish(out, summary, details)


if __name__ == "__main__":
  main()

"""Scale-out: throughput with K = 1, 2, 4 ... nodes and sleep-bound steps, against K x C / (4 x D).

Run from the repository root, for example::

    python -m benchmarks.scale --nodes 1,2,4 --step-seconds 0.5
    python -m benchmarks.scale --nodes 1,2,4 --step-seconds 0.5 --orders 1600 --json

For each K it runs one ``benchmarks.throughput`` measurement (its own nats-server, K node
processes, failure rate 0, N orders submitted at once through ``Intake``; the window runs from
the first submit to the last ``complete_time``), then prints a table of K, the theoretical
limit, the measured orders/s and their ratio, and plots them to ``benchmarks/scale.png``
(matplotlib, from the optional extra: ``pip install -e '.[bench]'``).

Without ``--orders``, each K gets a whole number of rounds (every slot busy once per round)
lasting about 15 s, so no K is measured with a half-empty last round.

Choose D so that steps, not CPU, bound the run: every node, the nats-server and the load
generator share the machine's cores, and K x C / (4 x D) orders/s cost CPU in each of them
(with D = 0.5 s and C = 50, K = 4 is 100 orders/s). The table shows the cores they used and
what else kept the machine busy.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any, Final

import msgspec

from benchmarks import throughput
from benchmarks.common import wait_for_quiet
from nodeapp.core.errors import OrderflowError

DEFAULT_PLOT: Final = Path(__file__).with_name("scale.png")


class Options(msgspec.Struct, frozen=True, kw_only=True):
    nodes: list[int]
    step_seconds: float
    orders: int | None
    concurrency: int
    seed: int
    plot: Path | None
    wait_quiet: float
    json: bool


class Row(msgspec.Struct, kw_only=True):
    """One K's measurement; times in seconds."""

    nodes: int
    orders: int
    rounds: float
    theoretical_per_s: float
    orders_per_s: float
    utilization: float
    window_seconds: float
    latency_p50: float
    latency_p99: float
    node_cores: float
    server_cores: float
    other_cores: float
    cpus: int


def measure(opts: Options, k: int) -> Row:
    """One throughput run with K nodes (failure rate 0, so every order runs all four steps)."""
    argv = ["--nodes", str(k), "--step-seconds", str(opts.step_seconds)]
    argv += ["--concurrency", str(opts.concurrency), "--failure-rate", "0"]
    argv += ["--seed", str(opts.seed), "--wait-quiet", str(opts.wait_quiet)]
    if opts.orders is not None:
        argv += ["--orders", str(opts.orders)]
    run = throughput.parse_args(argv)
    if run.wait_quiet > 0:
        wait_for_quiet(run.wait_quiet)
    r = throughput.run_cleanly(run)
    assert r.theoretical_per_s is not None  # D > 0
    assert r.utilization is not None
    cores = r.cpu_cores
    return Row(
        nodes=k,
        orders=r.completed + r.failed,
        rounds=run.orders / (k * opts.concurrency),
        theoretical_per_s=r.theoretical_per_s,
        orders_per_s=r.orders_per_s,
        utilization=r.utilization,
        window_seconds=r.window_seconds,
        latency_p50=r.latency_p50,
        latency_p99=r.latency_p99,
        node_cores=sum(v for name, v in cores.items() if name.startswith("node-")),
        server_cores=cores.get("nats-server", 0.0),
        other_cores=r.other_cores,
        cpus=r.cpus,
    )


def table(rows: list[Row], opts: Options) -> str:
    head = (
        f"orderflow scale-out: D={opts.step_seconds:g}s, C={opts.concurrency}, failure rate 0, "
        f"{rows[0].cpus if rows else '?'} CPUs shared by every process"
    )
    lines = [
        head,
        "    K   orders  rounds  theoretical/s  measured/s  utilization  window  "
        "p50 lat  p99 lat  node cores  server cores  elsewhere",
    ]
    for r in rows:
        lines.append(
            f"  {r.nodes:3d}  {r.orders:7d}  {r.rounds:6.1f}  {r.theoretical_per_s:13.1f}  "
            f"{r.orders_per_s:10.1f}  {r.utilization:11.3f}  {r.window_seconds:5.1f}s  "
            f"{r.latency_p50:6.2f}s  {r.latency_p99:6.2f}s  {r.node_cores:10.2f}  "
            f"{r.server_cores:12.2f}  {r.other_cores:9.2f}"
        )
    lines.append("  theoretical = K x C / (4 x D); utilization = measured / theoretical")
    return "\n".join(lines)


def plot(rows: list[Row], opts: Options, path: Path) -> None:
    """Measured and theoretical orders/s against K, utilization on a second axis."""
    matplotlib: Any = importlib.import_module("matplotlib")  # optional: the ``bench`` extra
    matplotlib.use("Agg")
    pyplot: Any = importlib.import_module("matplotlib.pyplot")
    ks = [r.nodes for r in rows]
    fig, ax = pyplot.subplots(figsize=(6.4, 4.2), dpi=120)
    ax.plot(ks, [r.theoretical_per_s for r in rows], "--", color="grey", label="K x C / (4 x D)")
    ax.plot(ks, [r.orders_per_s for r in rows], "o-", color="tab:blue", label="measured")
    ax.set_xlabel("nodes K")
    ax.set_ylabel("orders/s")
    ax.set_xticks(ks)
    ax.set_ylim(bottom=0)
    util = ax.twinx()
    util.plot(ks, [r.utilization for r in rows], "s:", color="tab:orange", label="utilization")
    util.axhline(0.9, color="tab:orange", linewidth=0.5, label="utilization 0.9")
    util.set_ylim(0, 1.05)
    util.set_ylabel("utilization (measured / theoretical)")
    handles, labels = ax.get_legend_handles_labels()
    more_handles, more_labels = util.get_legend_handles_labels()
    # On the twin axes, which are drawn last, so no line crosses the legend.
    util.legend(handles + more_handles, labels + more_labels, loc="lower right")
    ax.set_title(
        f"orderflow scale-out, D={opts.step_seconds:g}s, C={opts.concurrency}, "
        f"{rows[0].cpus} CPUs shared"
    )
    fig.tight_layout()
    fig.savefig(path)
    pyplot.close(fig)


def parse_args(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.scale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--nodes", default="1,2,4", help="node counts, comma-separated (1,2,4)")
    p.add_argument("--step-seconds", type=float, default=0.5, help="step duration D (0.5)")
    p.add_argument("--orders", type=int, default=None, help="orders per K (default ~15 s)")
    p.add_argument("--concurrency", type=int, default=50, help="orders in flight per node C")
    p.add_argument("--seed", type=int, default=1, help="random seed of the order bodies")
    p.add_argument("--plot", type=Path, default=DEFAULT_PLOT, help=f"PNG ({DEFAULT_PLOT.name})")
    p.add_argument("--no-plot", action="store_true", help="print the table only")
    p.add_argument("--wait-quiet", type=float, default=0.0, help="wait for an idle machine")
    p.add_argument("--json", action="store_true", help="also print one JSON line per K")
    a = p.parse_args(argv)
    try:
        nodes = [int(k) for k in a.nodes.split(",") if k.strip()]
    except ValueError:
        p.error(f"--nodes: not a list of integers: {a.nodes!r}")
    if not nodes or min(nodes) < 1 or a.step_seconds <= 0:
        p.error("--nodes needs counts >= 1 and --step-seconds must be > 0")
    return Options(
        nodes=nodes,
        step_seconds=a.step_seconds,
        orders=a.orders,
        concurrency=a.concurrency,
        seed=a.seed,
        plot=None if a.no_plot else a.plot,
        wait_quiet=a.wait_quiet,
        json=a.json,
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    rows: list[Row] = []
    try:
        for k in opts.nodes:
            print(f"K={k} ...", file=sys.stderr, flush=True)
            rows.append(measure(opts, k))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (OrderflowError, TimeoutError) as exc:
        print(f"scale run failed: {exc!r}", file=sys.stderr)
        return 1
    print(table(rows, opts))
    if opts.json:
        for row in rows:
            print(msgspec.json.encode(row).decode())
    if opts.plot is not None:
        try:
            plot(rows, opts, opts.plot)
        except ImportError:
            print("no plot: matplotlib missing (pip install -e '.[bench]')", file=sys.stderr)
            return 1
        print(f"plot written to {opts.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

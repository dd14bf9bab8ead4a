"""How fast can a simulated cabinet with riders run? `python -m tukar_tools.bench_riders` runs one
cabinet of 12 slots with `--riders` (in this process, on a broker it starts) at each speed asked, for
a fixed real time each, and prints per speed: the simulated time covered, the CPU it took, the
control ticks run against those due, how late they ran (simulated ms: a lock's confirmation has
500 ms, so a tick more than ~200 ms late risks a `lock_jam`), the faults the cabinet raised, and
what the riders got done. A speed is reliable when no fault was raised, every rider who started a
swap finished it, and the ticks kept up.

    python -m tukar_tools.bench_riders --speeds 10,20,40,80 --seconds 60"""
import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time

from tukar_tools import broker as brokers
from tukar_tools import riders, sim

import hosttime  # noqa: E402  (sim put the shim on the path)


def run_one(host, port, speed, seconds, rate, start, seed=1, physics_ms=None, max_step_ms=None,
            profile=None):
    state = tempfile.mkdtemp(prefix="tukar-bench-riders-")
    old = sim.PHYSICS_MS, sim.MAX_STEP_MS
    sim.PHYSICS_MS = physics_ms or old[0]
    sim.MAX_STEP_MS = max_step_ms or old[1]
    try:
        s = sim.Simulation(host, port, prefix="br%d" % (int(time.monotonic() * 1000) % 10 ** 6),
                           cabinets=1, slots=12, state_dir=state, speed=speed, seed=seed, fill=10,
                           start=start)
        s.riders = riders.Riders(s, rate, seed, 0, state)

        async def main():
            until = asyncio.Event()
            asyncio.get_running_loop().call_later(seconds, until.set)
            await s.run(until)

        cpu0, t0, sim0 = time.process_time(), time.monotonic(), hosttime.current().now_ms()
        if profile:
            import cProfile
            cProfile.runctx("asyncio.run(main())", globals(), {"asyncio": asyncio, "main": main},
                            profile)
        else:
            asyncio.run(main())
        cpu, real = time.process_time() - cpu0, time.monotonic() - t0
        sim_s = (hosttime.current().now_ms() - sim0) / 1000
        lag = s.lag_report()
        t = s.riders.ledger.totals()
        app = s.cabinets[0].app
        tick_ms = app.core.cfg["tick_ms"] if app is not None else 50
        return {"speed": speed, "real_s": round(real, 1), "sim_s": round(sim_s),
                "boots": s.cabinets[0].boots,
                "reconnects": (app.link.bdseq - 1) % 256 if app is not None else None,
                "effective_speed": round(sim_s / real, 1), "held_s": round(lag["held_ms"] / 1000),
                "cpu_per_sim_h": round(cpu / sim_s * 3600, 1),
                "ticks": lag["ticks"], "ticks_due": int(sim_s * 1000 / tick_ms),
                "late_ge100": lag["late_ge100"], "worst_late_ms": lag["worst_ms"],
                "physics_worst_ms": lag["physics_worst_ms"],
                "arrivals": t["arrivals"], "swaps": t["swaps"],
                "turned_away": sum(t["turned_away"].values()), "rejected": sum(t["rejected"].values()),
                "aborted": t["aborted"], "incomplete": t["incomplete"], "faults": t["faults"]}
    finally:
        sim.PHYSICS_MS, sim.MAX_STEP_MS = old
        shutil.rmtree(state, ignore_errors=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speeds", default="10,20,40,80", help="comma-separated --speed values")
    ap.add_argument("--seconds", type=float, default=60, help="real seconds per speed (60)")
    ap.add_argument("--rate", type=float, default=30, help="--riders RATE (30 an hour)")
    ap.add_argument("--start", default="2026-03-02T06:00:00Z",
                    help="the cabinet's date at the start (the morning peak follows)")
    ap.add_argument("--physics-ms", type=int, help="the world's physics step (default %d)"
                    % sim.PHYSICS_MS)
    ap.add_argument("--max-step-ms", type=int, help="how far the clock may run past the world's "
                    "last step (default %d)" % sim.MAX_STEP_MS)
    ap.add_argument("--profile", help="write a cProfile of each run to PROFILE.<speed>")
    args = ap.parse_args(argv)
    start = riders.parse_start(args.start)[0]
    b = brokers.start()
    print("broker: %s on port %d; 1 cabinet of 12 slots, riders %g an hour from %s, %g s a speed"
          % (b.kind, b.port, args.rate, args.start, args.seconds), file=sys.stderr)
    try:
        for sp in (float(x) for x in args.speeds.split(",")):
            prof = "%s.%g" % (args.profile, sp) if args.profile else None
            r = run_one("127.0.0.1", b.port, sp, args.seconds, args.rate, start,
                        physics_ms=args.physics_ms, max_step_ms=args.max_step_ms, profile=prof)
            print(json.dumps(r), flush=True)
    finally:
        b.stop()


if __name__ == "__main__":
    main()

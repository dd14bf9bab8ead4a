"""Scale of the simulator: N cabinets of 12 slots in one process at speed 1, each running the
whole firmware application over the chip models, with the control-tick lateness they see.

    python -m tukar_tools.bench_sim --cabinets 50 --seconds 30
"""
import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time

from tukar_tools import broker, sim


WARMUP_S = 5.0  # boots, identification and the first publishes are not the steady state


def measure(cabinets=50, seconds=30.0, fill=6):
    b = broker.start()
    try:
        with tempfile.TemporaryDirectory(prefix="tukar-scale-") as state:
            s = sim.Simulation("127.0.0.1", b.port, prefix="scale", cabinets=cabinets, slots=12,
                               state_dir=state, speed=1.0, fill=fill)

            marks = {}

            def start_measuring():
                for cab in s.cabinets:
                    cab.app.lag_hist = [0] * len(cab.app.lag_hist)
                    cab.app.tick_lag_ms = 0
                    cab.app.ticks = 0
                s.lag_ms = 0
                marks["cpu"] = time.process_time()
                marks["wall"] = time.monotonic()

            async def main():
                until = asyncio.Event()
                loop = asyncio.get_running_loop()
                loop.call_later(WARMUP_S, start_measuring)
                loop.call_later(WARMUP_S + seconds, until.set)
                await s.run(until)
            asyncio.run(main())
            cpu = time.process_time() - marks["cpu"]
            wall = time.monotonic() - marks["wall"]
            r = s.lag_report()
    finally:
        b.stop()
    r["seconds"] = round(wall, 1)
    r["expected_ticks"] = int(cabinets * seconds * 1000 / 50)
    r["cpu_share"] = round(cpu / wall, 2)
    r["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return r


def print_report(r):
    print("Simulator scale: %d cabinets x 12 slots, one process, speed 1, %.0f s after %.0f s warm-up"
          % (r["cabinets"], r["seconds"], WARMUP_S))
    print("  control ticks run: %d of %d scheduled (%.1f %%)" % (
        r["ticks"], r["expected_ticks"], 100 * r["ticks"] / max(1, r["expected_ticks"])))
    print("  tick lateness: < 5 ms %d, < 20 ms %d, < 50 ms %d, < 100 ms %d, more %d; worst %d ms" % (
        r["late_lt5"], r["late_lt20"], r["late_lt50"], r["late_lt100"], r["late_ge100"],
        r["worst_ms"]))
    print("  CPU: %.0f %% of one core; peak memory %d MB" % (100 * r["cpu_share"], r["max_rss_mb"]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cabinets", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    r = measure(a.cabinets, a.seconds)
    print(json.dumps(r, indent=2)) if a.json else print_report(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())

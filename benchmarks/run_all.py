"""Run every benchmarks/bench_*.py in turn, each with its default arguments (`make bench`).

Each script runs in its own process with this Python; a failing one is reported and the rest
still run. Exit status: the number of scripts that failed.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    scripts = sorted(Path(__file__).resolve().parent.glob("bench_*.py"))
    failed = []
    for script in scripts:
        print(f"\n######## {script.name}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(script)])
        print(f"######## {script.name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {time.perf_counter() - t0:.0f} s",
              flush=True)
        if rc:
            failed.append(script.name)
    print(f"\n{len(scripts) - len(failed)}/{len(scripts)} benchmarks succeeded" + (f"; failed: {failed}" if failed else ""))
    return len(failed)


if __name__ == "__main__":
    sys.exit(main())

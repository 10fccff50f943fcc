"""Fuzz benchmark of the inventory and playbook loaders: hostile files from ``tests/fuzz_inputs.py``.

Runs ``--cases N`` cases (default 10,000) drawn by hypothesis from the example inventory and the
shipped playbooks, each loaded the way ``drctl validate`` loads it. Allowed outcomes: a valid
model, or a ConfigError whose every problem names the file and a line; anything else counts as
``other_errors`` and is printed to stderr (the exit code is then 1).

The last line on stdout is one JSON object: ``cases``, ``valid``, ``config_errors``,
``other_errors``, ``max_ms`` (slowest load, plain run), ``max_peak_mb`` (largest tracemalloc peak
of one load; each case is loaded a second time under tracemalloc, ``--no-trace`` skips that),
``process_rss_growth_mb`` (the process's peak RSS above its RSS before the first case: an upper
bound that also holds hypothesis's own bookkeeping of every case drawn, some 80 MB at 10,000
cases) and ``seconds``.
``--seed S`` picks another reproducible run.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, given, seed, settings  # noqa: E402

from tests.fuzz_inputs import Case, cases, check, example_inventory  # noqa: E402


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(n: int, seed_value: int, trace: bool) -> dict[str, Any]:
    inventory = example_inventory()
    stats: dict[str, Any] = {"cases": 0, "valid": 0, "config_errors": 0, "other_errors": 0,
                             "max_ms": 0.0, "max_peak_mb": 0.0}
    names = {"valid": "valid", "config_error": "config_errors", "other": "other_errors"}
    with tempfile.TemporaryDirectory(prefix="drctl-fuzz-") as tmp:
        base_rss = _rss_mb()
        start = time.monotonic()

        @seed(seed_value)
        @settings(max_examples=n, deadline=None, database=None, derandomize=False,
                  suppress_health_check=list(HealthCheck))
        @given(case=cases())
        def one(case: Case) -> None:
            outcome = check(case, Path(tmp), inventory, trace_memory=trace)
            stats["cases"] += 1
            stats[names[outcome.kind]] += 1
            stats["max_ms"] = max(stats["max_ms"], outcome.ms)
            stats["max_peak_mb"] = max(stats["max_peak_mb"], outcome.peak_mb)
            if outcome.kind == "other" and stats["other_errors"] <= 5:
                print(f"--- {case.base}: {outcome.detail}\n{case.data[:3000]!r}", file=sys.stderr)
            if stats["cases"] % 1000 == 0:
                print(f"{stats['cases']} cases, {time.monotonic() - start:.0f}s", file=sys.stderr)

        one()
        stats["process_rss_growth_mb"] = round(_rss_mb() - base_rss, 1)
        stats["seconds"] = round(time.monotonic() - start, 1)
    stats["max_ms"] = round(stats["max_ms"], 1)
    stats["max_peak_mb"] = round(stats["max_peak_mb"], 2)
    return stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cases", type=int, default=10_000, help="how many cases (default 10,000)")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed (default 0)")
    parser.add_argument("--no-trace", action="store_true", help="do not measure each load's memory with tracemalloc")
    args = parser.parse_args()
    stats = run(args.cases, args.seed, not args.no_trace)
    print(json.dumps(stats))
    return 1 if stats["other_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

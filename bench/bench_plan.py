"""How honest the plan is: on the lab, the plan's expected duration against the real run that
follows it, for a whole-site failover, over several rounds (the first plan has no measured run to
learn from; the following ones learn from the run before). Prints one JSON line."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drctl.lab.lab import lab_down, lab_up  # noqa: E402
from tests.e2e.helpers import drctl  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="drctl-bench-plan-") as tmp:
        lab = lab_up(Path(tmp) / "lab")
        state, other = Path(tmp) / "state", Path(tmp) / "other"
        rows = []
        try:
            for _ in range(args.rounds):
                plan = drctl("plan", "failover", "--site", "dc1", "--json", inventory=lab.inventory,
                             state_dir=state).json()
                run = drctl("failover", "--site", "dc1", "--yes", "--json", inventory=lab.inventory,
                            state_dir=state).json()
                rows.append({"expected_s": plan["expected_duration_s"], "real_s": run["elapsed_s"],
                             "learned": bool(plan["timings_from"])})
                drctl("failback", "--site", "dc1", "--yes", inventory=lab.inventory, state_dir=other)
        finally:
            lab_down(lab.dir)
    learned = [r["expected_s"] / r["real_s"] for r in rows if r["learned"]]
    print(json.dumps({"bench": "plan", "rounds": rows,
                      "first_ratio": round(rows[0]["expected_s"] / rows[0]["real_s"], 2),
                      "learned_ratio_median": round(statistics.median(learned), 2) if learned else None,
                      "learned_within_30pct": sum(0.7 <= r <= 1.3 for r in learned), "learned_rounds": len(learned)}))


if __name__ == "__main__":
    main()

"""Failover speed on the local lab: N services moved dc1 -> dc2 and back, for real.

Prints wall time per run, the gate's share, SSH logins per host (one connection per host is
reused by every step of a run), and DNS UPDATEs sent (SOA serial delta). Last line: one JSON
object. Usage: python bench/bench_failover.py [--services N] [--etcd] (--etcd: locks and journals
in the lab's 3-member etcd cluster instead of the state directory)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from drctl.lab.lab import lab_down, lab_up


def logins(lab_json: Path) -> dict[str, int]:
    state = json.loads(lab_json.read_text())
    return {p["name"]: Path(p["log"]).read_text(errors="replace").count("Accepted publickey")
            for p in state["processes"] if p["name"].startswith("ssh-")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--services", type=int, default=40, help="extra services besides the lab's three")
    ap.add_argument("--etcd", action="store_true", help="keep locks and journals in the lab's etcd cluster")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="drctl-bench-") as tmp:
        lab = lab_up(Path(tmp) / "lab", etcd=args.etcd)
        try:
            inv = yaml.safe_load(lab.inventory.read_text())
            web = inv["services"]["web"]
            adds: dict[str, list[str]] = {"example.test": [], "internal.test": []}
            for i in range(args.services):
                name = f"svc{i:03d}"
                zone = ("example.test", "internal.test")[i % 2]
                inv["services"][name] = {
                    "primary": "dc1", "backup": "dc2",
                    "sites": {s: {"backup": web["sites"][s]["backup"]} for s in ("dc1", "dc2")},
                    "dns": [{"zone": zone, "name": name, "type": "A", "ttl": 30,
                             "values": {"dc1": f"192.0.2.{100 + i % 100}", "dc2": f"198.51.100.{100 + i % 100}"}}],
                }
                adds[zone].append(f"update add {name}.{zone}. 30 A 192.0.2.{100 + i % 100}")
            nsupdate = [f"server 127.0.0.1 {lab.ports['named-ns1']}"]
            for zone, lines in adds.items():  # one UPDATE per zone
                nsupdate += [f"zone {zone}", *lines, "send"]
            subprocess.run(["nsupdate", "-k", str(lab.tsig_key)], input="\n".join(nsupdate) + "\n", text=True,
                           check=True, timeout=30)
            inventory = lab.dir / "bench-inventory.yaml"
            inventory.write_text(yaml.safe_dump(inv, sort_keys=False))
            env_state = str(Path(tmp) / "state")
            serials0 = (lab.soa_serial("example.test"), lab.soa_serial("internal.test"))
            logins0 = logins(lab.dir / "lab.json")
            figures: dict[str, float | int | str] = {"services": len(inv["services"]),
                                                     "state": "etcd" if args.etcd else "dir"}
            for op in ("failover", "failback"):
                t0 = time.perf_counter()
                done = subprocess.run([sys.executable, "-m", "drctl", op, "--site", "dc1", "--yes", "--json",
                                       "-i", str(inventory), "--state-dir", env_state],
                                      capture_output=True, text=True, timeout=600)
                wall = time.perf_counter() - t0
                if done.returncode != 0:
                    print(done.stderr, file=sys.stderr)
                    raise SystemExit(f"{op} failed with exit {done.returncode}")
                result = json.loads(done.stdout)
                gate = [a for a in result["actions"] if a["kind"] in ("check_freshness", "health_check")
                        and a["started"] <= min(x["started"] for x in result["actions"] if x["kind"] == "flip_dns")]
                gate_s = max(a["finished"] for a in gate) - result["started"] if gate else 0.0
                figures[f"{op}_wall_s"] = round(wall, 3)
                figures[f"{op}_engine_s"] = round(result["elapsed_s"], 3)
                figures[f"{op}_gate_s"] = round(gate_s, 3)
                print(f"{op}: {len(result['services'])} services in {wall:.2f}s wall "
                      f"(engine {result['elapsed_s']:.2f}s, gate {gate_s:.2f}s)")
            serials1 = (lab.soa_serial("example.test"), lab.soa_serial("internal.test"))
            logins1 = logins(lab.dir / "lab.json")
            figures["dns_updates"] = sum(b - a for a, b in zip(serials0, serials1, strict=True))
            figures["ssh_logins"] = sum(logins1[k] - logins0.get(k, 0) for k in logins1)
            print(f"DNS UPDATEs: {figures['dns_updates']} for 2 runs; SSH logins: {figures['ssh_logins']} "
                  f"for 2 runs over {len(logins1)} hosts")
            print(json.dumps(figures))
        finally:
            lab_down(lab.dir)


if __name__ == "__main__":
    main()

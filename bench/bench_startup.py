"""Start-up cost: ``drctl --help`` and ``drctl validate`` of a generated 1,000-service inventory.

Each command is run as a whole process, as users run it (the installed ``drctl`` entry point next
to this interpreter, and ``python -m drctl``), ``--runs`` times (default 15) after one warm-up run;
medians are reported, with the interpreter alone (``python -c pass``) and the import of the CLI
(``python -c "import drctl.cli.app"``) for scale. The inventory: 20 hosts in two sites, two zones,
one load balancer, 1,000 services in dependency chains, each with backups, health checks and a DNS
record, every fifth behind HAProxy and every fifth (+1) steered by commands. Figures go to stderr;
the last line on stdout is one JSON object. Usage: python bench/bench_startup.py [--runs N]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

HELP_TARGET_S = 0.12
VALIDATE_TARGET_S = 1.0


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def inventory(dir: Path, n: int, variant: str) -> Path:
    """``n`` services. ``rich``: with the optional fields written out (descriptions, targets, health
    timeouts, globs, TTLs, types); ``lean``: only what each service needs, checks at both sites;
    ``minimal``: checks (backup, health) at the backup site only."""
    rich = variant == "rich"
    dir.mkdir(parents=True, exist_ok=True)
    keys = dir / "keys"
    keys.mkdir(exist_ok=True)
    (keys / "id_ed25519").write_text("not read by validate\n")
    (keys / "known_hosts").write_text("")
    secret = base64.b64encode(os.urandom(32)).decode()
    (keys / "tsig.key").write_text(f'key "bench" {{\n\talgorithm hmac-sha256;\n\tsecret "{secret}";\n}};\n')
    hosts = {site: [f"{site}-h{k}" for k in range(10)] for site in ("dc1", "dc2")}
    sites = {site: {"hosts": {h: {"address": f"10.{1 + i // 10}.0.{10 + i % 10}", "user": "drctl",
                                  "key": "keys/id_ed25519", "known_hosts": "keys/known_hosts",
                                  "connect_timeout": "3s"} for i, h in enumerate(hs, start=10 * (site == "dc2"))}}
             for site, hs in hosts.items()}
    services: dict[str, Any] = {}
    for i in range(n):
        name = f"svc{i:04d}"
        host = {site: hosts[site][i % 10] for site in hosts}
        svc: dict[str, Any] = {
            "primary": "dc1", "backup": "dc2",
            "sites": {site: {"backup": {"host": host[site], "path": f"/srv/backups/{name}", "max_age": "1h"},
                             "health": {"http": f"http://10.{1 if site == 'dc1' else 2}.0.{10 + i % 10}:8080/health"}}
                      for site in hosts if variant != "minimal" or site == "dc2"},
            "dns": [{"zone": ("example.test", "internal.test")[i % 2], "name": name,
                     "values": {"dc1": f"192.0.2.{1 + i % 250}", "dc2": f"198.51.100.{1 + i % 250}"}}],
        }
        if rich:
            svc.update(description=f"service {i}", rto="5m", rpo="1h")
            for site in hosts:
                svc["sites"][site]["backup"]["glob"] = "*.tar.gz"
                svc["sites"][site]["health"].update(timeout="2s", retries=2, interval="500ms")
            svc["dns"][0].update(type="A", ttl=60)
        if i % 10:
            svc["depends_on"] = [f"svc{i - 1:04d}"]
        if i % 5 == 0:
            svc["traffic"] = {"kind": "haproxy", "balancer": "lb1", "backend": f"be{i:04d}",
                              "servers": {"dc1": "dc1", "dc2": "dc2"}}
        elif i % 5 == 1:
            svc["traffic"] = {"kind": "command",
                              "activate": {"dc2": {"host": host["dc2"], "argv": ["sudo", "promote", name]}},
                              "deactivate": {"dc1": {"host": host["dc1"], "argv": ["sudo", "demote", name]}}}
        services[name] = svc
    doc = {"version": 1, "name": "bench-1000", "sites": sites,
           "dns_servers": {"ns1": {"address": "10.0.0.53"}, "ns2": {"address": "10.0.1.53"}},
           "zones": {z: {"primary": "ns1", "servers": ["ns2"], "tsig": {"file": "keys/tsig.key"}}
                     for z in ("example.test", "internal.test")},
           "load_balancers": {"lb1": {"admin": "tcp://10.0.0.80:9999", "timeout": "3s"}},
           "services": services}
    path = dir / "inventory.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def values(path: Path) -> int:
    """How many values (scalars, lists, mappings) a YAML file holds: what drctl's loader bounds."""
    return sum(1 for e in yaml.parse(path.read_text(), Loader=getattr(yaml, "CLoader", yaml.Loader))
               if isinstance(e, yaml.ScalarEvent | yaml.SequenceStartEvent | yaml.MappingStartEvent))


def timed(argv: list[str], env: dict[str, str], runs: int) -> tuple[list[float], int, str]:
    """Wall seconds of each run (after one warm-up), the largest peak RSS of one run (KiB), the
    last run's output."""
    out = ""
    times = []
    rss = 0
    for i in range(runs + 1):
        with tempfile.TemporaryFile() as fh:
            t0 = time.perf_counter()
            proc = subprocess.Popen(argv, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            _pid, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t0
            fh.seek(0)
            out = fh.read().decode(errors="replace")
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{argv} exited {os.waitstatus_to_exitcode(status)}: {out[-2000:]}")
        rss = max(rss, usage.ru_maxrss)
        if i:
            times.append(wall)
    return times, rss, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=15, help="timed runs of each command (median reported)")
    ap.add_argument("--services", type=int, default=1000)
    args = ap.parse_args()
    py = sys.executable
    entry = Path(py).with_name("drctl")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRCTL_")}
    env.update(NO_COLOR="1", COLUMNS="120")
    work = Path(tempfile.mkdtemp(prefix="drctl-bench-startup-"))
    result: dict[str, Any] = {"runs": args.runs, "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    try:
        # the richest of these that drctl's input bounds accept is the one timed
        variants = {v: inventory(work / v, args.services, v) for v in ("rich", "lean", "minimal")}
        inv = variants["minimal"]
        validate = [py, "-m", "drctl", "validate"] if not entry.exists() else [str(entry), "validate"]
        result["inventories"] = {}
        for label, path in variants.items():
            once = subprocess.run([*validate, "-i", str(path)], env=env, capture_output=True, text=True, check=False)
            accepted = once.returncode == 0
            result["inventories"][label] = {"values": values(path), "bytes": path.stat().st_size,
                                            "accepted": accepted}
            if not accepted:
                result["inventories"][label]["refused"] = " ".join((once.stdout + once.stderr).split())[-240:]
            say(f"{label} inventory: {args.services} services, {path.stat().st_size / 1e6:.2f} MB of YAML, "
                f"{result['inventories'][label]['values']} values: "
                + ("accepted" if accepted else f"REFUSED (exit {once.returncode}): "
                   f"{result['inventories'][label]['refused']}"))
            if accepted and inv is variants["minimal"]:
                inv = path
        result["validated_inventory"] = inv.parent.name
        commands = {
            "python_s": [py, "-c", "pass"],
            "import_cli_s": [py, "-c", "import drctl.cli.app"],
            "help_module_s": [py, "-m", "drctl", "--help"],
            "validate_module_s": [py, "-m", "drctl", "validate", "-i", str(inv)],
        }
        if entry.exists():
            commands["help_s"] = [str(entry), "--help"]
            commands["validate_s"] = [str(entry), "validate", "-i", str(inv)]
        else:
            commands["help_s"] = commands.pop("help_module_s")
            commands["validate_s"] = commands.pop("validate_module_s")
        for key, argv in commands.items():
            times, rss, out = timed(argv, env, args.runs)
            result[key] = round(statistics.median(times), 3)
            result[key.replace("_s", "_min_s")] = round(min(times), 3)
            if key.startswith("validate"):
                result["validate_peak_rss_mb"] = round(rss / 1024, 1)
                if f"{args.services} services" not in out:
                    raise SystemExit(f"validate did not report {args.services} services: {out[-500:]}")
            say(f"{' '.join(Path(a).name if a.startswith('/') else a for a in argv)[:60]:60s} "
                f"median {result[key] * 1000:6.0f} ms (min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f})")
        result.update(services=args.services, help_target_s=HELP_TARGET_S, help_met=result["help_s"] <= HELP_TARGET_S,
                      validate_target_s=VALIDATE_TARGET_S,
                      validate_met=result["validate_s"] <= VALIDATE_TARGET_S)
        say(f"drctl --help: {result['help_s'] * 1000:.0f} ms (target {HELP_TARGET_S * 1000:.0f} ms: "
            f"{'met' if result['help_met'] else 'NOT met'}); validate of {args.services} services: "
            f"{result['validate_s']:.2f} s (target {VALIDATE_TARGET_S:g} s: "
            f"{'met' if result['validate_met'] else 'NOT met'})")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

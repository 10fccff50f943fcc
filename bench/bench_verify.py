"""Benchmark of ``drctl verify``: file trees against ``rsync -rcn``, and a 1e6-row table.

Builds, on a lab host (a real sshd on 127.0.0.1, both sites' trees on it), about 2,000 files /
1 GB per side, identical, then times in one run:

- ``drctl verify --full``: both trees hashed on the host at the same time, no cache used;
- ``drctl verify`` again, unchanged: the hosts' manifest caches answer;
- ``rsync -rcn --delete -i`` from the primary tree to the backup tree over the same SSH endpoint
  (checksums every file on both sides: what an operator would run by hand);

with the peak RSS of the drctl process and of the hashing program on the host. Then two real
PostgreSQL clusters each get the same 1e6-row table and ``drctl verify`` compares it (per side:
row count plus checksum inside the database). Last, a large tree (``--big-gb``, default 10 GiB in
``--big-files`` 20,000 files per side; ``--big-gb 0`` skips it): ``drctl verify --full`` against an
unchanged re-verify, where the start-up costs are small against the data. Free disk space is
checked first (``df``): when both sides would not fit, the JSON says so and that part is skipped;
the large trees are deleted afterwards.

Figures go to stderr as they come; the last line on stdout is one JSON object. Run it with
``make bench-verify``; options: ``--files N --mb M --rows R --keep`` (keep the data directory).
Files written less than 2 s before a run are hashed again by the next one (the cache does not
trust a change within the filesystem's timestamp granularity), so the data is left to settle
for that long before the first run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from drctl.lab.postgres import PostgresCluster, cluster_base_dir  # noqa: E402
from drctl.lab.servers import SshServer  # noqa: E402


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_tree(root: Path, files: int, total_mb: int, seed: int = 7,
               block: bytes | None = None) -> tuple[int, int]:
    """``files`` files of random sizes (mean total_mb/files) in 40 directories, random content
    (real data, no holes: slices of one random block, each file with its own header, so files
    differ). The same ``seed`` and ``block`` give the same tree."""
    rng = random.Random(seed)
    mean = total_mb * 1024 * 1024 // files
    block = block or os.urandom(4 * 1024 * 1024)
    total = 0
    for i in range(files):
        size = rng.randint(1, 2 * mean)
        d = root / f"d{i % 40:02d}"
        d.mkdir(parents=True, exist_ok=True)
        off = rng.randrange(0, len(block) - 1)
        header = f"file {i}\n".encode()
        body = (block[off:] + block) * (size // len(block) + 1)
        (d / f"f{i:05d}.bin").write_bytes((header + body)[:size])
        total += size
    return files, total


def run_measured(argv: list[str], env: dict[str, str]) -> tuple[float, int, str, str]:
    """Run a command; (wall seconds, its peak RSS in KiB, stdout, stderr)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        _pid, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode not in (0, 6):
        raise RuntimeError(f"{argv} exited {proc.returncode}: {stderr[-2000:]}")
    return elapsed, usage.ru_maxrss, stdout, stderr


def one_side_alone(inventory: Path, root: Path) -> float:
    """Seconds to hash one side's tree (--full) over SSH with nothing else running: what each side
    takes when primary and backup are separate machines."""
    from drctl.drivers.integrity import FileHasher
    from drctl.drivers.ssh import SSHPool
    from drctl.model.integrity import FilesTarget
    from drctl.model.load import load_inventory

    inv = load_inventory(inventory)
    target = inv.services["files"].integrity[0]
    assert isinstance(target, FilesTarget)
    with SSHPool(inv.all_hosts(), base_dir=inv.base_dir, ssh_config=None, user_known_hosts=None,
                 use_agent=False) as pool:
        pool.reachable("app1")
        started = time.perf_counter()
        with FileHasher(pool).open("app1", str(root), target, full=True, algorithm=target.algorithm,
                                   include=target.include, exclude=target.exclude) as ms:
            n = sum(1 for _ in ms.entries())
        elapsed = time.perf_counter() - started
    assert n > 0
    return elapsed


def side_alone(cluster: PostgresCluster) -> float:
    """Seconds for one side's checksum transaction (what drctl sends), run alone."""
    from drctl.drivers.integrity import sums_sql
    from drctl.model.integrity import PostgresTarget

    target = PostgresTarget.model_validate({"kind": "postgres", "name": "db", "tables": ["public.bench"],
                                            "sites": {}})
    started = time.perf_counter()
    out = cluster.sql(sums_sql(target, 600))
    elapsed = time.perf_counter() - started
    assert '"S"' in out, out
    return elapsed


BIG_TARGET = 20.0  # an unchanged re-verify of the large tree: at least this many times faster than a full one


def big_tree(work: Path, host: dict[str, Any], env: dict[str, str], gib: int, files: int,
             rounds: int) -> dict[str, Any]:
    """``gib`` GiB in ``files`` files per side: ``drctl verify --full`` against an unchanged
    re-verify (the hosts' manifest caches answer). Skipped, saying why, without the disk space."""
    need = 2 * gib * 1024**3 * 1.02 + 2 * 1024**3  # both sides, and room to spare
    free = shutil.disk_usage(work).free
    say(f"large tree: {gib} GiB in {files} files per side; {free / 1024**3:.0f} GiB free in {work}")
    if free < need:
        say(f"large tree: skipped, it needs {need / 1024**3:.0f} GiB free")
        return {"big_skipped": f"{free / 1024**3:.1f} GiB free in {work}, {need / 1024**3:.1f} GiB needed"}
    big = work / "big"
    primary, backup = big / "primary", big / "backup"
    try:
        t = time.perf_counter()
        block = os.urandom(4 * 1024 * 1024)
        n, total = build_tree(primary, files, gib * 1024, seed=11, block=block)
        build_tree(backup, files, gib * 1024, seed=11, block=block)
        os.sync()
        say(f"large tree: built {n} files, {total / 1e9:.2f} GB per side in {time.perf_counter() - t:.0f}s")
        inventory = big / "inventory.yaml"
        inventory.write_text(yaml.safe_dump({
            "sites": {"dc1": {"hosts": {"app1": host}}, "dc2": {"hosts": {"app2": host}}},
            "services": {"big": {"primary": "dc1", "backup": "dc2", "integrity": [{
                "kind": "files", "name": "tree", "cache_dir": str(big / "cache"),
                "sites": {"dc1": {"host": "app1", "path": str(primary)}, "dc2": {"host": "app2", "path": str(backup)}},
            }]}}}))
        drctl = [sys.executable, "-m", "drctl", "verify", "big", "-i", str(inventory), "--json"]
        time.sleep(2.1)  # past the cache's timestamp-granularity guard
        full, again = [], []
        for rnd in range(rounds):
            full_s, rss_full, out, _ = run_measured([*drctl, "--full"], env)
            doc = json.loads(out)
            assert doc["ok"], "the copies should be identical"
            tree = doc["services"][0]["targets"][0]
            again_s, _, out, _ = run_measured(drctl, env)
            doc2 = json.loads(out)
            tree2 = doc2["services"][0]["targets"][0]
            assert tree2["primary"]["hashed"] == 0 and tree2["backup"]["hashed"] == 0, "the cache should answer"
            full.append((full_s, doc["services"][0]["elapsed_s"], rss_full,
                         max(tree["primary"]["remote_elapsed_s"], tree["backup"]["remote_elapsed_s"])))
            again.append((again_s, doc2["services"][0]["elapsed_s"],
                          max(tree2["primary"]["remote_elapsed_s"], tree2["backup"]["remote_elapsed_s"])))
            say(f"large tree, round {rnd + 1}: verify --full {full_s:6.2f}s (hashing on the host {full[-1][3]:.2f}s), "
                f"unchanged {again_s:5.2f}s (on the host {again[-1][2]:.2f}s): {full_s / again_s:.1f}x")
        full_s, again_s = min(f[0] for f in full), min(a[0] for a in again)
        speedup = full_s / again_s
        say(f"large tree: best full {full_s:.2f}s, unchanged {again_s:.2f}s: {speedup:.1f}x "
            f"(target {BIG_TARGET:g}x: {'met' if speedup >= BIG_TARGET else 'NOT met'})")
        return {"big_files": n, "big_bytes": total, "big_verify_full_s": round(full_s, 3),
                "big_verify_again_s": round(again_s, 3), "big_again_speedup": round(speedup, 1),
                "big_speedup_per_round": [round(f[0] / a[0], 1) for f, a in zip(full, again, strict=True)],
                "big_verify_full_in_drctl_s": round(min(f[1] for f in full), 3),
                "big_verify_again_in_drctl_s": round(min(a[1] for a in again), 3),
                "big_full_host_hashing_s": round(min(f[3] for f in full), 3),
                "big_again_host_s": round(min(a[2] for a in again), 3),
                "big_peak_rss_mb": round(max(f[2] for f in full) / 1024, 1), "big_rounds": rounds,
                "big_target_speedup": BIG_TARGET, "big_met": speedup >= BIG_TARGET}
    finally:
        shutil.rmtree(big, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--mb", type=int, default=1024, help="total size of one side's tree, in MiB")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3, help="measurements of each kind; the best is reported")
    ap.add_argument("--keep", action="store_true", help="keep the data directory")
    ap.add_argument("--big-gb", type=int, default=10, help="size of one side of the large tree, in GiB (0: skip)")
    ap.add_argument("--big-files", type=int, default=20000)
    ap.add_argument("--big-rounds", type=int, default=2)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="drctl-bench-verify-"))
    sshd = SshServer(work / "sshd")
    clusters: list[PostgresCluster] = []
    pg_base: Path | None = None
    result: dict[str, Any] = {}
    try:
        sshd.start()
        primary, backup = work / "primary", work / "backup"
        t = time.perf_counter()
        files, total = build_tree(primary, args.files, args.mb)
        subprocess.run(["cp", "-a", str(primary), str(backup)], check=True)
        os.sync()  # no writeback competing with the measurements
        say(f"built {files} files, {total / 1e9:.2f} GB per side in {time.perf_counter() - t:.1f}s")
        host = {"address": "127.0.0.1", "port": sshd.port, "user": sshd.user, "key": str(sshd.client_key),
                "known_hosts": str(sshd.known_hosts)}
        services: dict[str, Any] = {"files": {"primary": "dc1", "backup": "dc2", "integrity": [{
            "kind": "files", "name": "tree", "cache_dir": str(work / "cache"),
            "sites": {"dc1": {"host": "app1", "path": str(primary)}, "dc2": {"host": "app2", "path": str(backup)}},
        }]}}
        inventory = work / "inventory.yaml"

        def write_inventory() -> None:
            inventory.write_text(yaml.safe_dump({"sites": {"dc1": {"hosts": {"app1": host}},
                                                           "dc2": {"hosts": {"app2": host}}},
                                                 "services": services}))

        write_inventory()
        env = {k: v for k, v in os.environ.items() if not k.startswith("DRCTL_")}
        env.update(DRCTL_STATE_DIR=str(work / "state"), DRCTL_INVENTORY=str(inventory), NO_COLOR="1")
        drctl = [sys.executable, "-m", "drctl", "verify"]
        time.sleep(2.1)  # let the files settle past the cache's timestamp-granularity guard

        ssh = (f"ssh -p {sshd.port} -i {sshd.client_key} -o UserKnownHostsFile={sshd.known_hosts} "
               "-o StrictHostKeyChecking=yes -o BatchMode=yes -o IdentitiesOnly=yes")
        rsync_argv = ["rsync", "-rcn", "--delete", "-i", "-e", ssh, f"{primary}/", f"{sshd.user}@127.0.0.1:{backup}/"]
        full, again, rsync = [], [], []
        rss = remote_rss = 0
        for rnd in range(args.rounds):  # interleaved rounds; the best of each is reported
            full_s, rss_full, out, _ = run_measured([*drctl, "files", "--full", "--json"], env)
            doc = json.loads(out)
            assert doc["ok"], "the copies should be identical"
            tree = doc["services"][0]["targets"][0]
            full.append((full_s, doc["services"][0]["elapsed_s"]))
            again_s, rss_again, out, _ = run_measured([*drctl, "files", "--json"], env)
            doc2 = json.loads(out)
            tree2 = doc2["services"][0]["targets"][0]
            assert tree2["primary"]["hashed"] == 0 and tree2["backup"]["hashed"] == 0, "the cache should answer"
            again.append((again_s, doc2["services"][0]["elapsed_s"]))
            rsync_s, _, rsync_out, _ = run_measured(rsync_argv, env)
            assert not rsync_out.strip(), rsync_out[:500]
            rsync.append(rsync_s)
            rss = max(rss, rss_full, rss_again)
            remote_rss = max(remote_rss, tree["primary"].get("remote_peak_rss_kb") or 0,
                             tree["backup"].get("remote_peak_rss_kb") or 0)
            say(f"round {rnd + 1}: verify --full {full_s:5.2f}s (in drctl {full[-1][1]:.2f}s; hashing on the host "
                f"{tree['primary']['remote_elapsed_s']:.2f}s / {tree['backup']['remote_elapsed_s']:.2f}s), "
                f"verify unchanged {again_s:5.2f}s (in drctl {again[-1][1]:.3f}s, {tree2['backup']['cached']} files "
                f"from the cache), rsync -rcn {rsync_s:5.2f}s")
        alone = min(one_side_alone(inventory, primary) for _ in range(args.rounds))
        say(f"one side alone (hashing the primary's tree over SSH, nothing else running): {alone:.2f}s")
        full_s, full_in = min(w for w, _ in full), min(i for _, i in full)
        again_s, again_in = min(w for w, _ in again), min(i for _, i in again)
        rsync_s = min(rsync)
        say(f"best: drctl verify --full {full_s:.2f}s, unchanged {again_s:.2f}s ({full_s / again_s:.1f}x; inside "
            f"drctl {full_in:.2f}s vs {again_in:.3f}s = {full_in / again_in:.1f}x), rsync -rcn --delete -i "
            f"{rsync_s:.2f}s; peak RSS drctl {rss / 1024:.0f} MiB, hashing program {remote_rss / 1024:.0f} MiB")
        result = {
            "files": files, "bytes": total, "verify_full_s": round(full_s, 3), "verify_again_s": round(again_s, 3),
            "rsync_s": round(rsync_s, 3), "peak_rss_mb": round(rss / 1024, 1),
            "host_hasher_peak_rss_mb": round(remote_rss / 1024, 1),
            "verify_full_in_drctl_s": round(full_in, 3), "verify_again_in_drctl_s": round(again_in, 3),
            "full_vs_rsync": round(full_s / rsync_s, 2), "again_speedup": round(full_s / again_s, 1),
            "again_speedup_in_drctl": round(full_in / again_in, 1), "one_side_alone_s": round(alone, 3),
            "rounds": args.rounds,
        }

        # PostgreSQL: the same 1e6-row table on two clusters
        pg_base = cluster_base_dir("drctl-bench-pg-")
        clusters = [PostgresCluster(pg_base / "primary", name="pg-primary"),
                    PostgresCluster(pg_base / "backup", name="pg-backup")]
        for c in clusters:
            c.start()
        t = time.perf_counter()
        for c in clusters:
            c.sql("CREATE TABLE bench (id bigint PRIMARY KEY, payload text, n integer, at timestamptz); "
                  f"INSERT INTO bench SELECT g, md5(g::text) || md5((g * 7)::text), g % 1000, "
                  f"timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second' "
                  f"FROM generate_series(1, {args.rows}) g; VACUUM ANALYZE bench;", timeout=600)
        say(f"loaded {args.rows} rows into each cluster in {time.perf_counter() - t:.1f}s")
        services["db"] = {"primary": "dc1", "backup": "dc2", "integrity": [{
            "kind": "postgres", "name": "db", "tables": ["public.bench"],
            "sites": {"dc1": {"host": "app1", "conninfo": clusters[0].conninfo()},
                      "dc2": {"conninfo": clusters[1].conninfo()}},
        }]}
        write_inventory()
        run_measured([*drctl, "db", "--json"], env)  # warm the clusters' buffers once
        runs = []
        for _ in range(args.rounds):
            pg_s, _, out, _ = run_measured([*drctl, "db", "--json"], env)
            db = json.loads(out)["services"][0]["targets"][0]
            assert db["ok"], db
            runs.append((pg_s, db["primary"]["elapsed_s"], db["backup"]["elapsed_s"]))
        pg_s, p_side, b_side = min(runs)
        say(f"drctl verify ({args.rows} rows): {pg_s:.2f}s, both sides at once on this host: primary (psql over "
            f"ssh) {p_side:.2f}s, backup (local psql) {b_side:.2f}s")
        alone = [min(side_alone(c) for _ in range(args.rounds)) for c in clusters]
        say(f"one side alone (same SQL through psql): primary {alone[0]:.2f}s, backup {alone[1]:.2f}s")
        changed_id = 654321 if args.rows > 654321 else args.rows // 2 + 1
        clusters[1].sql(f"UPDATE bench SET n = n + 1 WHERE id = {changed_id}")
        pg_diff_s, _, out, _ = run_measured([*drctl, "db", "--json"], env)
        table = json.loads(out)["services"][0]["targets"][0]["tables"][0]
        say(f"drctl verify, one row changed: {pg_diff_s:6.2f}s  (ranges {table['ranges']}, "
            f"changed {table['changed']})")
        result.update({"pg_rows": args.rows, "pg_verify_s": round(pg_s, 3),
                       "pg_primary_side_s": p_side, "pg_backup_side_s": b_side,
                       "pg_side_alone_s": round(max(alone), 3), "pg_one_row_changed_s": round(pg_diff_s, 3)})
        if args.big_gb > 0:
            result.update(big_tree(work, host, env, args.big_gb, args.big_files, args.big_rounds))
    finally:
        for c in clusters:
            c.stop()
        sshd.stop()
        if pg_base is not None:
            shutil.rmtree(pg_base, ignore_errors=True)
        if args.keep:
            say(f"data kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

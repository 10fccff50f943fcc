"""Secrets never leave their source: passwords planted in the lab's inventory (health URLs with
userinfo, a token in a query, a HAProxy frontend URL, a command's environment assignment) are
used for real, and appear in no output: not on stdout or stderr (tables, progress, --json,
--debug), not in the journal, drill records, baselines or locks under the state directory, not in
the reports and metrics files written with options. A connection string holding a password,
however it is written, is refused when the inventory is validated."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from drctl.lab.lab import LabInfo
from tests.e2e.helpers import Result, drctl, only_run_id

HEALTH_PW = "S3cr3tPW1"
QUERY_TOKEN = "QueryTok7"
FRONTEND_PW = "FrontPW2"
COMMAND_PW = "CmdPW3"
PG_ENCODED_PW = "PgPW4"
PG_QUOTED_PW = "Pg PW5"


def secrets_inventory(lab: LabInfo) -> Path:
    """The lab's inventory with secrets planted where operators put them."""
    data = yaml.safe_load(lab.inventory.read_text())
    web, api, db = (data["services"][s] for s in ("web", "api", "db"))
    for site in ("dc1", "dc2"):
        port = lab.ports[f"origin-web-{site}"]
        web["sites"][site]["health"]["http"] = f"http://druser:{HEALTH_PW}@127.0.0.1:{port}/health"
        port = lab.ports[f"origin-api-{site}"]
        api["sites"][site]["health"]["http"] = f"http://127.0.0.1:{port}/health?token={QUERY_TOKEN}"
    web["traffic"]["frontend"] = f"http://fe:{FRONTEND_PW}@127.0.0.1:{lab.frontends['web']}/health"
    for site, spec in db["traffic"]["activate"].items():  # `touch MARKER`, with a secret in its environment
        marker = spec["argv"][-1]
        spec["argv"] = ["sh", "-c", 'touch "$1"', f"PGPASSWORD={COMMAND_PW}", marker]
        db["traffic"]["activate"][site] = spec
    path = lab.dir / "inventory-secrets.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def conninfo_inventory(lab: LabInfo, name: str, conninfo: str) -> Path:
    """The lab's inventory with a PostgreSQL integrity target whose conninfo holds a password."""
    data = yaml.safe_load(lab.inventory.read_text())
    data["services"]["db"]["integrity"] = [{"kind": "postgres", "name": "main", "sites": {
        "dc1": {"host": "app1", "conninfo": "dbname=app"},
        "dc2": {"host": "app2", "conninfo": conninfo}}}]
    path = lab.dir / f"inventory-{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def tsig_secret(lab: LabInfo) -> str:
    m = re.search(r'secret\s+"([^"]+)"', lab.tsig_key.read_text())
    assert m, "the lab's TSIG key file has no secret"
    return m.group(1)


def files_under(*dirs: Path) -> list[Path]:
    return sorted(p for d in dirs if d.exists() for p in d.rglob("*") if p.is_file())


def test_planted_secrets_appear_in_no_output(lab: LabInfo, tmp_path: Path) -> None:
    inv = secrets_inventory(lab)
    state, out = tmp_path / "state", tmp_path / "out"
    out.mkdir()
    results: dict[str, Result] = {}

    def run(label: str, *args: str, rc: int | None = 0, inventory: Path | None = inv, **kw: Any) -> Result:
        r = drctl(*args, inventory=inventory, state_dir=state, **kw)
        results[label] = r
        if rc is not None:
            assert r.rc == rc, f"{label}: exit {r.rc}\n{r.err}"
        return r

    # a conninfo holding a password is refused at validation, wherever it is written
    for name, conninfo in (("encoded", f"postgresql://db/app?pass%77ord={PG_ENCODED_PW}"),
                           ("quoted", f"host=db password = '{PG_QUOTED_PW}'"),
                           ("userinfo", f"postgresql://verify:{PG_ENCODED_PW}@db/app")):
        bad = conninfo_inventory(lab, name, conninfo)
        v = run(f"validate-{name}", "validate", inventory=bad, rc=3)
        err = " ".join(v.err.split())  # the terminal's line wrapping undone
        assert re.search(rf"{re.escape(str(bad))}:\d+: services\.db\.integrity(\.0|\[0\])\.sites\.dc2\.conninfo: "
                         r"`conninfo` must not hold a password", err), err
        assert "PGPASSWORD" in err and "pgpass" in err
        run(f"validate-{name}-json", "validate", "--json", inventory=bad, rc=3)
        run(f"plan-{name}", "plan", "failover", "--site", "dc1", inventory=bad, rc=3)
        run(f"dry-run-{name}", "failover", "--site", "dc1", "--dry-run", "--json", inventory=bad, rc=3)

    # plans, as every format; the md and html reports add a readiness check
    p = run("plan", "plan", "failover", "--site", "dc1")
    assert "druser:***@127.0.0.1" in p.out and "token=***" in p.out  # the secrets were there, masked
    run("plan-json", "plan", "failover", "--site", "dc1", "--format", "json")
    run("plan-md", "plan", "failover", "--site", "dc1", "--format", "md")
    run("plan-html", "plan", "failover", "--site", "dc1", "--format", "html")
    run("dry-run", "failover", "--site", "dc1", "--dry-run")
    run("dry-run-json", "--debug", "failover", "--site", "dc1", "--dry-run", "--json")
    run("check", "check", "--all", "--metrics-file", str(out / "check.prom"))
    run("check-json", "check", "--all", "--json")
    run("verify", "verify", "web", "--record-baseline", "--json")

    # the health checks used the credentials for real (the lab's origins accept any), and succeeded
    fo = run("failover", "--debug", "failover", "--site", "dc1", "--yes", "--json")
    assert fo.json()["status"] == "succeeded"
    assert (lab.host_root("app2") / "db-active").exists()  # the command with the secret ran
    run("status", "status")
    run("status-json", "status", "--json")
    fb = run("failback", "--debug", "failback", "--site", "dc1", "--yes")
    assert "druser:***@" in fb.err
    run("history", "history", "--json")

    # a drill, through the frontend URL with its password, with every report file
    drill = run("drill", "drill", "--site", "dc1", "--yes", "--json", "--html", str(out / "drill.html"),
                "--junit", str(out / "drill.xml"), "--metrics-file", str(out / "drill.prom"), timeout=300)
    assert drill.json()["status"] == "passed", drill.json()["message"]
    drill_id = drill.json()["drill_id"]

    # a failing health check shows its URL in the failure detail, the findings and the message
    lab.daemons["origin-web-dc2"].stop()
    run("refused", "failover", "web", "--yes", rc=4)
    run("refused-json", "--debug", "failover", "web", "--yes", "--json", rc=4)

    # reports of every run and of the drill, to stdout and to files
    run_ids = sorted(p.stem for p in (state / "runs").glob("*.jsonl"))
    assert len(run_ids) >= 6 and only_run_id(state) is not None
    for rid in [*run_ids, drill_id]:
        run(f"report-{rid}-json", "report", rid, "--format", "json", inventory=None)
        for fmt, ext in (("md", "md"), ("html", "html"), ("junit", "xml")):
            run(f"report-{rid}-{fmt}", "report", rid, "--format", fmt, "-o", str(out / f"{rid}.{ext}"),
                inventory=None)

    planted = {"health URL password": HEALTH_PW, "query token": QUERY_TOKEN, "frontend password": FRONTEND_PW,
               "command environment": COMMAND_PW, "encoded conninfo password": PG_ENCODED_PW,
               "quoted conninfo password": PG_QUOTED_PW, "TSIG secret": tsig_secret(lab)}
    leaks = []
    for label, r in results.items():
        for stream, text in (("stdout", r.out), ("stderr", r.err)):
            leaks += [f"{label} {stream}: {what}" for what, s in planted.items() if s in text]
    artefacts = files_under(state, out)
    kinds = {p.relative_to(tmp_path).parts[1] for p in artefacts if p.is_relative_to(state)}
    assert {"runs", "drills", "baselines", "locks"} <= kinds, kinds  # every kind of artefact was written
    assert {p.suffix for p in artefacts if p.is_relative_to(out)} >= {".md", ".html", ".xml", ".prom"}
    for path in artefacts:
        text = path.read_bytes().decode("utf-8", errors="replace")
        leaks += [f"{path.relative_to(tmp_path)}: {what}" for what, s in planted.items() if s in text]
    assert not leaks, "secrets leaked:\n" + "\n".join(leaks)

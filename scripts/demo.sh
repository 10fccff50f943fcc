#!/usr/bin/env bash
# make demo: start the local lab (real sshd, BIND, HAProxy, HTTP origins on 127.0.0.1), fail its
# services over to the backup site for real, show what changed, fail them back, then verify data,
# check readiness and run a drill.
# KEEP_LAB=1 leaves the lab running afterwards to try more commands.
set -euo pipefail
cd "$(dirname "$0")/.."
DRCTL=${DRCTL:-.venv/bin/drctl}
LAB_DIR=${LAB_DIR:-$PWD/.lab}
export DRCTL_STATE_DIR=${DRCTL_STATE_DIR:-$LAB_DIR/state}
export NO_COLOR=${NO_COLOR:-}

$DRCTL lab down --dir "$LAB_DIR" >/dev/null 2>&1 || true
rm -rf "$LAB_DIR"
cleanup() { if [ "${KEEP_LAB:-0}" != 1 ]; then $DRCTL lab down --dir "$LAB_DIR"; fi; }
trap cleanup EXIT

INVENTORY=$($DRCTL lab up --dir "$LAB_DIR")
export DRCTL_INVENTORY=$INVENTORY
ns1=$(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print([p['port'] for p in d['processes'] if p['name']=='named-ns1'][0])" "$LAB_DIR/lab.json")
web=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['frontends']['web'])" "$LAB_DIR/lab.json")

show() {
  echo "  DNS  www.example.test -> $(dig +short -p "$ns1" @127.0.0.1 www.example.test A)"
  echo "  DNS  db.internal.test -> $(dig +short -p "$ns1" @127.0.0.1 db.internal.test A)"
  echo "  HTTP through HAProxy  -> $(curl -s "http://127.0.0.1:$web/")"
}

echo; echo "== the lab, before =="; show
echo; echo "== drctl validate =="; $DRCTL validate
echo; echo "== drctl plan failover --site dc1 =="; $DRCTL plan failover --site dc1
echo; echo "== drctl failover --site dc1 --yes =="; $DRCTL failover --site dc1 --yes
echo; echo "== the lab, after failover =="; show
echo; echo "== drctl failback --site dc1 --yes =="; $DRCTL failback --site dc1 --yes
echo; echo "== the lab, after failback =="; show
echo; echo "== drctl verify web (both copies of web's files, hashed on their hosts) =="; $DRCTL verify web
echo; echo "== drctl check --all (ready to fail over? changes nothing) =="; $DRCTL check --all
echo; echo "== drctl drill --site dc1 --yes (a rehearsal: over, check, back) =="
$DRCTL drill --site dc1 --yes --html "$LAB_DIR/drill.html"
echo "  the drill's report: $LAB_DIR/drill.html"
echo; echo "== drctl status =="; $DRCTL status
echo; echo "== drctl history =="; $DRCTL history
if [ "${KEEP_LAB:-0}" = 1 ]; then
  echo; echo "the lab keeps running: export DRCTL_INVENTORY=$INVENTORY DRCTL_STATE_DIR=$DRCTL_STATE_DIR"
  echo "stop it with: $DRCTL lab down --dir $LAB_DIR"
fi

#!/usr/bin/env bash
# Installs the Debian packages drctl's tests and lab run for real: OpenSSH, BIND, PowerDNS
# (pdns-server with the sqlite3 backend), HAProxy, PostgreSQL, rsync, etcd (the state store's tests
# and `drctl lab up --etcd`), Chromium (HTML report screenshots). Skips what is already there.
set -euo pipefail
need=()
for pair in sshd:openssh-server ssh:openssh-client named:bind9 tsig-keygen:bind9 named-checkconf:bind9-utils dig:bind9-dnsutils nsupdate:bind9-dnsutils ssh-keygen:openssh-client \
            pdns_server:pdns-server etcd:etcd-server etcdctl:etcd-client \
            haproxy:haproxy rsync:rsync socat:socat nft:nftables curl:curl ip:iproute2 chromium:chromium; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || need+=("$pkg")
done
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
ls /usr/lib/*/pdns/libgsqlite3backend.so >/dev/null 2>&1 || need+=(pdns-backend-sqlite3)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "missing Debian packages: ${need[*]}; run as root: apt-get install ${need[*]}" >&2
  exit 1
fi
echo "installing: ${need[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null

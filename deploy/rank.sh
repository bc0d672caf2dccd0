#!/usr/bin/env bash
# Runs one scheduler or server of a multi-host launch bound to this host's address:
# cluster.bind_host is one value for the whole job, but each host has its own.
#   deploy/rank.sh BINARY [ARGS...]
# The address: $MIMIC_BIND_HOST if set, else the IPv4 address of interface
# $MIMIC_BIND_IFACE (e.g. the cluster network's eth1), else the first of `hostname -I`.
# It goes last on the command line, so it wins over a cluster.bind_host in ARGS or the INI.
set -euo pipefail
addr=${MIMIC_BIND_HOST:-}
if [ -z "$addr" ] && [ -n "${MIMIC_BIND_IFACE:-}" ]; then
  addr=$(ip -4 -o addr show dev "$MIMIC_BIND_IFACE" | awk '{sub(/\/.*/, "", $4); print $4; exit}')
fi
[ -n "$addr" ] || addr=$(hostname -I 2>/dev/null | awk '{print $1}')
if [ -z "$addr" ]; then
  echo "rank.sh: no address for this host: set MIMIC_BIND_HOST or MIMIC_BIND_IFACE" >&2
  exit 2
fi
bin=$1
shift
exec "$bin" "$@" --cluster.bind_host="$addr"

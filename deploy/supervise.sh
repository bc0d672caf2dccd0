#!/usr/bin/env bash
# A supervisor for a cluster launch: runs the command, and when it fails the way a lost
# process makes it fail (a server killed: the scheduler ends the run with exit 3, or
# mpirun aborts the job), runs it again with MIMIC_RESUME=auto, so the scheduler
# resumes from the last complete checkpoint (docs/runtime.md, "Servers that come
# back"): the run rolls back to it and goes on without a person.
#   deploy/supervise.sh [--restarts N] -- COMMAND [ARGS...]
# Not restarted: success (0), bad input (2), and a stop the supervisor itself was asked
# for: SIGTERM/SIGINT to it go on to COMMAND as SIGUSR1, the preemption notice that
# mpirun forwards to every rank (mpirun would kill its ranks a second after a SIGTERM).
# COMMAND runs in its own session, so a terminal's Ctrl-C reaches only this script.
# At most N restarts (default 3); on a multi-node mpirun add -x MIMIC_RESUME to COMMAND.
set -uo pipefail
restarts=3
while [ $# -gt 0 ]; do
  case "$1" in
    --restarts) restarts=$2; shift 2 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || { echo "usage: deploy/supervise.sh [--restarts N] -- COMMAND [ARGS...]" >&2; exit 2; }
stopping=0
job=
trap 'stopping=1; [ -n "$job" ] && kill -USR1 "$job" 2>/dev/null' TERM INT
attempt=0
while :; do
  setsid "$@" &
  job=$!
  while :; do
    wait "$job" && rc=0 || rc=$?
    kill -0 "$job" 2>/dev/null || break # a trap interrupted the wait: wait again
  done
  job=
  if [ "$rc" -eq 0 ] || [ "$rc" -eq 2 ] || [ "$stopping" -eq 1 ]; then exit "$rc"; fi
  if [ "$attempt" -ge "$restarts" ]; then
    echo "supervise: exit $rc, $restarts restart(s) used; giving up" >&2
    exit "$rc"
  fi
  attempt=$((attempt + 1))
  echo "supervise: the cluster exited $rc; restart $attempt of $restarts from its last checkpoint (MIMIC_RESUME=auto)" >&2
  export MIMIC_RESUME=auto
done

#!/usr/bin/env bash
# Stop the daemons .ci/slurm-up.sh started, each by its pid file (newest first); the packages stay installed.
for pidfile in /run/slurmd.pid /run/slurmctld.pid /run/slurmdbd.pid /run/mysqld/mysqld.pid /run/munge/munged.pid; do
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    kill "$(cat "$pidfile")" && echo "slurm-down: stopped $(basename "$pidfile" .pid)"
  fi
done

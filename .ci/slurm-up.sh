#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, with accounting (slurmdbd + MariaDB, which submitit needs to tell a
# cancelled or dead job from a running one), for tests/test_cluster.py. Debian 12, run as root; every daemon
# listens on 127.0.0.1 only. Stop it with .ci/slurm-down.sh. Safe to run twice: what runs already is kept.
#
#   bash .ci/slurm-up.sh          (or: make slurm-up)
set -euo pipefail

[ "$(id -u)" = 0 ] || { echo "slurm-up: needs root (it installs packages and starts daemons)" >&2; exit 1; }
t0=$(date +%s)
say() { echo "slurm-up: $*"; }

# -- packages ---------------------------------------------------------------------------------------------------
need=()
for bin in slurmctld slurmd sbatch munged slurmdbd mariadbd; do
  command -v "$bin" >/dev/null 2>&1 || need+=("$bin")
done
if [ ${#need[@]} -gt 0 ]; then
  say "installing Debian's Slurm, munge and MariaDB (missing: ${need[*]})"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge slurmdbd mariadb-server \
    >/dev/null
fi

host=$(hostname -s)
cpus=$(nproc)
mem=$(( $(free -m | awk '/^Mem:/{print $2}') * 8 / 10 ))  # MiB, less than the machine has
etc=/etc/slurm
mkdir -p "$etc" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run

wait_for() {  # wait_for SECONDS WHAT COMMAND...
  local limit=$1 what=$2; shift 2
  for _ in $(seq "$((limit * 4))"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  echo "slurm-up: $what did not come up within ${limit}s" >&2; return 1
}
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# -- munge: authentication between the Slurm daemons --------------------------------------------------------------
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 400 /etc/munge/munge.key
if ! alive /run/munge/munged.pid; then
  runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
fi
wait_for 10 munged bash -c 'munge -n | unmunge'

# -- MariaDB: the accounting database -----------------------------------------------------------------------------
mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
if ! mysqladmin ping >/dev/null 2>&1; then
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >/dev/null
  setsid mariadbd --user=mysql --bind-address=127.0.0.1 --pid-file=/run/mysqld/mysqld.pid \
    >/var/log/slurm/mariadb.log 2>&1 < /dev/null &
  wait_for 60 MariaDB mysqladmin ping
fi
mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
          CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm-local';
          GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"

# -- configuration ------------------------------------------------------------------------------------------------
cat > "$etc/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=/run/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm-local
StorageLoc=slurm_acct_db
CONF
chmod 600 "$etc/slurmdbd.conf"

cat > "$etc/slurm.conf" <<CONF
ClusterName=wbc-local
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
SchedulerType=sched/backfill
KillWait=5
MinJobAge=300
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
CONF

# -- daemons ------------------------------------------------------------------------------------------------------
if ! alive /run/slurmdbd.pid; then
  slurmdbd
  wait_for 30 slurmdbd sacctmgr -n list cluster
fi
sacctmgr -i add cluster wbc-local >/dev/null 2>&1 || true
sacctmgr -i add account wbc Description=wbc-study Organization=local >/dev/null 2>&1 || true
sacctmgr -i add user root Account=wbc DefaultAccount=wbc >/dev/null 2>&1 || true
if ! alive /run/slurmctld.pid; then slurmctld; fi
wait_for 30 slurmctld scontrol ping
if ! alive /run/slurmd.pid; then slurmd; fi
wait_for 30 "the node ${host}" bash -c "sinfo -h -n ${host} -o %t | grep -Eq '^(idle|mix|alloc)'"
wait_for 30 "accounting (sacct)" sacct -n -X
say "one-node Slurm up on ${host} (${cpus} CPUs, ${mem} MiB) in $(( $(date +%s) - t0 ))s"
sinfo

#!/usr/bin/env bash
# A real single-node SLURM on this machine, for the cluster tests (tests/test_study_slurm.py) and for trying
# `richkd study` with `executor: slurm` locally. Needs root and apt (Debian/Ubuntu: slurm-wlm, munge).
#   scripts/slurm_local.sh start   install if needed, write /etc/slurm/slurm.conf for this host (1 node, every
#                                  CPU, the machine's memory, partition `debug`), start munged, slurmctld, slurmd
#                                  and wait until `sinfo` shows the node idle
#   scripts/slurm_local.sh stop    stop the three daemons this script started
# No slurmdbd: AccountingStorageType=accounting_storage/none, so `sacct` has no records; job states come from
# `squeue` (queued/running) and the run directories (done/failed). proctrack/linuxproc: no cgroups needed.
set -euo pipefail
ACTION=${1:-start}
STATE=/var/lib/richkd-slurm
CONF=/etc/slurm/slurm.conf

stop() {
  for name in slurmd slurmctld munged; do
    if [ -f "$STATE/$name.pid" ]; then
      pid=$(cat "$STATE/$name.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      rm -f "$STATE/$name.pid"
    fi
  done
}

if [ "$ACTION" = "stop" ]; then stop; exit 0; fi
[ "$(id -u)" = "0" ] || { echo "slurm_local: needs root" >&2; exit 3; }
if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || { echo "slurm_local: no apt-get to install slurm-wlm munge" >&2; exit 3; }
  (apt-get install -y -qq slurm-wlm munge >/dev/null 2>&1) \
    || (apt-get update -qq && apt-get install -y -qq slurm-wlm munge >/dev/null) \
    || { echo "slurm_local: apt-get install slurm-wlm munge failed" >&2; exit 3; }
fi
if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then exit 0; fi  # already up
stop
HOST=$(hostname -s)
CPUS=$(nproc)
MEM=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
mkdir -p "$STATE/ctld" "$STATE/d" /etc/slurm /var/log/slurm /run/munge /etc/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
fi
chown -R munge:munge /etc/munge /run/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
chmod 700 /etc/munge
cat > "$CONF" <<CONF
ClusterName=richkd
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobRequeue=1
ReturnToService=2
SchedulerParameters=defer_batch=0
SlurmctldTimeout=30
SlurmdTimeout=30
MinJobAge=60
KillWait=5
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
cp "$CONF" /etc/slurm-llnl/slurm.conf 2>/dev/null || true
munged --force --pid-file="$STATE/munged.pid" 2>/dev/null || munged --force
[ -f "$STATE/munged.pid" ] || pgrep -o -x munged > "$STATE/munged.pid"
slurmctld -c  # clean start: no old jobs
slurmd
for _ in $(seq 150); do
  if sinfo -h -o %T 2>/dev/null | grep -qE '^idle'; then echo "slurm_local: $HOST idle ($CPUS CPUs, $MEM MB)"; exit 0; fi
  sleep 0.2
done
echo "slurm_local: the node did not become idle; see /var/log/slurm/slurmctld.log and slurmd.log" >&2
sinfo >&2 || true
exit 4

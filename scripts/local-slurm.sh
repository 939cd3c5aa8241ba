#!/usr/bin/env bash
# A one-node SLURM cluster on this Debian machine, for trying and testing profiles/slurm.
#   scripts/local-slurm.sh start   install (apt) and start munge, slurmctld and slurmd; quick when already up
#   scripts/local-slurm.sh stop    stop the daemons (the packages and config stay)
# Runs as root (or with sudo). The node gets the machine's real CPUs and memory (`slurmd -C`).
# No accounting database: the plugin is told to poll with `squeue` (profiles/slurm/config.yaml).
# Limits are enforced as on a real cluster: time by slurmctld, memory (--mem) by polling each job every second
# (jobacct_gather, no cgroups needed); a job over its memory is killed and its SLURM log says so.
set -euo pipefail
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
CONF=/etc/slurm/slurm.conf
PARTITION=debug

running() { sinfo -h -p "$PARTITION" -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; }

start() {
    if command -v sinfo >/dev/null && running; then echo "local-slurm: already running"; return; fi
    if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
        $SUDO apt-get update -q
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends slurm-wlm munge
    fi
    if [ ! -s /etc/munge/munge.key ]; then
        $SUDO dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    $SUDO chown munge:munge /etc/munge/munge.key && $SUDO chmod 400 /etc/munge/munge.key
    $SUDO mkdir -p /run/munge /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
    $SUDO chown munge:munge /run/munge
    pgrep -x munged >/dev/null || $SUDO -u munge munged 2>/dev/null || $SUDO runuser -u munge -- munged
    # Memory a bit below what slurmd reports, so the node is not drained for having "less" than configured.
    local node
    node=$($SUDO slurmd -C | head -1)
    local memory=${node##*RealMemory=}; memory=${memory%% *}
    node="${node/RealMemory=$memory/RealMemory=$((memory * 95 / 100))}"
    local host=${node#NodeName=}; host=${host%% *}
    $SUDO tee "$CONF" >/dev/null <<CONF
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SchedulerType=sched/backfill
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherParams=OverMemoryKill
JobAcctGatherFrequency=task=1
AccountingStorageType=accounting_storage/none
MpiDefault=none
$node State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
    pgrep -x slurmctld >/dev/null || $SUDO slurmctld
    pgrep -x slurmd >/dev/null || $SUDO slurmd
    for _ in $(seq 30); do running && { echo "local-slurm: running ($node)"; return; }; sleep 1; done
    $SUDO scontrol update NodeName="$host" State=RESUME 2>/dev/null || true
    running || { echo "local-slurm: error: the node did not come up; see /var/log/slurm/" >&2; exit 1; }
}

stop() {
    for daemon in slurmd slurmctld; do
        pid=$(pgrep -x "$daemon" || true)
        [ -z "$pid" ] || $SUDO kill "$pid"
    done
    echo "local-slurm: stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac

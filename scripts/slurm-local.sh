#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for trying (and testing) the cluster path.
#
#   scripts/slurm-local.sh start    # install what is missing, start munged + slurmctld + slurmd
#   scripts/slurm-local.sh status   # daemons, node state, queue
#   scripts/slurm-local.sh stop     # end exactly the daemons `start` started (by pid file)
#
# Needs root (apt, daemons). No systemd or cgroups: proctrack/linuxproc, task/none.
# Everything (munge key and socket, slurm.conf, state, spool, logs, pid files) lives under
# $ARCHBENCH_SLURM_DIR (default /tmp/archbench-slurm). Clients find the cluster through
# $ARCHBENCH_SLURM_DIR/slurm.conf: export SLURM_CONF=<that> (start links /etc/slurm/slurm.conf
# to it when that file does not exist, so plain `sinfo`/`sbatch` work too).
set -euo pipefail

DIR=${ARCHBENCH_SLURM_DIR:-/tmp/archbench-slurm}
CONF=$DIR/slurm.conf
ETC_CONF=/etc/slurm/slurm.conf
PARTITION=${ARCHBENCH_SLURM_PARTITION:-debug}
export SLURM_CONF=$CONF

say() { echo "slurm-local: $*"; }
die() { echo "slurm-local: error: $*" >&2; exit 1; }

pid_alive() {  # pid file -> 0 if its process runs
    [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

node_state() { sinfo -h -N -o '%T' 2>/dev/null | head -n1; }

install_missing() {
    local missing=()
    command -v munged >/dev/null || missing+=(munge)
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        || missing+=(slurm-wlm)
    ((${#missing[@]} == 0)) && return 0
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get: install SLURM and munge yourself"
    say "installing ${missing[*]} (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

write_conf() {
    local host cpus mem
    host=$(hostname -s)
    cpus=$(nproc)
    # Leave 10% of the memory (at least 512 MB) to the system; jobs ask for memory by --mem.
    mem=$(awk '/MemTotal/ {m = int($2 / 1024); r = int(m * 0.9); if (m - r < 512) r = m - 512; print r}' /proc/meminfo)
    cat >"$CONF" <<EOF
# Written by scripts/slurm-local.sh: one node ($host), no accounting, no cgroups.
ClusterName=archbench
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Time limits act fast: SIGTERM at the limit, SIGKILL 5 s later, no grace minutes.
KillWait=5
OverTimeLimit=0
InactiveLimit=0
# Finished jobs stay visible to squeue/scontrol for 5 minutes.
MinJobAge=300
# Poll quickly: a one-node test cluster should schedule in about a second.
SchedulerParameters=sched_interval=5
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
    [[ $(id -u) == 0 ]] || die "run as root (it installs packages and starts daemons)"
    if pid_alive "$DIR/run/munged.pid" && pid_alive "$DIR/run/slurmctld.pid" && pid_alive "$DIR/run/slurmd.pid"; then
        say "already running ($DIR); nothing to do"
        return 0
    fi
    install_missing
    mkdir -p "$DIR"/{munge,state,spool,log,run}
    chmod 700 "$DIR/munge"
    if [[ ! -s $DIR/munge/munge.key ]]; then
        dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1 count=1024 status=none
        chmod 400 "$DIR/munge/munge.key"
    fi
    write_conf
    if [[ ! -e $ETC_CONF ]]; then
        mkdir -p "$(dirname "$ETC_CONF")"
        ln -s "$CONF" "$ETC_CONF"
    elif [[ $(readlink "$ETC_CONF" || true) != "$CONF" ]]; then
        say "note: $ETC_CONF is not ours; use: export SLURM_CONF=$CONF"
    fi
    if ! pid_alive "$DIR/run/munged.pid"; then
        munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
            --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" \
            --seed-file="$DIR/munge/munge.seed"
    fi
    if ! pid_alive "$DIR/run/slurmctld.pid"; then
        slurmctld -f "$CONF" -i   # -i: ignore state left by an older run of this script
    fi
    if ! pid_alive "$DIR/run/slurmd.pid"; then
        slurmd -f "$CONF"
    fi
    local state=""
    for _ in $(seq 1 60); do
        state=$(node_state || true)
        [[ $state == idle* || $state == mixed* || $state == allocated* ]] && break
        sleep 0.5
    done
    case $state in
        idle* | mixed* | allocated*) say "up: node $(hostname -s) $state; SLURM_CONF=$CONF" ;;
        *) status >&2 || true
           die "the node did not become idle within 30 s (state '${state:-none}'); logs in $DIR/log" ;;
    esac
}

stop() {
    local name pidfile pid
    for name in slurmd slurmctld munged; do
        pidfile=$DIR/run/$name.pid
        if pid_alive "$pidfile"; then
            pid=$(cat "$pidfile")
            kill "$pid"
            for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
            say "stopped $name (pid $pid)"
        fi
        rm -f "$pidfile"
    done
    if [[ $(readlink "$ETC_CONF" 2>/dev/null || true) == "$CONF" ]]; then
        rm -f "$ETC_CONF"
    fi
}

status() {
    local name rc=0
    for name in munged slurmctld slurmd; do
        if pid_alive "$DIR/run/$name.pid"; then
            echo "$name: running (pid $(cat "$DIR/run/$name.pid"))"
        else
            echo "$name: not running"; rc=1
        fi
    done
    if ((rc == 0)); then
        echo "SLURM_CONF=$CONF"
        sinfo -N -o '%N %P %T %c %m' || rc=1
        squeue || rc=1
    fi
    return $rc
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac

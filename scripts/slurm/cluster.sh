#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the `slurm` test tier (tests/test_slurm.py)
# and for trying hydra/launcher=slurm by hand. Needs root and apt (Debian / Ubuntu).
#
#   scripts/slurm/cluster.sh up      install (slurmctld slurmd slurm-client munge) if missing,
#                                    start munged, slurmctld, slurmd; wait until `scontrol ping`
#                                    answers and `sinfo` shows the node idle. Idempotent: a
#                                    cluster that is already up and healthy is left as it is.
#   scripts/slurm/cluster.sh env     the exports a shell needs to use it (eval "$(... env)")
#   scripts/slurm/cluster.sh down    stop every daemon this script started, by its own PID
#   scripts/slurm/cluster.sh logs    print the daemons' logs
#   scripts/slurm/cluster.sh status  exit status 0 when it is up and its node idle
#
# Everything lives in $D2BENCH_SLURM_DIR (default /tmp/d2bench-slurm): slurm.conf, state,
# spool, logs, PID files, the job-completion log, and a munged of its own (socket included),
# so that two clusters with their own directory and port ($D2BENCH_SLURM_PORT, default 6817,
# and the next one for slurmd) run side by side and neither stops the other's daemons. Nothing
# under /etc is written; clients find the cluster through SLURM_CONF. On failure `up` prints
# the daemon logs and exits non-zero.
#
# The cluster: one node named after `hostname -s` at 127.0.0.1, all its cores, select/cons_tres
# with CR_Core (1-CPU jobs run side by side), no cgroups (proctrack/linuxproc, task/none), no
# accounting daemon. Job states of finished jobs go to a job-completion log (jobcomp/filetxt),
# which scripts/slurm/bin/sacct reads where sacct has no accounting to ask. Two GPUs are
# declared as generic resources backed by placeholder files (no GPU is needed), so that
# `--gpus-per-node` jobs are scheduled and get CUDA_VISIBLE_DEVICES from SLURM as on a real
# cluster.
set -euo pipefail

DIR=${D2BENCH_SLURM_DIR:-/tmp/d2bench-slurm}
CTLD_PORT=${D2BENCH_SLURM_PORT:-6817}
SLURMD_PORT=$((CTLD_PORT + 1))
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CONF=$DIR/slurm.conf
MUNGE_SOCKET=$DIR/munge/munge.socket
PACKAGES=(slurmctld slurmd slurm-client munge)
READY_S=${D2BENCH_SLURM_READY_S:-45}

say() { echo "slurm-cluster: $*" >&2; }

env_lines() {
    echo "export SLURM_CONF=$CONF"
    echo "export PATH=$HERE/bin:\$PATH"
}

logs() {
    for f in "$DIR"/munge/munged.log "$DIR"/log/munged.out "$DIR"/log/slurmctld.log "$DIR"/log/slurmd.log \
        "$DIR"/log/slurmctld.out "$DIR"/log/slurmd.out; do
        [ -s "$f" ] || continue
        echo "===== $f (last 60 lines) =====" >&2
        tail -n 60 "$f" >&2
    done
}

alive() { # alive PIDFILE: the process named in PIDFILE is running
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

healthy() {
    SLURM_CONF=$CONF scontrol ping 2>/dev/null | grep -q "is UP" &&
        [ "$(SLURM_CONF=$CONF sinfo -h -N -o '%t' 2>/dev/null | head -n1)" = idle ]
}

install() {
    local missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        say "missing ${missing[*]}; installing them needs root and apt-get"
        return 1
    fi
    say "installing ${missing[*]}"
    apt-get update -qq
    # the packages' init scripts are not run here (no systemd): `up` starts the daemons itself
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >"$DIR/log/apt.log" 2>&1 || { tail -n 30 "$DIR/log/apt.log" >&2; return 1; }
}

write_config() {
    local host cpus mem
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    mkdir -p "$DIR"/state "$DIR"/spool "$DIR"/log "$DIR"/gpu "$DIR"/run
        # gres/gpu wants character devices: two nodes with /dev/null's numbers (1:3) stand in for
    # GPUs; SLURM numbers them by their names' digits, as it would /dev/nvidia0 and 1
    for i in 0 1; do
        [ -c "$DIR/gpu/nvidia$i" ] || mknod "$DIR/gpu/nvidia$i" c 1 3
    done
    cat >"$CONF" <<EOF
# written by scripts/slurm/cluster.sh
ClusterName=d2bench
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/jobcomp.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=3600
KillWait=5
InactiveLimit=0
SlurmdTimeout=60
MpiDefault=none
MailProg=/bin/true
GresTypes=gpu
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$DIR/gres.conf" <<EOF
Name=gpu File=$DIR/gpu/nvidia0
Name=gpu File=$DIR/gpu/nvidia1
EOF
}

munge_answers() {
    munge -S "$MUNGE_SOCKET" -n 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1
}

start_munge() { # a munged of this cluster's own: its socket, PID and log under $DIR/munge
    if alive "$DIR/munged.pid" && munge_answers; then
        return 0
    fi
    [ -s /etc/munge/munge.key ] || { say "no /etc/munge/munge.key"; return 1; }
    mkdir -p "$DIR/munge"
    chown munge:munge "$DIR/munge"
    chmod 0755 "$DIR/munge" # clients (root here) reach the socket; munged wants no group write
    # -F: in the foreground of its own background job, so that its PID is ours to stop;
    # --force: a socket left by a munged that died is taken over
    setsid setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged -F --force \
        --socket="$MUNGE_SOCKET" --pid-file="$DIR/munge/munged.pid" \
        --seed-file="$DIR/munge/munged.seed" --log-file="$DIR/munge/munged.log" \
        >"$DIR/log/munged.out" 2>&1 </dev/null &
    echo $! >"$DIR/munged.pid"
    for _ in $(seq 50); do
        munge_answers && return 0
        sleep 0.1
    done
    say "munged does not answer on $MUNGE_SOCKET"
    return 1
}

start_daemon() { # start_daemon NAME: NAME -D in the background, its PID in $DIR/NAME.pid
    local name=$1
    if alive "$DIR/$name.pid"; then
        return 0
    fi
    # -D: in the foreground of its own background job; the PID file holds its own PID
    setsid "/usr/sbin/$name" -D -f "$CONF" >"$DIR/log/$name.out" 2>&1 </dev/null &
    echo $! >"$DIR/$name.pid"
}

is_up() {
    [ -s "$CONF" ] && alive "$DIR/munged.pid" && alive "$DIR/slurmctld.pid" &&
        alive "$DIR/slurmd.pid" && healthy
}

up() {
    mkdir -p "$DIR/log"
    chmod 0755 "$DIR"
    if is_up; then
        say "already up ($CONF)"
        env_lines
        return 0
    fi
    install || { logs; return 1; }
    local started=$SECONDS
    write_config
    start_munge || { logs; return 1; }
    start_daemon slurmctld
    start_daemon slurmd
    local deadline=$((SECONDS + READY_S))
    while [ $SECONDS -lt $deadline ]; do
        for name in slurmctld slurmd; do
            if ! alive "$DIR/$name.pid"; then
                say "$name exited while starting"
                logs
                return 1
            fi
        done
        if healthy; then
            say "up in $((SECONDS - started)) s: $(SLURM_CONF=$CONF sinfo -h -N -o '%N %t %c CPUs %G')"
            env_lines
            return 0
        fi
        # a node that registered before slurmctld had its state, or came back: make it usable
        if SLURM_CONF=$CONF sinfo -h -N -o '%t' 2>/dev/null | grep -qE 'down|drain'; then
            SLURM_CONF=$CONF scontrol update nodename="$(hostname -s)" state=resume 2>/dev/null ||
                true
        fi
        sleep 0.5
    done
    say "not ready after ${READY_S} s: scontrol ping / sinfo say:"
    SLURM_CONF=$CONF scontrol ping >&2 || true
    SLURM_CONF=$CONF sinfo -N -l >&2 || true
    logs
    return 1
}

stop_pid() { # stop_pid PIDFILE NAME: TERM, then KILL after 10 s; only the PID in PIDFILE
    local file=$1 name=$2 pid
    [ -s "$file" ] || return 0
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            say "$name ($pid) ignored TERM; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        say "stopped $name ($pid)"
    fi
    rm -f "$file"
}

down() {
    # jobs first, so that no job step outlives the cluster
    if [ -s "$CONF" ] && alive "$DIR/slurmctld.pid"; then
        SLURM_CONF=$CONF scancel --full --signal=KILL --user="$(id -un)" 2>/dev/null || true
        SLURM_CONF=$CONF scancel --user="$(id -un)" 2>/dev/null || true
    fi
    stop_pid "$DIR/slurmd.pid" slurmd
    stop_pid "$DIR/slurmctld.pid" slurmctld
    stop_pid "$DIR/munged.pid" munged
}

case "${1:-}" in
up) up ;;
down) down ;;
status) is_up ;;
env) env_lines ;;
logs) logs ;;
*)
    echo "usage: $0 up|down|status|env|logs" >&2
    exit 2
    ;;
esac

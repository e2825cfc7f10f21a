#!/usr/bin/env bash
# A single-node SLURM cluster on localhost from Debian's packages, with accounting (MariaDB +
# slurmdbd) so that sacct — which Snakemake's SLURM executor polls — works as on a real cluster.
#
#   localhost_cluster.sh start DIR   install if needed, write configs under DIR, start daemons
#   localhost_cluster.sh stop DIR    stop what `start` started (by the pid files under DIR)
#
# The configs are written under DIR and linked from /etc/slurm, where every client looks (the
# executor plugin's job steps drop SLURM_CONF from their environment); `start` refuses to replace
# a slurm.conf it did not make, and `stop` removes the links. Needs root (daemons run as root;
# munged as the munge user). There is no systemd on these machines: daemons start directly.
set -euo pipefail

action=${1:?usage: $0 start|stop DIR}
dir=$(realpath -m "${2:?usage: $0 start|stop DIR}")
db_port=${LMFORGE_SLURM_DB_PORT:-33061}

install() {
    local need=()
    for bin in slurmctld slurmd sbatch munged slurmdbd mariadbd; do
        command -v "$bin" >/dev/null || need+=("$bin")
    done
    [ ${#need[@]} -eq 0 ] && return
    echo "installing SLURM (missing: ${need[*]})"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        slurmctld slurmd slurm-client slurmdbd munge mariadb-server >/dev/null
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds=$1 what=$2
    shift 2
    for _ in $(seq $((seconds * 5))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "timed out waiting for $what" >&2
    return 1
}

start() {
    [ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 2; }
    install
    local host
    host=$(hostname -s)
    mkdir -p "$dir"/{state,spool,log,db,run}
    chmod 755 "$dir"

    # munge: Debian's package made the key; the daemon needs its run and log directories.
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    if ! munge -n </dev/null >/dev/null 2>&1; then
        runuser -u munge -- munged
        wait_for 10 munged munge -n
    fi

    # MariaDB on its own data directory and port, for slurmdbd only.
    mariadb-install-db --user=root --datadir="$dir/db" --auth-root-authentication-method=normal \
        >"$dir/log/mariadb-install.log" 2>&1
    mariadbd --user=root --datadir="$dir/db" --port="$db_port" --bind-address=127.0.0.1 \
        --socket="$dir/run/mysqld.sock" --pid-file="$dir/run/mariadb.pid" \
        --skip-name-resolve >"$dir/log/mariadb.log" 2>&1 &
    wait_for 30 mariadb mariadb --socket="$dir/run/mysqld.sock" -e "select 1"
    mariadb --socket="$dir/run/mysqld.sock" -e \
        "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
         GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"

    cat >"$dir/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=$dir/log/slurmdbd.log
PidFile=$dir/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$db_port
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$dir/slurmdbd.conf"

    # The node advertises a GPU node's CPUs and memory (config_overrides: slurmd accepts more
    # than the hardware has) so that profiles/slurm's real requests schedule unchanged; nothing
    # enforces them here (no cgroups). Partitions "cpu" (default) and "gpu" share the node.
    # MinJobAge keeps finished jobs visible to squeue for the executor's fallback checks.
    cat >"$dir/slurm.conf" <<EOF
ClusterName=lmforge
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
MinJobAge=300
ReturnToService=2
SchedulerType=sched/backfill
MpiDefault=none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SlurmdParameters=config_overrides
NodeName=$host CPUs=16 RealMemory=512000 State=UNKNOWN
PartitionName=cpu Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$host MaxTime=INFINITE State=UP
EOF
    for name in slurm.conf slurmdbd.conf; do
        # A link is this script's (an earlier run); a real file is a real cluster's.
        if [ -e "/etc/slurm/$name" ] && [ ! -L "/etc/slurm/$name" ]; then
            echo "/etc/slurm/$name exists and is not this test cluster's: not replacing it" >&2
            exit 2
        fi
        mkdir -p /etc/slurm
        ln -sfn "$dir/$name" "/etc/slurm/$name"
    done

    slurmdbd
    wait_for 30 slurmdbd sacctmgr -i show cluster
    sacctmgr -i add cluster lmforge >/dev/null 2>&1 || true
    sacctmgr -i add account lmforge Cluster=lmforge >/dev/null 2>&1 || true
    sacctmgr -i add user root Account=lmforge DefaultAccount=lmforge >/dev/null 2>&1 || true

    slurmctld
    wait_for 30 slurmctld scontrol ping
    slurmd
    wait_for 30 "node $host idle" bash -c "sinfo -h -N -o %t | grep -qx idle"
    echo "cluster lmforge is up: $(sinfo -h -o '%P %N %c CPUs' | tr '\n' ' ')"
}

stop() {
    # Daemons that exit are not reaped here (PID 1 is no init), so wait only until they are gone
    # or zombies.
    for name in slurmd slurmctld slurmdbd mariadb; do
        local pidfile="$dir/run/$name.pid"
        [ -f "$pidfile" ] || continue
        local pid
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            state=$(ps -o stat= -p "$pid" 2>/dev/null || true)
            [ -z "$state" ] || [[ $state == Z* ]] && break
            sleep 0.2
        done
    done
    for name in slurm.conf slurmdbd.conf; do
        [ "$(readlink "/etc/slurm/$name")" = "$dir/$name" ] && rm -f "/etc/slurm/$name"
    done
    return 0
}

case $action in
start) start ;;
stop) stop ;;
*) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac

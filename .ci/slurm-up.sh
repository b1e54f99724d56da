#!/usr/bin/env bash
# Start a single-host SLURM cluster on this machine (localhost only) for tests/test_cluster_slurm.py.
# Idempotent: installs Debian's slurm-wlm + munge if missing, writes /etc/slurm/{slurm,gres}.conf for this host (the
# real `slurmd -C` CPU/memory line), starts munged, slurmctld and slurmd if they are not running, and waits until
# `sinfo` shows the node idle. Needs root. No slurmdbd: accounting is off, so job status comes from squeue
# (MinJobAge keeps finished jobs visible to squeue for 10 minutes).
# Exit status: 0 up; 100 apt-get could not install the packages; 1 anything else (the message says what).
# The node has no GPU: it declares one fake GPU (gres/gpu on an empty file, /dev/fakegpu0), so a job that asks for a
# GPU (`sbatch --gres=gpu:1`) is scheduled exactly as on a GPU node; the job itself runs on the CPU.
set -euo pipefail

die() { echo "slurm-up: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "must run as root (installs packages, starts daemons); running as uid $(id -u)"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
    || ! command -v sinfo >/dev/null; then
  echo "slurm-up: installing slurm-wlm and munge from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends slurm-wlm munge >/tmp/slurm-up-apt.log 2>&1 \
    || { apt-get update >>/tmp/slurm-up-apt.log 2>&1 \
         && apt-get install -y --no-install-recommends slurm-wlm munge >>/tmp/slurm-up-apt.log 2>&1; } \
    || { echo "slurm-up: apt-get could not install slurm-wlm munge (log: /tmp/slurm-up-apt.log):" >&2
         tail -3 /tmp/slurm-up-apt.log >&2; exit 100; }
fi

host=$(hostname -s)
node_line=$(slurmd -C | head -1)   # NodeName=<host> CPUs=.. Boards=.. SocketsPerBoard=.. CoresPerSocket=.. ... RealMemory=..
case "$node_line" in NodeName="$host"\ *) ;; *) die "unexpected 'slurmd -C' output: $node_line";; esac

fake_gpu=/dev/fakegpu0
[ -e "$fake_gpu" ] || : >"$fake_gpu"

write_if_changed() {  # atomic: temp file + rename; prints "changed" when the content differs
  local dst=$1 tmp
  tmp=$(mktemp "$dst.XXXXXX")
  cat >"$tmp"
  chmod 644 "$tmp"
  if [ -f "$dst" ] && cmp -s "$tmp" "$dst"; then rm -f "$tmp"; else mv -f "$tmp" "$dst"; echo changed; fi
}

mkdir -p /etc/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm /run/munge
chown slurm:slurm /var/lib/slurm/slurmctld /var/log/slurm
changed=$(
  write_if_changed /etc/slurm/slurm.conf <<EOF
# Written by .ci/slurm-up.sh: a one-node test cluster on this host, localhost only.
ClusterName=mixtrain-ci
SlurmctldHost=$host(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
ReturnToService=2
MinJobAge=600
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
$node_line NodeAddr=127.0.0.1 Gres=gpu:1 State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  write_if_changed /etc/slurm/gres.conf <<EOF
# Written by .ci/slurm-up.sh: one fake GPU (an empty file), so GPU requests schedule on this GPU-less node.
NodeName=$host Name=gpu File=$fake_gpu
EOF
)

# munge: credentials for slurmctld <-> slurmd <-> clients
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  [ -s /etc/munge/munge.key ] || { mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
    || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; }
  chown munge:munge /etc/munge /etc/munge/munge.key /run/munge
  chmod 700 /etc/munge; chmod 400 /etc/munge/munge.key
  mkdir -p /var/log/munge /var/lib/munge && chown munge:munge /var/log/munge /var/lib/munge
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
  munge -n | unmunge >/dev/null || die "munged did not start (see /var/log/munge/munged.log)"
fi

running() {  # running PIDFILE NAME: the pid file names a live process called NAME
  [ -f "$1" ] && [ "$(cat "/proc/$(cat "$1")/comm" 2>/dev/null)" = "$2" ]
}
if [ -n "$changed" ] && running /run/slurmctld.pid slurmctld; then
  echo "slurm-up: configuration changed, reconfiguring the running cluster"
  scontrol reconfigure || die "scontrol reconfigure failed"
fi
running /run/slurmctld.pid slurmctld || { echo "slurm-up: starting slurmctld"; /usr/sbin/slurmctld; }
for _ in $(seq 50); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
scontrol ping | grep -q UP || die "slurmctld did not come up (see /var/log/slurm/slurmctld.log)"
running /run/slurmd.pid slurmd || { echo "slurm-up: starting slurmd"; /usr/sbin/slurmd; }

state=""
for _ in $(seq 60); do
  state=$(sinfo -h -n "$host" -o %T 2>/dev/null | head -1)
  case "$state" in
    idle|mixed|allocated) echo "slurm-up: node $host is $state"; sinfo; exit 0;;
    down*|drain*) scontrol update NodeName="$host" State=RESUME 2>/dev/null || true;;
  esac
  sleep 1
done
die "node $host is not idle after 60 s (state: '${state:-none}'; see /var/log/slurm/slurmd.log)"

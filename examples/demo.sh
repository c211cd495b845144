#!/usr/bin/env bash
# The main job of Tether, shown end to end (README: "Two commands"):
#   1. start supervisord on its default root (/var/lib/tether as root),
#   2. run four containers (process runtime): two that run forever, one that exits 7 soon, one
#      with a restart policy that crashes once,
#   3. SIGKILL the daemon; the containers keep running; the job exits while no daemon is up, and
#      the crashing one is restarted by its shim while no daemon is up,
#   4. restart the daemon: the same pids are running, the job's exit is recorded exactly once,
#      and the crash and its restart are recorded once each, in order.
# It cleans up after itself (containers, daemon) even when a step fails: nothing is left running.
# It says where things stay: the default root keeps its event log (the demo's history), and the
# daemon's log in /tmp/tether-demo.* is removed on success, kept on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# show CMD ARGS...: print the command (quoted as you would type it), then run it.
show() {
  local arg line='$'
  for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_./=:,+-]+$ ]]; then line+=" $arg"; else line+=" '$arg'"; fi
  done
  printf '%s\n' "$line"
  "$@"
}
die() { printf '\ndemo: FAILED: %s\n' "$*" >&2; exit 1; }

say "Installing what the demo needs (bash .ci/setup)"
bash .ci/setup

PY=$REPO/.venv/bin/python
# The console scripts, by name in the narration, from the venv in practice.
supervisorctl() { "$REPO/.venv/bin/supervisorctl" "$@"; }
ROOT=$("$PY" -c 'from supervisor.defaults import default_root; print(default_root())')
WORK=$(mktemp -d /tmp/tether-demo.XXXXXX)
DAEMON_LOG=$WORK/supervisord.log
NAMES=(demo-web demo-worker demo-job demo-flaky)
DAEMON_PID=""
PIDS=()   # every pid the demo caused (daemons, shims, containers): the trap's last resort

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

start_daemon() {
  "$REPO/.venv/bin/supervisord" --log-format json >>"$DAEMON_LOG" 2>&1 &
  DAEMON_PID=$!
  PIDS+=("$DAEMON_PID")
  for _ in $(seq 200); do
    supervisorctl info >/dev/null 2>&1 && return 0
    alive "$DAEMON_PID" || { tail -20 "$DAEMON_LOG" >&2; die "supervisord exited at start"; }
    sleep 0.05
  done
  tail -20 "$DAEMON_LOG" >&2
  die "supervisord did not answer within 10 s"
}

# field ID NAME: one field of `supervisorctl inspect ID` (the JSON of a container).
field() {
  supervisorctl inspect "$1" | "$PY" -c 'import json,sys; v=json.load(sys.stdin).get(sys.argv[1]); print("" if v is None else v)' "$2"
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  say "Cleaning up"
  if ! supervisorctl info >/dev/null 2>&1 && [ "${#PIDS[@]}" -gt 0 ]; then
    # The daemon is down (we killed it, or a step failed): bring it back to remove cleanly.
    "$REPO/.venv/bin/supervisord" --log-format json >>"$DAEMON_LOG" 2>&1 &
    DAEMON_PID=$!
    PIDS+=("$DAEMON_PID")
    for _ in $(seq 100); do supervisorctl info >/dev/null 2>&1 && break; sleep 0.05; done
  fi
  for name in "${NAMES[@]}"; do
    supervisorctl rm -f "$name" >/dev/null 2>&1 && echo "removed $name" || true
  done
  if alive "$DAEMON_PID"; then
    supervisorctl shutdown || true
  fi
  # Last resort, by pid only (never by name): whatever this demo started and is still alive
  # after a grace period (shims of removed containers exit on their own, give them a moment).
  for _ in $(seq 60); do
    local any=""
    for pid in "${PIDS[@]}"; do alive "$pid" && any=1; done
    [ -z "$any" ] && break
    sleep 0.05
  done
  local left=()
  for pid in "${PIDS[@]}"; do alive "$pid" && left+=("$pid"); done
  if [ "${#left[@]}" -gt 0 ]; then
    echo "killing leftover processes: ${left[*]}"
    kill -9 "${left[@]}" 2>/dev/null || true
  fi
  if [ "$status" = 0 ]; then
    rm -rf "$WORK"
    echo "removed the demo's scratch directory $WORK (the daemon's log)"
  else
    echo "kept the daemon's log for you: $DAEMON_LOG"
  fi
  echo "Tether's state stays in $ROOT: its event log now holds this demo's history"
  echo "  (supervisorctl events shows it; with no supervisord running, rm -rf $ROOT forgets it)"
  if [ "$status" = 0 ]; then echo "demo: OK"; else echo "demo: FAILED (exit $status)" >&2; fi
  exit "$status"
}

if supervisorctl info >/dev/null 2>&1; then
  die "a supervisord is already running on $ROOT; the demo kills its daemon, so it will not \
use yours. Stop it first (supervisorctl shutdown)."
fi
trap cleanup EXIT
trap 'exit 130' INT TERM

say "Starting supervisord on its default root ($ROOT)"
start_daemon
echo "supervisord pid $DAEMON_PID, log $DAEMON_LOG"
START_SEQ=$(supervisorctl info --json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["last_seq"])')
for name in "${NAMES[@]}"; do supervisorctl rm -f "$name" >/dev/null 2>&1 || true; done

say "Running four containers"
show supervisorctl run --name demo-web -- sh -c 'while :; do sleep 1; done'
show supervisorctl run --name demo-worker -- sh -c 'while :; do echo working; sleep 2; done'
show supervisorctl run --name demo-job -- sh -c 'sleep 3; echo done; exit 7'
# crashes (exit 1) the first time only: the marker file says it already did
MARK=$WORK/demo-flaky.crashed
show supervisorctl run --name demo-flaky --restart on-failure --restart-delay 0.5 -- \
  sh -c "if [ -e $MARK ]; then echo 'back up'; exec sleep 1000; fi; touch $MARK; sleep 3; echo crashing; exit 1"
for name in "${NAMES[@]}"; do
  PIDS+=("$(field "$name" shim_pid)" "$(field "$name" pid)")
done
WEB_PID=$(field demo-web pid)
WORKER_PID=$(field demo-worker pid)
JOB_PID=$(field demo-job pid)
FLAKY_PID=$(field demo-flaky pid)
FLAKY_SHIM=$(field demo-flaky shim_pid)
START_FLAKY=$(supervisorctl info --json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["last_seq"])')
show supervisorctl ps

say "SIGKILL the daemon (pid $DAEMON_PID)"
show kill -9 "$DAEMON_PID"
wait "$DAEMON_PID" 2>/dev/null || true
show supervisorctl ps || true
echo "(expected: no daemon. The containers do not care:)"
show ps -o pid,ppid,stat,args -p "$WEB_PID,$WORKER_PID,$JOB_PID" || true

say "While no daemon is up, demo-job (pid $JOB_PID) exits with status 7"
for _ in $(seq 200); do alive "$JOB_PID" || break; sleep 0.05; done
alive "$JOB_PID" && die "demo-job did not exit"
echo "pid $JOB_PID is gone; its shim keeps the exit status until a daemon acknowledges it"

say "While no daemon is up, demo-flaky (pid $FLAKY_PID) crashes and its shim restarts it"
NEW_FLAKY=""
for _ in $(seq 200); do
  NEW_FLAKY=$(ps -o pid= --ppid "$FLAKY_SHIM" | tr -d ' ' | grep -vx "$FLAKY_PID" | head -1 || true)
  ! alive "$FLAKY_PID" && [ -n "$NEW_FLAKY" ] && break
  sleep 0.05
done
alive "$FLAKY_PID" && die "demo-flaky did not crash"
[ -n "$NEW_FLAKY" ] || die "demo-flaky's shim did not restart it"
PIDS+=("$NEW_FLAKY")
show ps -o pid,ppid,args -p "$NEW_FLAKY"
echo "pid $FLAKY_PID exited 1; its shim (pid $FLAKY_SHIM) applied the policy and started pid $NEW_FLAKY"
echo "(docker, containerd and the kubelet restart nothing while their daemon is down)"

say "Restarting supervisord on the same root"
start_daemon
echo "supervisord pid $DAEMON_PID"
show supervisorctl ps -a

say "Checking: same pids, the exit recorded once"
[ "$(field demo-web pid)" = "$WEB_PID" ] || die "demo-web has a new pid"
[ "$(field demo-worker pid)" = "$WORKER_PID" ] || die "demo-worker has a new pid"
[ "$(field demo-web state)" = running ] || die "demo-web is not running"
[ "$(field demo-worker state)" = running ] || die "demo-worker is not running"
echo "demo-web still pid $WEB_PID, demo-worker still pid $WORKER_PID: running, never restarted"
show supervisorctl events --since "$START_SEQ" --type task.exit
exits=$(supervisorctl events --since "$START_SEQ" --type task.exit --id demo-job --json | wc -l)
[ "$exits" = 1 ] || die "demo-job's exit was recorded $exits times"
status=0
show supervisorctl wait demo-job || status=$?
[ "$status" = 7 ] || die "supervisorctl wait demo-job said $status, not 7"
echo "demo-job's exit (status 7) was recorded exactly once, though it happened with no daemon up"
show supervisorctl logs demo-job

say "Checking: the crash and its restart, recorded once each, in order"
[ "$(field demo-flaky pid)" = "$NEW_FLAKY" ] || die "demo-flaky is not recorded on pid $NEW_FLAKY"
[ "$(field demo-flaky state)" = running ] || die "demo-flaky is not running"
[ "$(field demo-flaky restarts)" = 1 ] || die "demo-flaky's restarts are not 1"
show supervisorctl events --since "$START_FLAKY" --id demo-flaky
order=$(supervisorctl events --since "$START_FLAKY" --id demo-flaky --json | "$PY" -c '
import json, sys
print(" ".join(json.loads(line)["type"] for line in sys.stdin))')
[ "$order" = "task.exit container.restart task.create task.start" ] \
  || die "demo-flaky's events are: $order"
echo "demo-flaky: one exit (status 1), one restart decided by its shim, one new start: none lost,"
echo "none doubled, though all of it happened with no daemon up"
show supervisorctl logs demo-flaky

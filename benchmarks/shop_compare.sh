#!/usr/bin/env bash
# Alternate the shop build (this tree) and the pre-shop build (a worktree of 28b505b) on the
# same throughput configurations, in one session; each run's output goes to OUT/<build>-<cfg>-<i>.txt.
#   git worktree add /tmp/preshop 28b505b        (or PRESHOP=<another checkout>)
#   benchmarks/shop_compare.sh OUT ROUNDS CFG...   (CFG: d005 d05 ovh d005-direct ovh-direct)
# WAIT_QUIET=S waits up to S seconds (default 20) for a quiet machine before each run.
set -u
out=$1; rounds=$2; shift 2
here=$(cd "$(dirname "$0")/.." && pwd)
preshop=${PRESHOP:-/tmp/preshop}
wait_quiet=${WAIT_QUIET:-20}
py=$here/.venv/bin/python
args() {
  case $1 in
    d005) echo "--http --nodes 1 --step-seconds 0.05 --orders 4000" ;;
    d05) echo "--http --nodes 1 --step-seconds 0.5 --orders 500" ;;
    ovh) echo "--http --overhead --orders 3000" ;;
    d005-direct) echo "--nodes 1 --step-seconds 0.05 --orders 4000" ;;
    ovh-direct) echo "--overhead --orders 3000" ;;
  esac
}
mkdir -p "$out"
for i in $(seq 1 "$rounds"); do
  for cfg in "$@"; do
    for build in preshop shop; do
      dir=$here; [ $build = preshop ] && dir=$preshop
      # shellcheck disable=SC2046
      (cd $dir && $py -m benchmarks.throughput $(args "$cfg") --wait-quiet "$wait_quiet" --json) \
        >"$out/$build-$cfg-$i.txt" 2>&1
      echo "$build $cfg $i rc=$? $(grep -E '^  (orders/s|utilization|elsewhere)' "$out/$build-$cfg-$i.txt" | tr -s ' ' | tr '\n' ';')"
    done
  done
done

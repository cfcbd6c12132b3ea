#!/usr/bin/env bash
# Usage: scripts/time_left.sh SECONDS
# Exit 0 when at least SECONDS are left before $BATCH_DEADLINE (epoch seconds, exported by
# scripts/device_batch.sh under BATCH_SECONDS) or when no deadline is set; otherwise say so on
# one line and exit 1, so that `scripts/time_left.sh 330 && long_command` skips work that the
# batch's time limit would cut off half-way (a later call runs it on a fresh budget).
set -u
need=${1:?usage: scripts/time_left.sh SECONDS}
[ -z "${BATCH_DEADLINE:-}" ] && exit 0
left=$(( BATCH_DEADLINE - $(date +%s) ))
[ "$left" -ge "$need" ] && exit 0
echo "# time_left: $left s left, $need s needed: skipped (a later call runs it)"
exit 1

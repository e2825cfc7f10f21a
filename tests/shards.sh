#!/usr/bin/env bash
# `make test`: pytest in two shards side by side, one per core, each output line prefixed with
# its shard; fails if either shard fails. The first shard holds the workflow tests, which wait
# for the whole tiny DAG that builds in the background from their start (and then run one after
# another: the longer part); the second holds every other test.
#
#   tests/shards.sh PYTEST [PYTEST OPTIONS...]
set -uo pipefail
# One core per shard: torch's intra-op threads would only wait on each other's core.
export OMP_NUM_THREADS=1
pytest=${1:?usage: $0 PYTEST [OPTIONS...]}
shift
( "$pytest" "$@" tests/workflow 2>&1 | sed -u 's/^/[workflow] /' ) &
first=$!
"$pytest" "$@" --ignore=tests/workflow 2>&1 | sed -u 's/^/[rest] /'
rest=$?
wait "$first"
first_status=$?
exit $((first_status != 0 ? first_status : rest))

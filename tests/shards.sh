#!/usr/bin/env bash
# `make test`: pytest in two shards side by side, one per core, each line prefixed with its
# shard. The workflow tests wait for the whole tiny DAG, which builds in the background from
# their start; meanwhile the other shard runs every other test. Fails if either shard fails.
#
#   tests/shards.sh PYTEST [PYTEST OPTIONS...]
set -uo pipefail
pytest=${1:?usage: $0 PYTEST [OPTIONS...]}
shift
( "$pytest" "$@" tests/workflow 2>&1 | sed -u 's/^/[workflow] /' ) &
workflow=$!
"$pytest" "$@" --ignore=tests/workflow 2>&1 | sed -u 's/^/[rest] /'
rest=$?
wait "$workflow"
workflow_status=$?
exit $((rest != 0 ? rest : workflow_status))

#!/bin/sh
# bench/peers/kvpress_all.sh - the whole kvpress comparison of
# bench/RESULTS.md section 9 in one command: every press at every share
# kept, the kvx plans inside kvpress, on the perplexity protocol and on
# the task items in both question modes.  The work is split into one
# process per group of presses and mode, run side by side (the model is
# small: each process is bound by Python, not by the GPU), then the
# CSV files are joined.
#
# usage: kvpress_all.sh MODEL ITEMS OUTDIR [TEXT ...]
# environment: KEPT (default 0.1,0.2,0.5), PCTS (the shipped uniform,
# pyramid, ada, layer, kvx and kvx-hybrid plans run, default 10 20 50),
# LIMIT (answer the first N items only), TIME (stop each process after
# so many seconds, default none), PYTHON.
set -eu

[ $# -ge 3 ] || { echo "usage: kvpress_all.sh MODEL ITEMS OUTDIR [TEXT ...]" >&2
	exit 2; }
model=$1 items=$2 out=$3
shift 3
top=$(cd "$(dirname "$0")/../.." && pwd)
py=${PYTHON:-python3}
kept=${KEPT:-0.1,0.2,0.5}
limit=${LIMIT:+--limit $LIMIT}
pcts=${PCTS:-10 20 50}
stop=${TIME:+timeout $TIME}
plans() {	# plans PCT: the shipped plans at PCT% kept
	for m in uniform pyramid ada layer kvx kvx-hybrid; do
		printf ' %s' "$top/plans/smollm2-135m-$m-$1.yaml"
	done
}
mkdir -p "$out"

# groups of presses of about equal cost, then the plans by share kept
groups="snapkv,snapkv-kvx ada-snapkv,criticalada-snapkv
expected-attention,ada-expected-attention kvzip
pyramidkv,streamingllm tova,knorm"
for p in $pcts; do
	groups="$groups plans-$p"
done

run() {	# run NAME ARGS...: one process, its log beside its CSV
	name=$1
	shift
	# shellcheck disable=SC2086
	$stop $py "$top/bench/peers/kvpress_eval.py" --model "$model" --kept "$kept" \
	    "$@" >"$out/$name.log" 2>&1 || echo "kvpress_all.sh: $name failed" >&2
}

i=0
for g in $groups; do
	i=$((i + 1))
	case $g in
	plans-*)
		sel="--presses= --plan $(plans "${g#plans-}")" ;;
	*)
		sel="--presses=$g" ;;
	esac
	if [ $# -gt 0 ]; then
		# shellcheck disable=SC2086
		run "ppl-$i" $sel --text "$@" --ppl-csv "$out/ppl-$i.csv" &
	fi
	for q in after inside; do
		# shellcheck disable=SC2086
		run "tasks-$q-$i" $sel --items "$items" --question $q $limit \
		    --tasks-csv "$out/tasks-$q-$i.csv" &
	done
done
wait

# one CSV per question mode: the first file's header and full-cache
# rows, the other files' rows without them (the perplexity files keep
# their per-text sections: merge.py reads them all, ppl-*.csv)
join() {	# join PATTERN OUTFILE
	first=1
	for f in $1; do
		[ -f "$f" ] || continue
		if [ $first = 1 ]; then
			cat "$f"
			first=0
		else
			grep -v '^plan,\|^full,\|^#' "$f" || true
		fi
	done >"$2"
}
join "$out/tasks-after-*.csv" "$out/kvpress-tasks-after.csv"
join "$out/tasks-inside-*.csv" "$out/kvpress-tasks-inside.csv"

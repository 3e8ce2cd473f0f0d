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
# so many seconds, default none), GPUS (devices to spread the processes
# over, e.g. "0 1"; default the one CUDA picks), PYTHON.
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

# The perplexity protocol: one process per group of presses of about
# equal cost, then per share of the plans (each needs the full cache as
# its reference, so each runs it).  The task items cost far more: one
# process per press (all its shares) and question mode, the plans by
# share in two halves, the full cache once per mode (the others run
# with --no-full).
presses="snapkv snapkv-kvx ada-snapkv criticalada-snapkv expected-attention
ada-expected-attention kvzip pyramidkv streamingllm tova knorm"
groups="snapkv,snapkv-kvx ada-snapkv,criticalada-snapkv
expected-attention,ada-expected-attention kvzip
pyramidkv,streamingllm tova,knorm"
for p in $pcts; do
	groups="$groups plans-$p"
done

slot=0
run() {	# run NAME ARGS...: one process, its log beside its CSV
	name=$1
	shift
	if [ -n "${GPUS:-}" ]; then
		# shellcheck disable=SC2086
		CUDA_VISIBLE_DEVICES=$(echo $GPUS | tr ' ' '\n' |
		    sed -n "$((slot % $(echo $GPUS | wc -w) + 1))p")
		export CUDA_VISIBLE_DEVICES
	fi
	# shellcheck disable=SC2086
	$stop $py "$top/bench/peers/kvpress_eval.py" --model "$model" --kept "$kept" \
	    "$@" >"$out/$name.log" 2>&1 || echo "kvpress_all.sh: $name failed" >&2
}

tasks() {	# tasks NAME SEL...: the items in both question modes
	name=$1
	shift
	for q in after inside; do
		# shellcheck disable=SC2068
		slot=$((slot + 1))
		run "tasks-$q-$name" $@ --items "$items" --question $q $limit \
		    --tasks-csv "$out/tasks-$q-$name.csv" &
	done
}

i=0
if [ $# -gt 0 ]; then
	for g in $groups; do
		i=$((i + 1))
		case $g in
		plans-*)
			sel="--presses= --plan $(plans "${g#plans-}")" ;;
		*)
			sel="--presses=$g" ;;
		esac
		slot=$((slot + 1))
		# shellcheck disable=SC2086
		run "ppl-$i" $sel --text "$@" --ppl-csv "$out/ppl-$i.csv" &
	done
fi
tasks 00-full --presses=
for s in $presses; do
	tasks "$s" --presses="$s" --no-full
done
for p in $pcts; do
	set -- $(plans "$p")
	tasks "plans-$p-a" --presses= --no-full --plan "$1" "$2" "$3"
	tasks "plans-$p-b" --presses= --no-full --plan "$4" "$5" "$6"
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

#!/bin/sh
# Whatever kvx-plan writes, kvx-run runs: baseline plans (static uniform
# and hybrid ada, no profiling) across the window (1 to KVX_WINDOW_MAX),
# the sinks, every pool kind and odd pooling kernels from 1 to 255, each
# run on a short prompt that evicts exactly when the window and sinks
# leave candidates; then values past each bound, refused by kvx-plan
# (exit 2) and, in a plan file, by kvx-run (exit 4).  TAP output.
top_srcdir=${top_srcdir:-.}
top_builddir=${top_builddir:-.}
plan=$top_builddir/planner/kvx-plan
run=$top_builddir/tools/kvx-run
n=0

ok() {	# ok COND-STATUS DESCRIPTION
	n=$((n + 1))
	if [ "$1" -eq 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fi
}

if [ ! -x "$plan" ] || [ ! -x "$run" ]; then
	echo "1..0 # SKIP kvx-plan or kvx-run not built"; exit 0
fi
if [ ! -f "${KVX_MODEL:-}" ]; then echo "1..0 # SKIP model not present"; exit 0; fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
echo "1..23"

# About 27 tokens, and about 170 for the windows near the bound.
short="The quick brown fox jumps over the lazy dog, and then the dog chases the fox around the old barn until both are tired."
long="$short $short $short $short $short $short"

# sweep BASELINE WINDOW SINKS POOL KERNEL GQA PROMPT: plan, run, and check
# that the cache evicted exactly when window + sinks < prompt tokens.
sweep() {
	f=$tmp/$1-w$2-s$3-$4-k$5.yaml
	what="$1 window $2 sinks $3 pool $4 kernel $5 gqa $6"
	if ! "$plan" -m "$KVX_MODEL" --baseline "$1" -b 25% --window "$2" \
	    --sinks "$3" --pool "$4" --pool-kernel "$5" --gqa "$6" \
	    -o "$f" > /dev/null 2> "$tmp/err"; then
		ok 1 "$what: kvx-plan fails: $(cat "$tmp/err")"
		return
	fi
	"$run" -m "$KVX_MODEL" --plan "$f" -p "$7" -n 2 -c 256 -t 2 \
	    --stats > /dev/null 2> "$tmp/stats"
	rc=$?
	awk -v w="$2" -v s="$3" -v rc=$rc '
	    /^prompt_tokens:/ {p = $2} /^generated_tokens:/ {g = $2}
	    /^kv_bytes_used:/ {u = $2} /^kv_bytes_full:/ {f = $2}
	    END {
		evict = w + s < p
		exit !(rc == 0 && g == 2 && u > 0 &&
		    (evict ? u < f : u == f))
	    }' "$tmp/stats"
	ok $? "$what: kvx-run exits $rc, $(grep -E '^(prompt_tokens|kv_bytes_used|kv_bytes_full):' "$tmp/stats" | tr '\n' ' ')"
}

# --- what kvx-plan writes, kvx-run runs -------------------------------------
sweep uniform 1 0 max 1 mean "$short"
sweep uniform 5 4 avg 3 max "$short"
sweep uniform 32 0 none 255 mean "$short"
sweep uniform 9 16 max 31 mean "$short"
sweep uniform 128 4 avg 255 max "$long"
sweep ada 1 4 none 7 max "$short"
sweep ada 32 0 avg 255 mean "$short"
sweep ada 64 2 max 1 mean "$long"
sweep ada 128 0 avg 9 mean "$long"
grep -q '^mode: hybrid$' "$tmp/ada-w128-s0-avg-k9.yaml"
ok $? "ada writes hybrid plans"
grep -q '^  window: 128$' "$tmp/uniform-w128-s4-avg-k255.yaml"
ok $? "the plan holds window 128 (KVX_WINDOW_MAX)"

# --- past the bounds: kvx-plan refuses with exit 2 --------------------------
refuse_plan() {	# refuse_plan WORD OPTION VALUE
	"$plan" -m "$KVX_MODEL" --baseline uniform -b 25% "$2" "$3" \
	    -o "$tmp/bad.yaml" > /dev/null 2> "$tmp/err"
	rc=$?
	[ $rc -eq 2 ] && grep -q -- "$1" "$tmp/err" && [ ! -e "$tmp/bad.yaml" ]
	ok $? "kvx-plan $2 $3: exit $rc ($(cat "$tmp/err"))"
}
refuse_plan 129 --window 129
refuse_plan "'0'" --window 0
refuse_plan 257 --pool-kernel 257
refuse_plan "'8'" --pool-kernel 8
refuse_plan median --pool median
refuse_plan "'-1'" --sinks -1
refuse_plan "'none'" --gqa none

# --- past the bounds in a plan file: kvx-run refuses with exit 4 ------------
good=$tmp/uniform-w5-s4-avg-k3.yaml
refuse_run() {	# refuse_run FIELD SED-EXPRESSION
	sed "$2" "$good" > "$tmp/bad-run.yaml"
	if cmp -s "$good" "$tmp/bad-run.yaml"; then
		ok 1 "kvx-run with $1: the plan was not changed"
		return
	fi
	"$run" -m "$KVX_MODEL" --plan "$tmp/bad-run.yaml" -p "$short" -n 1 \
	    -c 256 -t 2 > /dev/null 2> "$tmp/err"
	rc=$?
	[ $rc -eq 4 ] && grep -q "bad-run.yaml:[0-9]*:[0-9]*: $1" "$tmp/err"
	ok $? "kvx-run with $1 past its bound: exit $rc ($(cat "$tmp/err"))"
}
refuse_run selection.window 's/^  window: 5$/  window: 129/'
refuse_run selection.pool_kernel 's/^  pool_kernel: 3$/  pool_kernel: 257/'
refuse_run selection.pool_kernel 's/^  pool_kernel: 3$/  pool_kernel: 8/'
refuse_run selection.pool 's/^  pool: avg$/  pool: median/'
refuse_run selection.sinks 's/^  sinks: 4$/  sinks: -1/'

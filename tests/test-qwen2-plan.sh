#!/bin/sh
# A qwen2 model plans and runs with its plan: kvx-plan writes a uniform
# baseline plan for tests/data/tiny-qwen2.gguf (and for Qwen2.5-Coder when
# its file is present), kvx-run accepts it and keeps the plan's share of
# the cache, and refuses a plan made for SmolLM2 (exit 4).  TAP output.
top_srcdir=${top_srcdir:-.}
top_builddir=${top_builddir:-.}
plan=$top_builddir/planner/kvx-plan
run=$top_builddir/tools/kvx-run
tiny=$top_srcdir/tests/data/tiny-qwen2.gguf
qwen=${KVX_QWEN2_MODEL:-$top_srcdir/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf}
n=0

ok() {	# ok COND-STATUS DESCRIPTION
	n=$((n + 1))
	if [ "$1" -eq 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fi
}

if [ ! -x "$plan" ] || [ ! -x "$run" ]; then
	echo "1..0 # SKIP kvx-plan or kvx-run not built"; exit 0
fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
echo "1..9"

s="The quick brown fox jumps over the lazy dog, and then the dog chases the fox around the old barn until both are tired."

# check MODEL NAME PROMPT: a 20% uniform plan, then a run under it whose
# allocated cache is 15-30% of the full one.
check() {
	f=$tmp/$2-20.yaml
	"$plan" -m "$1" --baseline uniform -b 20% -o "$f" > /dev/null \
	    2> "$tmp/err"
	ok $? "$2: kvx-plan --baseline uniform -b 20% $(head -c 200 "$tmp/err")"
	grep -q '^  arch: qwen2$' "$f"
	ok $? "$2: the plan names architecture qwen2"
	"$run" -m "$1" --plan "$f" -p "$3" -n 2 --stats > /dev/null \
	    2> "$tmp/stats"
	st=$?
	r=$(sed -n 's/^kv_ratio: //p' "$tmp/stats")
	awk -v r="${r:-9}" -v st=$st 'BEGIN { exit !(st == 0 && r >= 0.15 && r <= 0.3) }'
	ok $? "$2: kvx-run with the plan keeps ${r:-no} of the full cache"
}

check "$tiny" tiny "$s $s $s"
"$run" -m "$tiny" --plan "$top_srcdir/plans/smollm2-135m-kvx-20.yaml" \
    -p "$s" -n 1 > /dev/null 2> "$tmp/err"
st=$?
[ $st -eq 4 ] && grep -q 'arch llama, model has qwen2' "$tmp/err"
ok $? "tiny: a SmolLM2 plan is refused, exit $st: $(cat "$tmp/err")"

if [ -f "$qwen" ]; then
	check "$qwen" qwen2.5-coder "$s $s $s $s $s $s $s $s"
	"$run" -m "$qwen" --chat -p "What is the capital of France?" -n 10 \
	    > "$tmp/out" 2> "$tmp/err"
	grep -q Paris "$tmp/out"
	ok $? "qwen2.5-coder: --chat answers Paris ($(cat "$tmp/out" "$tmp/err" | head -c 100))"
	"$run" -m "$qwen" -p "The capital of France is" -n 1 > "$tmp/out" 2>&1
	grep -q '^ Paris' "$tmp/out"
	ok $? "qwen2.5-coder: the capital of France is$(cat "$tmp/out")"
else
	for i in 1 2 3 4 5; do
		ok 0 "qwen2.5-coder # SKIP not present (tools/fetch-model --model qwen2.5-coder-0.5b)"
	done
fi

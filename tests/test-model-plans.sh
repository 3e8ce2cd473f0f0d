#!/bin/sh
# The shipped plans of Qwen2.5-Coder-0.5B and Gemma 3 270M (make
# plans-models): every one is accepted by kvx-run for its model and runs,
# and Gemma's record the model's sliding windows, which plans made without
# them lack and kvx-run refuses (exit 4); test-window checks that the
# 20% kvx plan allocates what it says.  A model whose file is absent
# (tools/fetch-model --model NAME) has its checks skipped.  TAP output.
top_srcdir=${top_srcdir:-.}
top_builddir=${top_builddir:-.}
run=$top_builddir/tools/kvx-run
qwen=${KVX_QWEN2_MODEL:-$top_srcdir/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf}
gemma=${KVX_GEMMA3_MODEL:-$top_srcdir/models/gemma-3-270m-q4_k_m.gguf}
n=0

ok() {	# ok COND-STATUS DESCRIPTION
	n=$((n + 1))
	if [ "$1" -eq 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fi
}
skip() {	# skip DESCRIPTION REASON
	n=$((n + 1))
	echo "ok $n - $1 # SKIP $2"
}

if [ ! -x "$run" ]; then
	echo "1..0 # SKIP kvx-run not built"; exit 0
fi
if [ ! -r "$qwen" ] && [ ! -r "$gemma" ]; then
	echo "1..0 # SKIP neither model is present (tools/fetch-model --model qwen2.5-coder-0.5b, --model gemma3-270m)"
	exit 0
fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
echo "1..5"
s="The quick brown fox jumps over the lazy dog, and then the dog chases the fox around the old barn."

# plans MODEL NAME: every shipped plan of NAME runs under kvx-run on MODEL.
plans() {
	set -- "$1" "$2" "$top_srcdir"/plans/"$2"-*.yaml
	model=$1 name=$2; shift 2
	cnt=0 bad=0
	for p in "$@"; do
		[ -r "$p" ] || continue
		cnt=$((cnt + 1))
		if ! "$run" -m "$model" --plan "$p" -p "$s" -n 1 \
		    > /dev/null 2> "$tmp/err"; then
			bad=$((bad + 1))
			echo "# $p: $(head -n 1 "$tmp/err")"
		fi
	done
	[ "$cnt" -eq 24 ] && [ "$bad" -eq 0 ]
	ok $? "$name: the $cnt shipped plans (six methods at four budgets) run on the model ($bad refused)"
}

if [ -r "$qwen" ]; then
	plans "$qwen" qwen2.5-coder-0.5b
	! grep -l sliding_window "$top_srcdir"/plans/qwen2.5-coder-0.5b-*.yaml > /dev/null
	ok $? "qwen2.5-coder-0.5b: no plan records a sliding window (every layer is global)"
else
	skip "qwen2.5-coder-0.5b plans" "model absent"
	skip "qwen2.5-coder-0.5b windows" "model absent"
fi

if [ -r "$gemma" ]; then
	w="  sliding_window: [512, 512, 512, 512, 512, 0, 512, 512, 512, 512, 512, 0, 512, 512, 512, 512, 512, 0]"
	plans "$gemma" gemma3-270m
	cnt=$(grep -lxF "$w" "$top_srcdir"/plans/gemma3-270m-*.yaml | wc -l)
	[ "$cnt" -eq 24 ]
	ok $? "gemma3-270m: every plan records the five local layers' window of 512 to each global one ($cnt)"
	grep -vxF "$w" "$top_srcdir/plans/gemma3-270m-uniform-20.yaml" |
	    grep -v '^  reference_bytes' > "$tmp/nowin.yaml"
	"$run" -m "$gemma" --plan "$tmp/nowin.yaml" -p "$s" -n 1 \
	    > /dev/null 2> "$tmp/err"
	st=$?
	[ $st -eq 4 ] && grep -q "sliding window of 0 on layer 0, model has 512" "$tmp/err"
	ok $? "gemma3-270m: a plan without the windows is refused, exit 4 ($st: $(head -c 160 "$tmp/err"))"
else
	skip "gemma3-270m plans" "model absent"
	skip "gemma3-270m windows" "model absent"
	skip "gemma3-270m plan without windows" "model absent"
fi

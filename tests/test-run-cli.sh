#!/bin/sh
# kvx-run's documented exit codes and --stats output (kvx-run(1)).  TAP.
top_srcdir=${top_srcdir:-.}
top_builddir=${top_builddir:-.}
run=$top_builddir/tools/kvx-run
m=${KVX_MODEL:-}
if [ ! -f "$m" ]; then echo "1..0 # SKIP model not present"; exit 0; fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
n=0
# check DESC WANT_RC WANT_STDERR_RE -- command...
check() {
	desc=$1 want=$2 re=$3; shift 4
	"$@" >"$tmp/out" 2>"$tmp/err"; rc=$?
	n=$((n + 1))
	if [ "$rc" -eq "$want" ] && grep -Eq "$re" "$tmp/err" &&
	    [ "$want" -eq 0 -o "$(wc -l < "$tmp/err")" -eq 1 ]; then
		echo "ok $n - $desc: exit $rc"
	else
		echo "not ok $n - $desc: exit $rc, want $want"
		sed 's/^/# /' "$tmp/err" | head -5
	fi
}
head -c 5000000 "$m" > "$tmp/trunc.gguf"
printf 'not a model' > "$tmp/text.gguf"
head -c 9000 /usr/share/common-licenses/GPL-3 > "$tmp/doc.txt"
sed 's/^\(  fingerprint:\) [0-9a-f]*$/\1 0000000000000000000000000000000000000000000000000000000000000000/' \
    "$top_srcdir/plans/smollm2-135m-uniform-20.yaml" > "$tmp/other.yaml"
echo "1..13"
check "no model" 2 "no model given" -- "$run" -p hi
check "both -p and -f" 2 "exactly one of" -- "$run" -m "$m" -p hi -f "$tmp/doc.txt"
check "bad -n" 2 "not an integer" -- "$run" -m "$m" -p hi -n lots
check "missing model file" 3 "No such file" -- "$run" -m "$tmp/none.gguf" -p hi
check "truncated model" 3 "extends past the end of the file" -- "$run" -m "$tmp/trunc.gguf" -p hi
check "not a GGUF file" 3 "not a GGUF file|bad magic" -- "$run" -m "$tmp/text.gguf" -p hi
check "malformed plan" 4 "plan-bad-syntax.yaml:[0-9]+:[0-9]+:" -- "$run" -m "$m" -p hi \
    --plan "$top_srcdir/tests/data/plan-bad-syntax.yaml"
check "plan for another model" 4 "fingerprint" -- "$run" -m "$m" -p hi --plan "$tmp/other.yaml"
check "prompt beyond the context" 2 "exceeds the context" -- "$run" -m "$m" -f "$tmp/doc.txt" -c 64
check "one prompt file only" 2 "unexpected argument '.*doc.txt'" -- "$run" -m "$m" \
    -f "$tmp/doc.txt" "$tmp/doc.txt"
check "25% plan on a 2000-token document" 0 "^kv_ratio: 0\.2[0-9]" -- "$run" -m "$m" \
    -f "$tmp/doc.txt" -n 8 --stats --plan "$top_srcdir/plans/smollm2-135m-uniform-20.yaml"
n=$((n + 1))
keys=$(sed -n 's/^\([a-z_]*\): .*/\1/p' "$tmp/err" | tr '\n' ' ')
case "$keys" in
"load_s weights prompt_tokens generated_tokens prefill_tok_s decode_tok_s kv_bytes kv_bytes_used kv_bytes_full kv_ratio select_s select_share plan ")
	echo "ok $n - --stats prints the documented keys";;
*)	echo "not ok $n - --stats prints the documented keys: $keys";;
esac
n=$((n + 1))
help=$("$run" --help | sed -n 's/^ *\(-[a-zA-Z], \)\{0,1\}--\([a-z-]*\).*/\2/p' |
    sort)
doc=$(grep '^\.It Fl' "$top_srcdir/man/kvx-run.1" | grep -o 'Fl -[a-z-]*' |
    sed 's/^Fl -//' | sort -u)
if [ -n "$help" ] && [ "$help" = "$doc" ]; then
	echo "ok $n - kvx-run --help and kvx-run(1) list the same options"
else
	echo "not ok $n - kvx-run --help and kvx-run(1) list the same options"
fi

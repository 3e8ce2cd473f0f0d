#!/bin/sh
# kvx-eval on a short real text: full-cache perplexity against llama.cpp's
# (tests/golden/ppl.txt, made by tools/golden-ppl.py), a 100% plan equal to
# the full cache, a 25% plan's exact byte count, the CSV and plot formats,
# several files after one --plan or --text, and the documented exit codes
# of kvx-eval(1).  TAP output.
top_srcdir=${top_srcdir:-.}
top_builddir=${top_builddir:-.}
eval_bin="$top_builddir/tools/kvx-eval"
golden="$top_srcdir/tests/golden/ppl.txt"
text=/usr/share/common-licenses/GPL-3
# the model tests/golden/ppl.txt was made with (kvx fingerprint)
want_fp=5487cbe27cb2d7a94c2b04aa364e08ef3dc286dfe42e358c4f2f816dccf9a026

skip_all() { echo "1..0 # SKIP $1"; exit 77; }
[ -x "$eval_bin" ] || skip_all "kvx-eval not built"
[ -f "${KVX_MODEL:-}" ] || skip_all "model not present"
[ -f "$text" ] || skip_all "$text not present"
golden_val() { sed -n "s/^$1 //p" "$golden"; }
if command -v sha256sum >/dev/null &&
    [ "$(sha256sum < "$text" | cut -d' ' -f1)" != "$(golden_val sha256)" ]; then
	skip_all "$text differs from the text of the golden values"
fi
fp=$("$eval_bin" -m "$KVX_MODEL" --print-fingerprint) ||
    skip_all "cannot open the model"
[ "$fp" = "$want_fp" ] || skip_all "KVX_MODEL is not the default model"

tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
n=0
fails=0
ok() {
	n=$((n + 1))
	if [ "$1" -eq 0 ]; then echo "ok $n - $2"
	else echo "not ok $n - $2"; fails=$((fails + 1)); fi
}
check() { desc=$1; shift; "$@"; ok $? "$desc"; }

# A static plan for SmolLM2-135M (30 layers, 3 KV heads) written by hand
# after kvx-plan(5), so that the planner's own output is not under test.
mkplan() {
	{
		printf 'kvx_plan: 1\nmethod: %s\nmodel:\n  arch: llama\n' "$3"
		printf '  layers: 30\n  heads: 9\n  kv_heads: 3\n  head_dim: 64\n'
		printf '  fingerprint: %s\n' "$fp"
		printf 'budget:\n  fraction: %s\n  reference_context: 512\n' "$2"
		printf 'selection:\n  window: 32\n  pool: max\n  pool_kernel: 7\n'
		printf '  gqa: mean\n  sinks: 4\n  min_tokens: 0\nmode: static\n'
		printf 'budgets:\n'
		i=0
		while [ $i -lt 30 ]; do
			printf -- '- [%s, %s, %s]\n' "$2" "$2" "$2"
			i=$((i + 1))
		done
	} > "$tmp/$1.yaml"
}
mkplan u100 1.0 uniform
mkplan u25 0.25 uniform

# --- one run: full cache, 100% and 25% plans, and one pass-key trial ------
"$eval_bin" -m "$KVX_MODEL" --plan "$tmp/u100.yaml" --plan "$tmp/u25.yaml" \
    --text "$text" --context 512 --continuation 32 --passkey \
    --passkey-lengths 256 --passkey-depths 50 --seed 3 -q \
    --csv "$tmp/out.csv" --plot "$tmp/out.svg" > "$tmp/out.txt" 2>"$tmp/err"
ok $? "kvx-eval runs with two plans and the pass key"
sed 's/^/# /' "$tmp/out.txt"
row() { grep "^$1," "$tmp/out.csv"; }
field() { row "$1" | cut -d, -f"$2"; }

check "the CSV header is the documented one" \
    test "$(head -n 1 "$tmp/out.csv")" = \
    "plan,method,budget,kv_bytes,kv_bytes_full,ppl,ppl_full,kl,top1"
check "a comment line names the text" grep -qx "# text: $text" "$tmp/out.csv"
check "one row of 9 fields per plan and the full cache" \
    test "$(grep -v '^#' "$tmp/out.csv" | grep -v '^passkey,' |
    awk -F, 'NF == 9' | wc -l)" -eq 4
check "the text has as many tokens as llama.cpp finds" \
    grep -q "GPL-3 ($(golden_val tokens) tokens)" "$tmp/out.txt"

ppl=$(field full 6)
ref=$(golden_val ppl)
echo "# full-cache perplexity $ppl, llama.cpp $ref"
check "full-cache perplexity within 2% of llama.cpp (8-bit activations)" \
    awk -v a="$ppl" -v b="$ref" \
    'BEGIN { d = (a - b) / b; exit !(d < 0.02 && d > -0.02) }'
check "ppl_full column holds the full cache's perplexity" \
    test "$(field u25 7)" = "$ppl"
check "100% plan: KL < 1e-6" awk -v k="$(field u100 8)" \
    'BEGIN { exit !(k >= 0 && k < 1e-6) }'
check "100% plan: top-1 agreement 1" awk -v t="$(field u100 9)" \
    'BEGIN { exit !(t == 1) }'
check "100% plan: same perplexity as the full cache" \
    test "$(field u100 6)" = "$ppl"
# 30 layers x 3 KV heads x 512 tokens x 64 x (K, V) x 4-byte floats
check "kv_bytes_full is the full cache of 512 tokens" \
    test "$(field u25 5)" -eq $((30 * 3 * 512 * 64 * 2 * 4))
check "25% plan keeps exactly a quarter of the bytes" \
    test $(($(field u25 4) * 4)) -eq "$(field u25 5)"
check "25% plan: method and budget columns come from the plan" \
    test "$(field u25 2),$(field u25 3)" = "uniform,0.25"
check "25% plan changes the distributions (KL > 0, top-1 <= 1)" \
    awk -v k="$(field u25 8)" -v t="$(field u25 9)" \
    'BEGIN { exit !(k > 1e-4 && t > 0 && t <= 1) }'

pk=$(grep -c '^passkey,' "$tmp/out.csv")
check "pass key: one row per plan and variant" test "$pk" -eq 6
check "pass key: rows have 10 fields, 5-digit keys, match = (answer = key)" \
    awk -F, '/^passkey,/ { if (NF != 10 || $8 !~ /^[0-9][0-9][0-9][0-9][0-9]$/ ||
    $10 != ($9 == $8)) bad = 1 } END { exit bad }' "$tmp/out.csv"
check "pass key: the 100% plan answers as the full cache" \
    test "$(grep '^passkey,full,' "$tmp/out.csv" | cut -d, -f5- )" = \
    "$(grep '^passkey,u100,' "$tmp/out.csv" | cut -d, -f5-)"
check "the plot is an SVG with a line per method" \
    grep -q '<polyline' "$tmp/out.svg"
check "the plot is well-formed XML" python3 -c \
    "import sys, xml.dom.minidom; xml.dom.minidom.parse(sys.argv[1])" \
    "$tmp/out.svg"

# --- several files after one --plan and one --text ----------------------------
head -c 3000 "$text" > "$tmp/second.txt"
small="--context 64 --continuation 16 -q"
"$eval_bin" -m "$KVX_MODEL" --plan "$tmp/u100.yaml" "$tmp/u25.yaml" \
    --text "$text" "$tmp/second.txt" $small --csv "$tmp/one.csv" \
    > "$tmp/one.txt" &&
    "$eval_bin" -m "$KVX_MODEL" --plan "$tmp/u100.yaml" \
    --plan "$tmp/u25.yaml" --text "$text" --text "$tmp/second.txt" $small \
    --csv "$tmp/two.csv" > "$tmp/two.txt" &&
    cmp -s "$tmp/one.csv" "$tmp/two.csv" && cmp -s "$tmp/one.txt" "$tmp/two.txt"
ok $? "two files after one --plan and one --text: the run of two of each"
check "every file is evaluated: two texts and their mean, three rows each" \
    test "$(grep -c '^# text: ' "$tmp/one.csv"),$(grep -c \
    '^# mean over 2 texts$' "$tmp/one.csv"),$(grep -c '^u25,' \
    "$tmp/one.csv"),$(grep -v '^#' "$tmp/one.csv" | sed 1d | wc -l)" = \
    "2,1,3,9"

# --- errors: exit code and one line naming the problem ------------------------
# expect CODE PATTERN ARGS...: kvx-eval exits CODE with one line matching
expect() {
	code=$1; pat=$2; shift 2
	"$eval_bin" "$@" > /dev/null 2> "$tmp/e"
	rc=$?
	[ $rc -eq "$code" ] && [ "$(wc -l < "$tmp/e")" -eq 1 ] &&
	    grep -q "^kvx-eval: .*$pat" "$tmp/e"
	r=$?
	[ $r -eq 0 ] || echo "# exit $rc: $(cat "$tmp/e")"
	return $r
}
M=$KVX_MODEL
head -c 2000 "$text" > "$tmp/short.txt"
check "short text: exit 5, says how many tokens it has" \
    expect 5 "short.txt: [0-9]* tokens, fewer than --context 512" \
    -m "$M" --text "$tmp/short.txt" --context 512 --continuation 32
check "missing text: exit 5" expect 5 "nope.txt: No such file" \
    -m "$M" --text "$tmp/nope.txt"
check "plan for another model: exit 4, names the field" \
    expect 4 "plan-static-fraction.yaml: .*layers 4, model has 30" \
    -m "$M" --text "$text" \
    --plan "$top_srcdir/tests/data/plan-static-fraction.yaml"
check "malformed plan: exit 4" expect 4 "plan-bad-syntax.yaml" -m "$M" \
    --text "$text" --plan "$top_srcdir/tests/data/plan-bad-syntax.yaml"
sed "s/$fp/$(echo "$fp" | tr 0-9a-f 1-9a-f0)/" "$tmp/u25.yaml" > "$tmp/fp.yaml"
check "plan with another fingerprint: exit 4" \
    expect 4 "fp.yaml: .*fingerprint" -m "$M" --text "$text" \
    --plan "$tmp/fp.yaml"
check "missing plan: exit 4" expect 4 "nope.yaml" -m "$M" --text "$text" \
    --plan "$tmp/nope.yaml"
check "missing model: exit 3" expect 3 "nope.gguf" -m "$tmp/nope.gguf" \
    --text "$text"
check "bad number: exit 2" expect 2 "--context: 'abc' is not an integer" \
    -m "$M" --text "$text" --context abc
check "negative continuation: exit 2" expect 2 "--continuation: '-3'" \
    -m "$M" --text "$text" --continuation -3
check "context beyond --ctx: exit 2" expect 2 "exceeds the context size" \
    -m "$M" --text "$text" --context 4096 --ctx 1024
check "bad depth list: exit 2" expect 2 "--passkey-depths: '101'" \
    -m "$M" --text "$text" --passkey --passkey-depths 0,101
check "no text: exit 2" expect 2 "no text given" -m "$M"
check "unwritable CSV: exit 6" expect 6 "no/such/dir/x.csv" -m "$M" \
    --text "$text" --context 512 --continuation 32 \
    --csv "$tmp/no/such/dir/x.csv"
check "unknown option: exit 2" expect 2 "unknown option --bogus" -m "$M" \
    --text "$text" --bogus
check "a word that belongs to no option: exit 2" \
    expect 2 "unexpected argument 'stray'" -m "$M" --context 64 stray
check "a prefix of two options: exit 2" expect 2 "option --cont is ambiguous" \
    -m "$M" --text "$text" --cont 64
check "a unique prefix is the option" expect 2 "--continuation: 'x'" \
    -m "$M" --text "$text" --contin=x

# --- the manual documents the options --help lists, and no others -------------
help=$("$eval_bin" --help |
    sed -n 's/^ *\(-[a-zA-Z], \)\{0,1\}--\([a-z-]*\).*/\2/p' | sort)
doc=$(grep '^\.It Fl' "$top_srcdir/man/kvx-eval.1" | grep -o 'Fl -[a-z-]*' |
    sed 's/^Fl -//' | sort -u)
check "kvx-eval --help and kvx-eval(1) list the same options" \
    test -n "$help" -a "$help" = "$doc"

echo "1..$n"
[ $fails -eq 0 ]

#!/bin/sh
# Run the EXAMPLES of kvx-plan(1) on the default model with a tiny corpus
# (two licence texts every Debian system has), then check the plans they
# write against hand-computed values and the exit status and one-line
# message of each documented error.  TAP output.
top_srcdir=${top_srcdir:-.}
top_builddir=${top_builddir:-.}
plan=$top_builddir/planner/kvx-plan
man=$top_srcdir/man/kvx-plan.1
gpl=/usr/share/common-licenses/GPL-3
apache=/usr/share/common-licenses/Apache-2.0
fast="--samples 2 --sample-tokens 256"
n=0

ok() {	# ok COND-STATUS DESCRIPTION
	n=$((n + 1))
	if [ "$1" -eq 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fi
}

if [ ! -x "$plan" ]; then echo "1..0 # SKIP kvx-plan not built"; exit 0; fi
if [ ! -f "${KVX_MODEL:-}" ]; then echo "1..0 # SKIP model not present"; exit 0; fi
if [ ! -f "$gpl" ] || [ ! -f "$apache" ]; then
	echo "1..0 # SKIP $gpl or $apache missing"; exit 0
fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
echo "1..58"

# --- the manual's examples -------------------------------------------------
sed -n 's/^\.Dl \$ //p' "$man" | grep '^kvx-plan ' > "$tmp/examples"
[ "$(wc -l < "$tmp/examples")" -eq 6 ]
ok $? "six examples extracted from kvx-plan.1"
# the directory of text files the last example globs
mkdir "$tmp/corpus" && cp "$gpl" "$tmp/corpus/gpl.txt" &&
    cp "$apache" "$tmp/corpus/apache.txt"
i=0
while IFS= read -r line; do
	i=$((i + 1))
	# the model path, and a small profile wherever text is profiled
	args=$(printf '%s\n' "$line" | sed "s|^kvx-plan ||; s|model.gguf|$KVX_MODEL|")
	case "$args" in *" -c "*) args="$args $fast";; esac
	(cd "$tmp" && eval "\"$OLDPWD/$plan\" $args" > "out$i" 2> "err$i")
	rc=$?
	[ $rc -eq 0 ]
	ok $? "example $i exits 0: $line"
	[ $rc -eq 0 ] || sed 's/^/# /' "$tmp/err$i"
done < "$tmp/examples"

# --- the plans the examples wrote ------------------------------------------
u=$tmp/uniform-25.yaml
# 30 layers x 3 KV heads x 4096 tokens x 64 dims x K,V x 4 bytes
grep -q '^  reference_bytes_full: 188743680$' "$u"
ok $? "uniform: full cache bytes = 30*3*4096*64*2*4"
grep -q '^  reference_bytes: 47185920$' "$u"
ok $? "uniform: planned bytes = a quarter of that"
[ "$(grep -c '^- \[0.25, 0.25, 0.25\]$' "$u")" -eq 30 ]
ok $? "uniform: 30 rows of 0.25"

k=$tmp/kvx-20.yaml
awk '/reference_bytes:/ {b=$2} /reference_bytes_full:/ {f=$2}
    END {exit !(b > 0 && b <= 0.2 * f)}' "$k"
ok $? "kvx 20%: planned bytes within the budget"
awk '/predicted_retention:/ {p=$2} /uniform_retention:/ {u=$2}
    END {exit !(p > u && u > 0 && p <= 1)}' "$k"
ok $? "kvx 20%: predicted retention above uniform's"
grep -q '^  samples: 2$' "$k" && grep -q '^  corpus: GPL-3,Apache-2.0$' "$k"
ok $? "kvx 20%: provenance records samples and corpus"
grep -q '^mode: hybrid$' "$tmp/kvx-hybrid-20.yaml"
ok $? "hybrid example writes a hybrid plan"
[ "$(grep -c '<rect x=' "$tmp/kvx-hybrid-20.svg")" -eq 41 ] &&
    grep -q '</svg>' "$tmp/kvx-hybrid-20.svg"
ok $? "heatmap: 30 layer cells and 11 legend cells"
grep -q 'solver greedy' "$tmp/out4" && grep -q 'concave' "$tmp/out4"
ok $? "greedy reports whether the curves were concave"
grep -q '^  tokens: 512$' "$tmp/layer-512.yaml" &&
    grep -q '^method: layer$' "$tmp/layer-512.yaml"
ok $? "layer example writes a tokens plan"
# XKV: every row holds one value three times
awk '/^- \[/ {gsub(/[][,-]/, ""); if ($1 != $2 || $2 != $3) bad=1}
    END {exit bad}' "$tmp/layer-512.yaml"
ok $? "layer plan: heads of a layer share one budget"
grep -q '^  corpus: apache.txt,gpl.txt$' "$tmp/corpus-20.yaml"
ok $? "glob example: the plan was profiled on every file, in order"

# --- baselines without a corpus ------------------------------------------------
"$plan" -m "$KVX_MODEL" --method pyramid -b 10% -q -o "$tmp/pyr.yaml"
ok $? "pyramid needs no corpus"
# mean 0.10, first layer largest, decreasing
awk '/^- \[/ {gsub(/[][,-]/, ""); s += $1; n++; v[n] = $1}
    END {for (i = 2; i <= n; i++) if (v[i] > v[i-1] + 1e-12) bad = 1;
    m = s / n; exit !(n == 30 && !bad && m > 0.1 - 1e-9 && m < 0.1 + 1e-9 &&
    v[1] > 0.19)}' "$tmp/pyr.yaml"
ok $? "pyramid: mean share 10%, first layer about 2B - B/20, non-increasing"

# --- reproducibility --------------------------------------------------------------
"$plan" -m "$KVX_MODEL" -c "$gpl" -c "$apache" $fast --seed 7 -q \
    --save-profile "$tmp/a.prof" && "$plan" -m "$KVX_MODEL" -c "$gpl" \
    -c "$apache" $fast --seed 7 -q --save-profile "$tmp/b.prof" &&
    cmp -s "$tmp/a.prof" "$tmp/b.prof"
ok $? "same seed, same profile"
"$plan" -m "$KVX_MODEL" -c "$gpl" "$apache" $fast --seed 7 -q \
    --save-profile "$tmp/c.prof" && cmp -s "$tmp/a.prof" "$tmp/c.prof"
ok $? "two files after one -c: the profile of two -c"
"$plan" -m "$KVX_MODEL" -c - "$apache" $fast --seed 7 -q \
    --save-profile "$tmp/stdin.prof" < "$gpl" &&
    grep -q '^corpus -,Apache-2.0$' "$tmp/stdin.prof" &&
    [ "$(grep -v '^corpus ' "$tmp/stdin.prof")" = \
    "$(grep -v '^corpus ' "$tmp/a.prof")" ]
ok $? "-c - reads standard input among the files"
# as a shell expands -c corpus/*: the files in its order, then options
mkdir "$tmp/glob" && cp "$gpl" "$apache" "$tmp/glob/" &&
    "$plan" -m "$KVX_MODEL" -c "$tmp"/glob/* $fast --seed 7 -q \
    --save-profile "$tmp/glob.prof" && "$plan" -m "$KVX_MODEL" \
    -c "$apache" -c "$gpl" $fast --seed 7 -q --save-profile "$tmp/ag.prof" &&
    cmp -s "$tmp/glob.prof" "$tmp/ag.prof" &&
    grep -q '^corpus Apache-2.0,GPL-3$' "$tmp/glob.prof"
ok $? "a glob after -c: every file, in the shell's order"
# a retention curve never decreases and ends at 1
awk '/^curve/ {for (i = 5; i <= NF; i++) if ($i < $(i-1)) bad = 1;
    if ($NF < 0.999999) bad = 1; c++} END {exit !(c == 90 && !bad)}' "$tmp/a.prof"
ok $? "90 curves, each non-decreasing and ending at 1"

# --- errors: exit status and one line ------------------------------------------
err() {	# err WANT-STATUS PATTERN DESCRIPTION -- ARGS...
	want=$1 pat=$2 what=$3; shift 4
	"$plan" "$@" > /dev/null 2> "$tmp/e"
	rc=$?
	[ $rc -eq "$want" ] && [ "$(wc -l < "$tmp/e")" -eq 1 ] &&
	    grep -q "^kvx-plan: .*$pat" "$tmp/e"
	ok $? "$what: exit $want ($(cat "$tmp/e"))"
	[ $rc -eq "$want" ] || echo "# got exit $rc"
}
: > "$tmp/empty.txt"
printf 'A short text.\n' > "$tmp/short.txt"
err 4 "has 0 tokens" "empty corpus" -- -m "$KVX_MODEL" -c "$tmp/empty.txt" $fast
err 4 "has [0-9]* tokens, fewer than one sample of 256" "too-short corpus" -- \
    -m "$KVX_MODEL" -c "$tmp/short.txt" $fast
err 4 "nonexistent" "missing corpus file" -- -m "$KVX_MODEL" -c "$tmp/nonexistent"
err 4 "nonexistent" "missing second file after one -c" -- -m "$KVX_MODEL" \
    -c "$gpl" "$tmp/nonexistent"
err 2 "unknown solver 'simplex'" "unknown solver" -- -m "$KVX_MODEL" \
    --solver simplex --from-profile "$tmp/a.prof"
err 6 "exists.*--force" "existing output without --force" -- \
    -m "$KVX_MODEL" --method uniform -o "$u"
err 5 "infeasible budget" "budget below the window and sinks" -- \
    -m "$KVX_MODEL" --method uniform -b 0.5%
err 5 "infeasible budget" "floors above the budget" -- -m "$KVX_MODEL" \
    --from-profile "$tmp/a.prof" -b 10% --min-frac 0.5
err 2 "needs calibration text" "kvx without a corpus" -- -m "$KVX_MODEL" -b 20%
sed 's/^fingerprint .*/fingerprint 0000000000000000000000000000000000000000000000000000000000000000/' \
    "$tmp/a.prof" > "$tmp/other.prof"
err 3 "another model" "profile of another model" -- -m "$KVX_MODEL" \
    --from-profile "$tmp/other.prof"
err 3 "" "model that is not GGUF" -- -m "$gpl" --method uniform
err 2 "unknown option --bogus" "unknown option" -- -m "$KVX_MODEL" --bogus
err 2 "option -c needs a value" "-c without a file" -- -m "$KVX_MODEL" -c
err 2 "unexpected argument 'stray'" "a word that belongs to no option" -- \
    -m "$KVX_MODEL" --method uniform stray
err 2 "--grid: '1' is not an integer in \[2, " "a number out of range" -- \
    -m "$KVX_MODEL" --grid 1
# --device gpu where no GPU can be used: exit 7 (test-plan-gpu.sh compares
# the devices where one can)
if nvidia-smi -L 2>/dev/null | grep -q '^GPU' &&
    grep -q '^#define HAVE_CUDA 1' "$top_builddir/config.h" 2>/dev/null; then
	ok 0 "--device gpu without a usable GPU # SKIP a GPU is usable here"
else
	err 7 "--device gpu: .*use --device cpu)$" \
	    "--device gpu without a usable GPU" -- -m "$KVX_MODEL" -c "$gpl" \
	    $fast --device gpu
fi
err 2 "unknown device 'tpu' (auto, cpu or gpu)" "an unknown device" -- \
    -m "$KVX_MODEL" -c "$gpl" --device tpu

# --- --validate: the plan against uniform budgets on probes ------------------
err 2 "--validate applies to methods kvx, layer and pyramid" \
    "--validate with uniform budgets" -- -m "$KVX_MODEL" --method uniform \
    -c "$gpl" --validate 2
err 2 "--validate with --page: a blend" "--validate with --page" -- \
    -m "$KVX_MODEL" --from-profile "$tmp/a.prof" -c "$gpl" --page 16 \
    --validate 2
err 2 "--validate needs calibration text" "--validate without -c" -- \
    -m "$KVX_MODEL" --from-profile "$tmp/a.prof" --validate 2
err 2 "give files, not standard input" "--validate with -c -" -- \
    -m "$KVX_MODEL" -c - $fast --validate 2
err 2 "not both (both only with --validate" "-c with --from-profile" -- \
    -m "$KVX_MODEL" -c "$gpl" --from-profile "$tmp/a.prof"
err 4 "fewer than a probe's 256" "--validate on too short a text" -- \
    -m "$KVX_MODEL" --from-profile "$tmp/a.prof" -c "$tmp/short.txt" \
    --sample-tokens 256 -b 20% --validate 1
"$plan" -m "$KVX_MODEL" --from-profile "$tmp/a.prof" -c "$gpl" "$apache" \
    --sample-tokens 256 -b 20% --validate 3 --validate-question after \
    -o "$tmp/val.yaml" > "$tmp/val.out" 2> "$tmp/val.err"
ok $? "--validate 3 --validate-question after writes a plan"
[ "$(grep -c ' kept$' "$tmp/val.out")" -eq 1 ] &&
    [ "$(grep -c '^  [01]\.[0-9][0-9] .* [0-3]/3' "$tmp/val.out")" -eq 5 ]
ok $? "the validation table: five levels, one kept"
# the budgets written: uniform's 0.2 moved the kept blend toward the plan's
a=$(sed -n 's/^  validation: \([0-9.]*\) of the way from uniform to the solved plan, on 3 probes of 256 tokens, question after$/\1/p' \
    "$tmp/val.yaml")
"$plan" -m "$KVX_MODEL" --from-profile "$tmp/a.prof" -b 20% -q \
    -o "$tmp/noval.yaml" &&
    awk -v a="$a" 'FNR == 1 {f++} /^- \[/ {gsub(/[][,-]/, " ");
    for (i = 1; i <= NF; i++) v[f, ++k[f]] = $i}
    END {if (a == "" || k[1] != 90 || k[2] != 90) exit 1;
    for (i = 1; i <= 90; i++) {d = v[1, i] - (0.2 + a * (v[2, i] - 0.2));
    if (d > 1e-9 || d < -1e-9) exit 1}}' "$tmp/val.yaml" "$tmp/noval.yaml"
ok $? "validated budgets = 0.2 + blend (unvalidated - 0.2), blend ${a:-missing}"

"$plan" -m "$KVX_MODEL" --from-profile "$tmp/a.prof" -c "$gpl" \
    --sample-tokens 256 -b 20% --mode hybrid --validate 2 \
    -o "$tmp/valh.yaml" > "$tmp/valh.out" 2> "$tmp/err" &&
    grep -q '^  validation: [01]\.[0-9][0-9] of the way from ada to the solved plan, on 2 probes of 256 tokens, question inside$' \
    "$tmp/valh.yaml" && grep -q '^  0\.00 (ada) ' "$tmp/valh.out"
ok $? "a hybrid plan is validated against ada budgets, question inside"

# --- Expected Attention's span ------------------------------------------------
"$plan" -m "$KVX_MODEL" --method uniform -b 20% --scorer expected-attention \
    -q -o "$tmp/ea-all.yaml" && grep -q '^  queries: all$' "$tmp/ea-all.yaml"
ok $? "an expected-attention plan takes every prompt query by default"
"$plan" -m "$KVX_MODEL" --method uniform -b 20% --scorer expected-attention \
    --ea-queries 64 -q -o "$tmp/ea-64.yaml" &&
    grep -q '^  queries: 64$' "$tmp/ea-64.yaml"
ok $? "--ea-queries 64 writes queries: 64"
err 2 "bad span '129' (all, or a count of the last queries in \[2, 128\])" \
    "a span past the 128 queries a context keeps" -- -m "$KVX_MODEL" \
    --method uniform --scorer expected-attention --ea-queries 129
err 2 "applies to the expected-attention scorer only" \
    "--ea-queries under another scorer" -- -m "$KVX_MODEL" --method uniform \
    --ea-queries 64

# --- the manual documents the options -h lists, and no others ----------------
help=$("$plan" -h | sed -n 's/^ *\(-[a-zA-Z], \)\{0,1\}--\([a-z-]*\).*/\2/p' |
    sort)
doc=$(grep '^\.It Fl' "$man" | grep -o 'Fl -[a-z-]*' | sed 's/^Fl -//' |
    sort -u)
[ -n "$help" ] && [ "$help" = "$doc" ]
ok $? "kvx-plan -h and kvx-plan(1) list the same $(echo $help | wc -w) options"

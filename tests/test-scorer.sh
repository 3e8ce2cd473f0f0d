#!/bin/sh
# kvx-plan --scorer: every baseline and a profiled plan record the scorer
# and its parameters, profiling scores with it (the curves change), a
# profile keeps it, and kvx-run runs expected-attention and kvzip plans
# and reports what selection cost; every shipped plan runs; bad scorers
# are usage errors.  TAP output.
top_srcdir=${top_srcdir:-.}
top_builddir=${top_builddir:-.}
plan=$top_builddir/planner/kvx-plan
run=$top_builddir/tools/kvx-run
eval_bin=$top_builddir/tools/kvx-eval
gpl=/usr/share/common-licenses/GPL-3
fast="--samples 2 --sample-tokens 256"
n=0

ok() {	# ok COND-STATUS DESCRIPTION
	n=$((n + 1))
	if [ "$1" -eq 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fi
}

if [ ! -x "$plan" ] || [ ! -x "$run" ] || [ ! -x "$eval_bin" ]; then
	echo "1..0 # SKIP kvx-plan, kvx-run or kvx-eval not built"; exit 0
fi
if [ ! -f "${KVX_MODEL:-}" ]; then echo "1..0 # SKIP model not present"; exit 0; fi
if [ ! -f "$gpl" ]; then echo "1..0 # SKIP $gpl missing"; exit 0; fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
echo "1..19"

# the selection lines an expected-attention plan ends with, defaults of
# kvx-plan(5)
ea_lines() {	# ea_lines PLAN
	sed -n '/^  scorer: /p; /^expected_attention:/,/^[a-z]/p' "$1" |
	    grep -v '^mode:'
}
want="  scorer: expected-attention
expected_attention:
  queries: all
  future: 512
  covariance: full
  value_norm: true"

# --- baselines ------------------------------------------------------------
for m in uniform pyramid ada; do
	"$plan" -m "$KVX_MODEL" --baseline $m --budget 20% -q \
	    --scorer expected-attention -o "$tmp/$m-ea.yaml" &&
	    [ "$(ea_lines "$tmp/$m-ea.yaml")" = "$want" ]
	ok $? "$m baseline records expected-attention and its defaults"
done
"$plan" -m "$KVX_MODEL" --baseline uniform --budget 20% -q \
    -o "$tmp/uniform.yaml" && "$plan" -m "$KVX_MODEL" --baseline uniform \
    --budget 20% -q --scorer snapkv -o "$tmp/uniform-snapkv.yaml" &&
    ! grep -q 'scorer\|expected_attention' "$tmp/uniform.yaml" &&
    cmp -s "$tmp/uniform.yaml" "$tmp/uniform-snapkv.yaml"
ok $? "snapkv is the default and is not written"
# apart from the scorer, the plans are the same
sed '/^  scorer: /d; /^expected_attention:/,/^  value_norm:/d' \
    "$tmp/uniform-ea.yaml" | cmp -s - "$tmp/uniform.yaml"
ok $? "the scorer changes nothing else in a baseline"

# --- usage errors ---------------------------------------------------------
kz_want="  scorer: kvzip
kvzip:
  chunk: 128
  prompt: chat"
kz_lines() {	# kz_lines PLAN
	sed -n '/^  scorer: /p; /^kvzip:/,/^[a-z]/p' "$1" | grep -v '^mode:'
}
"$plan" -m "$KVX_MODEL" --baseline ada --budget 20% -q --scorer kvzip \
    -o "$tmp/ada-kvzip.yaml" &&
    [ "$(kz_lines "$tmp/ada-kvzip.yaml")" = "$kz_want" ]
ok $? "a baseline records kvzip and its defaults"
"$plan" -m "$KVX_MODEL" --baseline uniform --budget 20% --scorer h2o \
    -o "$tmp/h2o.yaml" 2> "$tmp/err"
[ $? -eq 2 ] && [ "$(wc -l < "$tmp/err")" -eq 1 ] &&
    grep -q "unknown scorer 'h2o'" "$tmp/err"
ok $? "--scorer h2o: exit 2, unknown scorer"

# --- profiling with the scorer --------------------------------------------
"$plan" -m "$KVX_MODEL" -c "$gpl" $fast --budget 20% -q --scorer \
    expected-attention --save-profile "$tmp/ea.prof" -o "$tmp/kvx-ea.yaml" &&
    [ "$(ea_lines "$tmp/kvx-ea.yaml")" = "$want" ]
ok $? "a profiled plan records expected-attention"
grep -q '^scorer expected-attention$' "$tmp/ea.prof"
ok $? "the profile records the scorer"
"$plan" -m "$KVX_MODEL" -c "$gpl" $fast --budget 20% -q \
    --save-profile "$tmp/snapkv.prof" -o "$tmp/kvx.yaml" &&
    ! grep -q '^scorer' "$tmp/snapkv.prof"
ok $? "a snapkv profile has no scorer line"
# same samples, same windows: only the scores differ, and so the curves
[ "$(grep -c '^curve ' "$tmp/ea.prof")" -eq 90 ] &&
    ! cmp -s "$tmp/ea.prof" "$tmp/snapkv.prof" &&
    [ "$(grep -v '^r\{0,1\}curve \|^scorer ' "$tmp/ea.prof")" = \
    "$(grep -v '^r\{0,1\}curve ' "$tmp/snapkv.prof")" ]
ok $? "profiling scores with the scorer: the curves differ, nothing else"
"$plan" -m "$KVX_MODEL" --from-profile "$tmp/ea.prof" --budget 20% -q \
    -o "$tmp/from.yaml" && [ "$(ea_lines "$tmp/from.yaml")" = "$want" ]
ok $? "--from-profile takes the profile's scorer"
"$plan" -m "$KVX_MODEL" --from-profile "$tmp/ea.prof" --budget 20% -q \
    --scorer snapkv -o "$tmp/clash.yaml" 2> "$tmp/err"
[ $? -eq 2 ] && grep -q -- '--scorer expected-attention' "$tmp/err" &&
    [ ! -e "$tmp/clash.yaml" ]
ok $? "--scorer against the profile's: exit 2, names the profile's"

# --- the runtime ------------------------------------------------------------
prompt="The licence says that the program is free software, and that you
can redistribute it and modify it under the terms of the licence."
for p in uniform-ea kvx-ea; do
	"$run" -m "$KVX_MODEL" --plan "$tmp/$p.yaml" -p "$prompt" -n 4 \
	    --stats > "$tmp/$p.out" 2> "$tmp/$p.err" &&
	    [ -s "$tmp/$p.out" ]
	ok $? "kvx-run runs the $p plan"
done
"$plan" -m "$KVX_MODEL" -c "$gpl" $fast --budget 20% -q --scorer kvzip \
    --save-profile "$tmp/kvzip.prof" -o "$tmp/kvx-kvzip.yaml" &&
    [ "$(kz_lines "$tmp/kvx-kvzip.yaml")" = "$kz_want" ] &&
    grep -q '^scorer kvzip$' "$tmp/kvzip.prof" &&
    ! cmp -s "$tmp/kvzip.prof" "$tmp/ea.prof"
ok $? "a plan profiled with kvzip records it, and its curves are its own"
sed 's/^  min_tokens: 0$/&\n  scorer: kvzip\nkvzip:\n  chunk: 32\n  prompt: plain/' \
    "$tmp/uniform.yaml" > "$tmp/kvzip.yaml"
for p in kvzip kvx-kvzip; do
	"$run" -m "$KVX_MODEL" --plan "$tmp/$p.yaml" -p "$prompt" -n 4 \
	    --stats > "$tmp/$p.out" 2> "$tmp/err" && [ -s "$tmp/$p.out" ] &&
	    awk '/^select_share: / { ok = $2 > 0 && $2 < 1 } END { exit !ok }' \
	    "$tmp/err"
	ok $? "kvx-run runs the $p plan, its selection a share of the prefill"
done

# --- the shipped plans, every scorer --------------------------------------
set -- "$top_srcdir"/plans/smollm2-135m-*.yaml
np=$#
"$eval_bin" -m "$KVX_MODEL" --plan "$@" --text "$gpl" --context 300 \
    --continuation 8 -q --csv "$tmp/shipped.csv" > /dev/null 2> "$tmp/err" &&
    [ "$(grep -v '^#' "$tmp/shipped.csv" |
    awk -F, 'NR > 1 && NF == 9 && $6 > 0' | wc -l)" -eq $((np + 1)) ] &&
    [ "$(grep -c -- '-kvzip-' "$tmp/shipped.csv")" -ge 12 ]
ok $? "kvx-eval loads and runs the $np shipped plans, kvzip's among them"

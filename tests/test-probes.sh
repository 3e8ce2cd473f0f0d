#!/bin/sh
# kvx-plan's retrieval probes and its two objectives on the default model
# with a tiny corpus: the profile's retrieval curves and its format (the
# version before them still loads), the floor and the weight as the
# summary reports them, the default objective by architecture (output-abs,
# output where block outputs are normalised: tests/data/tiny-gemma3.gguf),
# and the exit status and one-line message of each documented error.  TAP
# output.
top_builddir=${top_builddir:-.}
plan=$top_builddir/planner/kvx-plan
gpl=/usr/share/common-licenses/GPL-3
fast="--samples 2 --sample-tokens 256"
n=0

ok() {	# ok COND-STATUS DESCRIPTION
	n=$((n + 1))
	if [ "$1" -eq 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fi
}

# err STATUS PATTERN DESCRIPTION -- ARGS: kvx-plan exits STATUS with one
# line on standard error that matches PATTERN
err() {
	want=$1 pat=$2 what=$3
	shift 4
	"$plan" "$@" > /dev/null 2> "$tmp/err"
	rc=$?
	[ $rc -eq "$want" ] && [ "$(wc -l < "$tmp/err")" -eq 1 ] &&
	    grep -q -- "$pat" "$tmp/err"
	ok $? "$what: exit $want, '$pat'"
	[ $rc -eq "$want" ] || echo "# exit $rc: $(cat "$tmp/err")"
}

if [ ! -x "$plan" ]; then echo "1..0 # SKIP kvx-plan not built"; exit 0; fi
if [ ! -f "${KVX_MODEL:-}" ]; then echo "1..0 # SKIP model not present"; exit 0; fi
if [ ! -f "$gpl" ]; then echo "1..0 # SKIP $gpl missing"; exit 0; fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
echo "1..35"
M="-m $KVX_MODEL"

# --- the profile ------------------------------------------------------------
"$plan" $M -c "$gpl" $fast -q --save-profile "$tmp/p.prof" &&
    [ "$(head -1 "$tmp/p.prof")" = "kvx-profile 2" ] &&
    [ "$(grep -c '^curve ' "$tmp/p.prof")" -eq 90 ] &&
    [ "$(grep -c '^rcurve ' "$tmp/p.prof")" -eq 90 ] &&
    grep -q '^probe_samples 2$' "$tmp/p.prof" &&
    grep -q '^probes 4$' "$tmp/p.prof"
ok $? "2 samples at the default share: two probes, 90 retrieval curves"
# a head the probes need: its retrieval curve falls further at 10% kept
# than its prose curve (the 26th grid level of 256 is 10%)
awk '/^curve / {p[$2, $3] = 1 - $29} /^rcurve / {r[$2, $3] = 1 - $29}
    END {for (k in r) if (r[k] > p[k] + 0.01) n++; exit !(n > 0)}' \
    "$tmp/p.prof"
ok $? "some head loses more retrieval than prose at 10% kept"
"$plan" $M -c "$gpl" $fast -q --probe-share 0 --save-profile "$tmp/n.prof" &&
    ! grep -q '^rcurve ' "$tmp/n.prof" &&
    grep -q '^probe_samples 0$' "$tmp/n.prof"
ok $? "--probe-share 0: no retrieval curves"
# a probe window is measured as prose before its question: its prose
# curve is near the curve of the same window without the probe (the
# seed draws the same window), nearer than its retrieval curve is
"$plan" $M -c "$gpl" --samples 1 --sample-tokens 256 -q --probe-share 1 \
    --save-profile "$tmp/one.prof" &&
    "$plan" $M -c "$gpl" --samples 1 --sample-tokens 256 -q \
    --probe-share 0 --save-profile "$tmp/one0.prof" &&
    grep -q '^probe_samples 1$' "$tmp/one.prof" &&
    awk 'FNR == 1 {f++}
	f == 1 && /^curve / {for (i = 4; i <= NF; i++) p[$2, $3, i] = $i}
	f == 1 && /^rcurve / {for (i = 4; i <= NF; i++) q[$2, $3, i] = $i}
	f == 2 && /^curve / {for (i = 4; i <= NF; i++) {
		d = p[$2, $3, i] - $i; dp += d < 0 ? -d : d
		d = q[$2, $3, i] - $i; dq += d < 0 ? -d : d; n++}}
	END {printf "# mean |dR| prose %.4f, retrieval %.4f\n", dp / n, dq / n
	    exit !(n == 90 * 256 && dp < dq / 2)}' "$tmp/one.prof" "$tmp/one0.prof"
ok $? "one window with a probe: its prose curve is the window's prose"
# the format before retrieval curves: version 1, none of the new keys
sed -e '1s/.*/kvx-profile 1/' -e '/^probes /d' -e '/^probe_samples /d' \
    -e '/^profile_tokens /d' "$tmp/n.prof" > "$tmp/v1.prof"
"$plan" $M --from-profile "$tmp/v1.prof" -b 20% > "$tmp/out" &&
    ! grep -q '^retrieval' "$tmp/out"
ok $? "a profile of format 1 loads, and plans without retrieval"
sed '1s/.*/kvx-profile 3/' "$tmp/p.prof" > "$tmp/v3.prof"
err 4 "profile format 3, this kvx-plan reads 1 to 2" "a newer format" -- \
    $M --from-profile "$tmp/v3.prof"
sed '/^rcurve 7 1 /d' "$tmp/p.prof" > "$tmp/short.prof"
err 4 "90 curves and 89 retrieval curves" "a retrieval curve missing" -- \
    $M --from-profile "$tmp/short.prof"

# --- the objective by architecture --------------------------------------------
case $(basename "$KVX_MODEL") in
*gemma*) want=output ;;
*) want=output-abs ;;
esac
grep -q "^objective $want\$" "$tmp/p.prof"
ok $? "the default objective on $(basename "$KVX_MODEL"): $want"
# gemma3 normalises its blocks' outputs: the default is output, measured
# through the norm, and an explicit objective is kept
tiny=${top_srcdir:-.}/tests/data/tiny-gemma3.gguf
g="-m $tiny -c $gpl $fast --probe-share 0 --window 8 --sinks 2 -q"
"$plan" $g -b 50% --save-profile "$tmp/g.prof" > /dev/null &&
    grep -q '^objective output$' "$tmp/g.prof"
ok $? "the default objective on tiny-gemma3: output"
"$plan" $g -b 50% --objective output-abs --save-profile "$tmp/ga.prof" \
    > /dev/null && grep -q '^objective output-abs$' "$tmp/ga.prof" &&
    ! cmp -s "$tmp/g.prof" "$tmp/ga.prof"
ok $? "--objective output-abs on tiny-gemma3: kept, other curves"

# --- the two objectives -------------------------------------------------------
# retrieval retention of the plan as the summary prints it
ret() { sed -n 's/^retrieval retention \([0-9.]*\),.*/\1/p' "$1"; }
"$plan" $M --from-profile "$tmp/p.prof" -b 20% --retrieval-weight 0 \
    > "$tmp/w0" &&
    "$plan" $M --from-profile "$tmp/p.prof" -b 20% --retrieval-weight 1 \
    > "$tmp/w1" && [ -n "$(ret "$tmp/w0")" ] &&
    awk -v a="$(ret "$tmp/w0")" -v b="$(ret "$tmp/w1")" \
    'BEGIN {exit !(b >= a)}'
ok $? "--retrieval-weight 1 keeps at least the retrieval of weight 0"
"$plan" $M --from-profile "$tmp/p.prof" -b 20% -q -o "$tmp/def.yaml" &&
    "$plan" $M --from-profile "$tmp/p.prof" -b 20% -q -o "$tmp/w1.yaml" \
    --retrieval-weight 1 && cmp -s "$tmp/def.yaml" "$tmp/w1.yaml"
ok $? "the default weight is 1 at 20%"
"$plan" $M --from-profile "$tmp/p.prof" -b 10% -q -o "$tmp/def10.yaml" &&
    "$plan" $M --from-profile "$tmp/p.prof" -b 10% -q -o "$tmp/w03.yaml" \
    --retrieval-weight 0.3 && cmp -s "$tmp/def10.yaml" "$tmp/w03.yaml" &&
    "$plan" $M --from-profile "$tmp/p.prof" -b 10% -q -o "$tmp/w1b.yaml" \
    --retrieval-weight 1 && ! cmp -s "$tmp/def10.yaml" "$tmp/w1b.yaml"
ok $? "the default weight is 0.3 at 10% (and differs from 1 there)"
"$plan" $M --from-profile "$tmp/p.prof" -b 20% --retrieval-floor 1 \
    2> "$tmp/err"
rc=$?
best=$(sed -n 's/.*at most \([0-9.]*\).*/\1/p' "$tmp/err")
[ $rc -eq 5 ] && [ -n "$best" ] &&
    grep -q "retrieval floor 1.0000 is not reachable at budget 20.00%" \
    "$tmp/err"
ok $? "an unreachable floor: exit 5, the most the budget reaches ($best)"
# half-way between the plan's retrieval and the most: binding, reachable
fl=$(awk -v a="$(ret "$tmp/w0")" -v b="$best" 'BEGIN {print (a + b) / 2}')
for s in dp glpk; do
	"$plan" $M --from-profile "$tmp/p.prof" -b 20% --solver $s \
	    --retrieval-floor "$fl" -o "$tmp/f-$s.yaml" > "$tmp/f-$s" &&
	    awk -v r="$(ret "$tmp/f-$s")" -v f="$fl" \
	    'BEGIN {exit !(r + 5e-5 >= f)}' &&
	    grep -q "solver $s" "$tmp/f-$s"
	ok $? "--retrieval-floor $fl with $s: the plan's retrieval is above it"
done
"$plan" $M --from-profile "$tmp/p.prof" -b 20% --retrieval-floor "$fl" \
    > "$tmp/f-def" 2>&1 && grep -q "solver glpk\|solver dp" "$tmp/f-def"
ok $? "a floor without --solver: glpk when built in, else dp"
# the floor costs prose: the plan's objective is at most the unbound one's
awk '/objective:/ {print $2}' "$tmp/f-dp.yaml" > "$tmp/o1" &&
    "$plan" $M --from-profile "$tmp/p.prof" -b 20% -q -o "$tmp/free.yaml" \
    --retrieval-weight 0 &&
    awk -v a="$(cat "$tmp/o1")" '/objective:/ {exit !($2 >= a - 1e-9)}' \
    "$tmp/free.yaml"
ok $? "the floor costs prose retention, never gains it"

# --- the question after the compressed context (kvzip) -----------------------
# under kvzip a probe's question may come after the compressed context:
# the profile records it, the default (inside) does not, and the two
# measure other retrieval curves
"$plan" $M -c "$gpl" $fast -q --scorer kvzip --probe-question after \
    --save-profile "$tmp/za.prof" &&
    "$plan" $M -c "$gpl" $fast -q --scorer kvzip \
    --save-profile "$tmp/zi.prof" &&
    grep -q '^probe_question after$' "$tmp/za.prof" &&
    ! grep -q '^probe_question' "$tmp/zi.prof" &&
    grep '^rcurve ' "$tmp/za.prof" > "$tmp/za.r" &&
    grep '^rcurve ' "$tmp/zi.prof" > "$tmp/zi.r" &&
    ! cmp -s "$tmp/za.r" "$tmp/zi.r"
ok $? "kvzip: the question inside by default, after on request"
# at 0% kept only the sinks and the window stay: after keeps the question
# and the context's last w tokens, inside the question and fewer context
# tokens (the window is the prompt's last w, the question's ~20 among
# them), so after loses less of the answer's attention on most heads
awk 'FNR == 1 {f++} /^rcurve / {r[f, $2, $3] = $4}
    END {for (k in r) {split(k, a, SUBSEP); if (a[1] != 1) continue
	n++; if (r[1, a[2], a[3]] >= r[2, a[2], a[3]]) up++}
	printf "# %d of %d heads retain as much at 0%% after as inside\n", up, n
	exit !(n == 90 && up > n * 0.8)}' "$tmp/za.prof" "$tmp/zi.prof"
ok $? "kvzip, question after: the question and the context's window kept"
"$plan" $M --from-profile "$tmp/za.prof" -b 20% -q -o "$tmp/za.yaml" &&
    grep -q '^  scorer: kvzip$' "$tmp/za.yaml"
ok $? "a question-after profile loads and plans"
sed 's/^probe_question after$/probe_question sideways/' "$tmp/za.prof" \
    > "$tmp/zbad.prof"
err 4 "malformed profile line" "an unknown probe question mode" -- \
    $M --from-profile "$tmp/zbad.prof"
err 2 "--probe-question after needs --scorer kvzip" "question after, snapkv" \
    -- $M -c "$gpl" $fast --probe-question after
# snapkv: --probe-question inside is the default
"$plan" $M -c "$gpl" $fast -q --probe-question inside \
    --save-profile "$tmp/pi.prof" &&
    cmp -s "$tmp/p.prof" "$tmp/pi.prof"
ok $? "snapkv: --probe-question inside is the default profile"

# --- the probes' haystack ---------------------------------------------------
# a span of the prose said again and again, or the two kinds in turn: the
# profile records which (prose, the default, is not written), and each
# measures other retrieval curves
"$plan" $M -c "$gpl" $fast -q --probe-hay repeat --save-profile "$tmp/hr.prof" &&
    "$plan" $M -c "$gpl" $fast -q --probe-hay mixed     --save-profile "$tmp/hm.prof" &&
    grep -q '^probe_hay repeat$' "$tmp/hr.prof" &&
    grep -q '^probe_hay mixed$' "$tmp/hm.prof" &&
    ! grep -q '^probe_hay' "$tmp/p.prof" &&
    grep '^rcurve ' "$tmp/p.prof" > "$tmp/p.r" &&
    grep '^rcurve ' "$tmp/hr.prof" > "$tmp/hr.r" &&
    grep '^rcurve ' "$tmp/hm.prof" > "$tmp/hm.r" &&
    ! cmp -s "$tmp/p.r" "$tmp/hr.r" && ! cmp -s "$tmp/p.r" "$tmp/hm.r" &&
    ! cmp -s "$tmp/hr.r" "$tmp/hm.r"
ok $? "--probe-hay repeat and mixed: recorded, other retrieval curves"
"$plan" $M -c "$gpl" $fast -q --probe-hay prose --save-profile "$tmp/hp.prof" &&
    cmp -s "$tmp/p.prof" "$tmp/hp.prof"
ok $? "--probe-hay prose is the default profile"
"$plan" $M --from-profile "$tmp/hm.prof" -b 20% -q -o "$tmp/hm.yaml" &&
    grep -q '^method: kvx$' "$tmp/hm.yaml"
ok $? "a mixed-haystack profile loads and plans"
sed 's/^probe_hay mixed$/probe_hay gravel/' "$tmp/hm.prof" > "$tmp/hbad.prof"
err 4 "malformed profile line" "an unknown probe haystack in a profile" -- \
    $M --from-profile "$tmp/hbad.prof"
err 2 "unknown probe haystack 'gravel'" "an unknown --probe-hay" -- \
    $M -c "$gpl" $fast --probe-hay gravel

# --- errors -----------------------------------------------------------------
err 2 "greedy does not support a retrieval floor" "greedy with a floor" -- \
    $M --from-profile "$tmp/p.prof" -b 20% --solver greedy \
    --retrieval-floor 0.5
err 2 "apply to methods kvx and layer" "a floor for uniform" -- \
    $M --method uniform -b 20% --retrieval-floor 0.5
err 2 "no retrieval curves" "a floor without retrieval curves" -- \
    $M --from-profile "$tmp/n.prof" -b 20% --retrieval-floor 0.5
err 2 "no retrieval curves for --retrieval-weight" "a weight without the curves" \
    -- $M --from-profile "$tmp/n.prof" -b 20% --retrieval-weight 1
err 2 "take .* of the 256 sample tokens" "probes too long for the sample" -- \
    $M -c "$gpl" $fast --probes 64
err 2 "retrieval probes measure the output objective" "probes and mass" -- \
    $M -c "$gpl" $fast --objective mass

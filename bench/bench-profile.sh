#!/bin/sh
# bench/bench-profile.sh - what the lightweight variant of kvx-plan costs
# and what it changes: profile S windows of T tokens with the lightweight
# variant (local attention span SPAN, the last LIGHT tokens of each window)
# and with the full model (full attention over all T tokens), retrieval
# probes included in both, then compare the wall times, the retention
# curves, and the plans they lead to, both plans scored on the full
# model's curves.
#
# usage: bench/bench-profile.sh [model.gguf [corpus files ...]]
# env:   KVX_PLAN (the kvx-plan binary), SAMPLES (8), TOKENS (2048),
#        LIGHT (1024), BUDGET (20%), SPAN (512), RW (the retrieval weight,
#        1 as kvx-plan's default), PLAN_ARGS (more kvx-plan options for
#        both), OUT (a directory to keep the files in)
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
plan=${KVX_PLAN:-$top/planner/kvx-plan}
model=${1:-${KVX_MODEL:-$top/models/SmolLM2-135M-Instruct.Q4_1.gguf}}
[ $# -gt 0 ] && shift
if [ $# -eq 0 ]; then
	set -- "$top"/corpus/*.txt
	[ -f "$1" ] || { echo "bench-profile: no corpus (run tools/fetch-corpus)" >&2; exit 1; }
fi
S=${SAMPLES:-8} T=${TOKENS:-2048} LIGHT=${LIGHT:-1024} B=${BUDGET:-20%}
SPAN=${SPAN:-512} ARGS=${PLAN_ARGS:-} RW=${RW:-1}
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
corpus=""
for f in "$@"; do corpus="$corpus -c $f"; done

# run NAME SPAN TOKENS: profile, save the curves and a kvx plan at the
# budget; prints the wall and the CPU seconds (user + system), the latter
# less swayed by other work on a shared machine
run() {
	/usr/bin/time -f "%e %U %S" -o "$out/$1.time" "$plan" -m "$model" \
	    $corpus --samples "$S" --sample-tokens "$T" --profile-span "$2" \
	    --profile-tokens "$3" -b "$B" -q -f --retrieval-weight "$RW" $ARGS \
	    --save-profile "$out/$1.prof" -o "$out/$1.yaml"
	awk '{printf "%.2f %.2f\n", $1, $2 + $3}' "$out/$1.time"
}

light=$(run light "$SPAN" "$LIGHT")
full=$(run full 0 0)

# curves: mean and largest absolute difference over all grid points
curve=$(awk 'FNR == 1 {file++} /^curve/ {
	k = $2 " " $3
	for (i = 4; i <= NF; i++) {
		if (file == 1) c[k, i] = $i
		else { d = $i - c[k, i]; if (d < 0) d = -d; s += d; n++
		       if (d > m) m = d }
	}
    } END {printf "%.5f %.5f\n", s / n, m}' "$out/light.prof" "$out/full.prof")
# plans: mean and largest absolute difference of the budget shares
plans=$(awk 'FNR == 1 {file++; r = 0} /^- \[/ {
	gsub(/[][,-]/, ""); r++
	for (i = 1; i <= NF; i++) {
		if (file == 1) b[r, i] = $i
		else { d = $i - b[r, i]; if (d < 0) d = -d; s += d; n++
		       if (d > m) m = d }
	}
    } END {printf "%.5f %.5f\n", s / n, m}' "$out/light.yaml" "$out/full.yaml")
# score PLAN: the plan's summed prose and retrieval retention on the full
# model's curves (linear between grid levels), as the solver counts them
score() {
	awk 'FNR == 1 {file++}
	    file == 1 && /^grid / {G = $2}
	    file == 1 && /^curve / {for (i = 4; i <= NF; i++) R[$2, $3, i - 4] = $i}
	    file == 1 && /^rcurve / {for (i = 4; i <= NF; i++) Q[$2, $3, i - 4] = $i; hasq = 1}
	    file == 2 && /^- \[/ {gsub(/[][,]/, ""); sub(/^- /, "")
		for (h = 1; h <= NF; h++) {
			x = $h * (G - 1); j = int(x); if (j >= G - 1) j = G - 2
			a = x - j; l = r + 0
			p += R[l, h - 1, j] + a * (R[l, h - 1, j + 1] - R[l, h - 1, j])
			if (hasq) q += Q[l, h - 1, j] + a * (Q[l, h - 1, j + 1] - Q[l, h - 1, j])
			n++
		}
		r++}
	    END {printf "%.6f %.6f %d\n", p, hasq ? q : -1, n}' "$out/full.prof" "$1"
}
sl=$(score "$out/light.yaml")
sf=$(score "$out/full.yaml")

printf 'profile %s samples x %s tokens, %s, budget %s, %s CPUs\n' "$S" "$T" \
    "$(basename "$model")" "$B" "$(nproc)"
printf '%-32s %8s %6s %8s %6s %10s %10s\n' variant wall ratio cpu ratio \
    prose retrieval
echo "$sf $full" | awk '{printf "%-32s %8.2f %6.2f %8.2f %6.2f %10.6f %10.6f\n", "full (span 0, all tokens)", $4, 1, $5, 1, $1 / $3, $2 / $3}'
echo "$sl $light $full" | awk -v s="$SPAN" -v n="$LIGHT" \
    '{printf "%-32s %8.2f %6.2f %8.2f %6.2f %10.6f %10.6f\n", "lightweight (span " s ", last " n ")", $4, $4 / $6, $5, $5 / $7, $1 / $3, $2 / $3}'
# the solver's objective, prose + RW x retrieval summed over the heads,
# and its loss against keeping everything (1 + RW per head)
echo "$sl $sf" | awk -v w="$RW" '{a = $1 + w * ($2 < 0 ? 0 : $2)
	b = $4 + w * ($5 < 0 ? 0 : $5); top = $3 * (1 + ($2 < 0 ? 0 : w))
	printf "objective (prose + %s x retrieval on the full curves): light/full %.6f, loss light/full %.4f\n", w, a / b, (top - a) / (top - b)}'
echo "$curve" | awk '{printf "curve distance: mean |dR| %s, max %s\n", $1, $2}'
echo "$plans" | awk '{printf "plan distance: mean |db| %s, max %s\n", $1, $2}'
echo "files in $out"

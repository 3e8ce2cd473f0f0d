#!/bin/sh
# bench/bench-profile.sh - what the lightweight variant of kvx-plan costs
# and what it changes: profile S samples of T tokens with the lightweight
# variant and with the full model (--profile-span 0), then compare the
# wall times, the retention curves and the plans they lead to.
#
# usage: bench/bench-profile.sh [model.gguf [corpus files ...]]
# env:   KVX_PLAN (the kvx-plan binary), SAMPLES (8), TOKENS (2048),
#        BUDGET (20%), SPAN (512), OUT (a directory to keep the files in)
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
plan=${KVX_PLAN:-$top/planner/kvx-plan}
model=${1:-${KVX_MODEL:-$top/models/SmolLM2-135M-Instruct.Q4_1.gguf}}
[ $# -gt 0 ] && shift
if [ $# -eq 0 ]; then
	set -- "$top"/corpus/*.txt
	[ -f "$1" ] || { echo "bench-profile: no corpus (run tools/fetch-corpus)" >&2; exit 1; }
fi
S=${SAMPLES:-8} T=${TOKENS:-2048} B=${BUDGET:-20%} SPAN=${SPAN:-512}
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
corpus=""
for f in "$@"; do corpus="$corpus -c $f"; done

now() { date +%s.%N; }

# run NAME SPAN: profile, save the curves and a kvx plan at the budget
run() {
	t0=$(now)
	"$plan" -m "$model" $corpus --samples "$S" --sample-tokens "$T" \
	    --profile-span "$2" -b "$B" -q -f --save-profile "$out/$1.prof" \
	    -o "$out/$1.yaml"
	t1=$(now)
	echo "$t0 $t1" | awk '{printf "%.2f\n", $2 - $1}'
}

light=$(run light "$SPAN")
full=$(run full 0)

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
ret() { sed -n 's/^  predicted_retention: //p' "$1"; }

printf 'profile %s samples x %s tokens, %s, budget %s, %s CPUs\n' "$S" "$T" \
    "$(basename "$model")" "$B" "$(nproc)"
printf '%-24s %10s %8s %12s\n' variant seconds ratio retention
printf '%-24s %10s %8s %12.4f\n' "full (span 0)" "$full" 1.00 "$(ret "$out/full.yaml")"
printf '%-24s %10s %8.2f %12.4f\n' "lightweight (span $SPAN)" "$light" \
    "$(echo "$light $full" | awk '{print $1 / $2}')" "$(ret "$out/light.yaml")"
echo "$curve" | awk '{printf "curve distance: mean |dR| %s, max %s\n", $1, $2}'
echo "$plans" | awk '{printf "plan distance: mean |db| %s, max %s\n", $1, $2}'
echo "files in $out"

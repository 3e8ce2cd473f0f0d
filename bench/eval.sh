#!/bin/sh
# bench/eval.sh - the quality evaluation of kvx: every method at several
# budgets against the full cache, on the evaluation texts of
# tools/fetch-evaltext (perplexity, KL, top-1) and, unless PASSKEY=0, pass-key
# retrieval.  Writes bench/eval.csv (format: kvx-eval(1)), bench/eval.svg
# and the table as bench/eval.txt.  The defaults take about half an hour
# on two CPU cores, most of it in the 8K-token pass-key prefills.
#
# usage: bench/eval.sh [BUILDDIR]     (default: the source tree)
# environment:
#   KVX_MODEL        model (default models/SmolLM2-135M-Instruct.Q4_1.gguf)
#   BUDGETS          budgets in percent (default "10 25 50")
#   METHODS          methods (default "uniform pyramid ada layer kvx");
#                    layer and kvx need the calibration corpus
#                    (tools/fetch-corpus) and are left out without it
#   CONTEXT, CONTINUATION   tokens (default 4096 and 256)
#   PASSKEY          1 (default) or 0
#   PASSKEY_LENGTHS  default 1024,2048,4096,8192
#   THREADS          worker threads (default: all CPUs)
#   OUT              output directory (default bench/)
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$top}" && pwd)
eval_bin=$build/tools/kvx-eval
plan_bin=$build/planner/kvx-plan
model=${KVX_MODEL:-$top/models/SmolLM2-135M-Instruct.Q4_1.gguf}
budgets=${BUDGETS:-10 25 50}
methods=${METHODS:-uniform pyramid ada layer kvx}
out=${OUT:-$top/bench}
threads=${THREADS:+-t $THREADS}

die() { echo "eval.sh: $*" >&2; exit 1; }
[ -x "$eval_bin" ] && [ -x "$plan_bin" ] ||
	die "build kvx-eval and kvx-plan first (make), or give the build dir"
[ -f "$model" ] || die "no model at $model (run tools/fetch-model)"

KVX_EVALTEXT_DIR=$top/evaltext "$top/tools/fetch-evaltext" >/dev/null ||
	die "no evaluation texts"
corpus=
if "$top/tools/fetch-corpus" >/dev/null 2>&1; then
	for f in "$top"/corpus/*.txt; do corpus="$corpus -c $f"; done
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# one profile of the calibration text serves every calibrated plan
if [ -n "$corpus" ]; then
	echo "eval.sh: profiling the calibration corpus" >&2
	# shellcheck disable=SC2086
	"$plan_bin" -m "$model" $corpus $threads -b 25% -q \
	    --save-profile "$tmp/profile" -o "$tmp/unused.yaml" ||
		die "kvx-plan profiling failed"
fi
plans=
for m in $methods; do
	case $m in
	layer|kvx)
		if [ -z "$corpus" ]; then
			echo "eval.sh: no calibration corpus: skipping $m" >&2
			continue
		fi
		src="--from-profile $tmp/profile";;
	*) src=;;
	esac
	for b in $budgets; do
		p=$tmp/$m-$b.yaml
		# shellcheck disable=SC2086
		"$plan_bin" -m "$model" --method "$m" -b "$b%" $src -q \
		    -o "$p" || die "kvx-plan --method $m -b $b% failed"
		plans="$plans --plan $p"
	done
done

texts=
for f in "$top"/evaltext/*.txt; do texts="$texts --text $f"; done
pk=
[ "${PASSKEY:-1}" = 0 ] ||
	pk="--passkey --passkey-lengths ${PASSKEY_LENGTHS:-1024,2048,4096,8192}"
mkdir -p "$out"
# shellcheck disable=SC2086
"$eval_bin" -m "$model" $plans $texts $pk $threads \
    --context "${CONTEXT:-4096}" --continuation "${CONTINUATION:-256}" \
    --ctx 8192 --csv "$out/eval.csv" --plot "$out/eval.svg" \
    > "$out/eval.txt"
cat "$out/eval.txt"
echo "eval.sh: wrote $out/eval.csv, $out/eval.svg, $out/eval.txt" >&2

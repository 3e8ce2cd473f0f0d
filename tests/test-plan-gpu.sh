#!/bin/sh
# kvx-plan --device gpu against --device cpu: profile the same samples on
# both devices and check that the curves, and the plans made from them,
# agree within the tolerances below.  The GPU runs the lightweight
# variant's forward with fp16 weights, fp16 K/V in its attention and fp16
# attention probabilities, the CPU in f32, so the hidden states differ a
# little and the curves with them; the scores and curves themselves are
# the same code on the CPU, fed with the K/V and queries each forward
# hands over.  The runs use a local span shorter than the profiled tokens,
# so that the span limit is exercised, and retrieval probes.  Models: the
# default one ($KVX_MODEL) with SnapKV and with Expected Attention, and
# the random-weight tiny qwen2 and gemma3 files (tests/data; gemma3 has
# sliding-window layers).  Skips (exit 77) without a usable GPU.  TAP.
#
# Tolerances (environment variables; each check prints what it measured):
# a curve point may differ by TOL_MAX, the curves on average by TOL_MEAN;
# scored on the CPU's curves (the solver's objective per head: prose plus
# retrieval retention), the plan made from the GPU's profile may fall
# short of the plan made from the CPU's by TOL_PLAN.
top_srcdir=${top_srcdir:-.}
top_builddir=${top_builddir:-.}
plan=$top_builddir/planner/kvx-plan
TOL_MAX=${TOL_MAX:-0.05}
TOL_MEAN=${TOL_MEAN:-0.005}
TOL_PLAN=${TOL_PLAN:-0.0005}
n=0

ok() {	# ok COND-STATUS DESCRIPTION
	n=$((n + 1))
	if [ "$1" -eq 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fi
}

if [ ! -x "$plan" ]; then echo "1..0 # SKIP kvx-plan not built"; exit 77; fi
if [ ! -f "${KVX_MODEL:-}" ]; then echo "1..0 # SKIP model not present"; exit 77; fi
# calibration text: the licences every Debian system has, else corpus/
text=""
for f in /usr/share/common-licenses/GPL-3 "$top_srcdir"/corpus/*.txt; do
	[ -f "$f" ] && text="$text $f"
done
if [ -z "$text" ]; then echo "1..0 # SKIP no calibration text"; exit 77; fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
"$plan" -m "$KVX_MODEL" -c $text --samples 2 --sample-tokens 256 \
    --profile-span 64 --probe-share 0 -q --device gpu > /dev/null \
    2> "$tmp/probe"
rc=$?
if [ $rc -eq 7 ]; then
	echo "1..0 # SKIP $(cat "$tmp/probe")"; exit 77
fi
echo "1..20"
[ $rc -eq 0 ]
ok $? "kvx-plan --device gpu runs ($(cat "$tmp/probe"))"

small="--samples 4 --sample-tokens 1024 --profile-tokens 768 --profile-span 256"

# diff A.prof B.prof: "max mean" absolute difference of all curve points
curve_diff() {
	awk '$1 == "curve" || $1 == "rcurve" {
		k = $1 " " $2 " " $3
		for (i = 4; i <= NF; i++) v[FILENAME == ARGV[1], k, i] = $i
		if (FILENAME == ARGV[2]) for (i = 4; i <= NF; i++) {
			d = v[1, k, i] - $i; if (d < 0) d = -d
			if (d > mx) mx = d; s += d; c++
		}
	} END { if (c == 0) print "9 9"; else printf "%.6f %.6f\n", mx, s / c }' \
	    "$1" "$2"
}

# plan_score P.prof PLAN.yaml: the solver's objective for the plan's
# shares on the profile's curves (mean over heads of prose retention plus
# retrieval retention, kvx-plan's default retrieval weight of 1), and the
# plan's mean per-head share, as "score share"
plan_score() {
	awk 'BEGIN { l = 0 }
	FILENAME == ARGV[1] && $1 == "grid" { G = $2 }
	FILENAME == ARGV[1] && ($1 == "curve" || $1 == "rcurve") {
		for (i = 4; i <= NF; i++) c[$1, $2, $3, i - 4] = $i
	}
	FILENAME == ARGV[2] && /^- \[/ {
		sub(/^- /, ""); gsub(/[][,]/, " ")
		for (h = 1; h <= NF; h++) {
			f = $h; x = f * (G - 1); j = int(x)
			if (j >= G - 1) { j = G - 2; x = G - 1 }
			for (k = 0; k < 2; k++) {
				t = k ? "rcurve" : "curve"
				if (!((t, l, h - 1, j) in c)) continue
				a = c[t, l, h - 1, j]; b = c[t, l, h - 1, j + 1]
				s += a + (x - j) * (b - a)
			}
			share += f; n++
		}
		l++
	}
	END { if (n == 0) print "-9 0"; else printf "%.6f %.6f\n", s / n, share / n }' \
	    "$1" "$2"
}

# compare NAME MODEL ARGS...: profiles and plans on both devices
compare() {
	name=$1 model=$2; shift 2
	for d in cpu gpu; do
		"$plan" -m "$model" -c $text $small -b 20% -q "$@" --device $d \
		    --save-profile "$tmp/$name-$d.prof" -o "$tmp/$name-$d.yaml" \
		    2> "$tmp/$name-$d.err"
		rc=$?
		[ $rc -eq 0 ]
		ok $? "$name: profile and plan on the $d"
		[ $rc -eq 0 ] || sed 's/^/# /' "$tmp/$name-$d.err"
	done
	set -- $(curve_diff "$tmp/$name-cpu.prof" "$tmp/$name-gpu.prof")
	awk -v a="$1" -v b="$2" -v x="$TOL_MAX" -v y="$TOL_MEAN" \
	    'BEGIN { exit !(a <= x && b <= y) }'
	ok $? "$name: curves GPU vs CPU, max |diff| $1 <= $TOL_MAX, mean $2 <= $TOL_MEAN"
	# both plans scored on the CPU's curves: the GPU's plan may lose
	# at most TOL_PLAN of the CPU's optimum there
	set -- $(plan_score "$tmp/$name-cpu.prof" "$tmp/$name-cpu.yaml") \
	    $(plan_score "$tmp/$name-cpu.prof" "$tmp/$name-gpu.yaml")
	awk -v a="$1" -v b="$3" -v x="$TOL_PLAN" \
	    'BEGIN { exit !(a - b <= x && a > 0 && b > 0) }'
	ok $? "$name: on the CPU's curves the GPU's plan scores $3, the CPU's $1 (loss <= $TOL_PLAN); mean shares $4 and $2"
}

compare smollm2 "$KVX_MODEL"
compare smollm2-ea "$KVX_MODEL" --scorer expected-attention
compare tiny-qwen2 "$top_srcdir/tests/data/tiny-qwen2.gguf"
# its local layers hold 24 keys: a window of 16 and 4 sinks fit in them
compare tiny-gemma3 "$top_srcdir/tests/data/tiny-gemma3.gguf" --window 16

# auto: the GPU unless KVX_DEVICE=cpu, the same profile as the device's
for e in "" cpu; do
	want=${e:-gpu}
	KVX_DEVICE=$e "$plan" -m "$KVX_MODEL" -c $text $small -b 20% -q \
	    --device auto --save-profile "$tmp/auto$e.prof" \
	    -o "$tmp/auto$e.yaml" 2> "$tmp/auto.err"
	cmp -s "$tmp/auto$e.prof" "$tmp/smollm2-$want.prof"
	ok $? "--device auto with KVX_DEVICE='$e' profiles on the $want (the same profile)"
done
# the GPU's profile is the same from run to run
"$plan" -m "$KVX_MODEL" -c $text $small -b 20% -q --device gpu \
    --save-profile "$tmp/again.prof" -o "$tmp/again.yaml" 2> /dev/null
cmp -s "$tmp/again.prof" "$tmp/smollm2-gpu.prof"
ok $? "two GPU profiles of the same samples are identical"

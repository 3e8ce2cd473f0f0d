#!/bin/sh
# bench/bench-cpu.sh - prefill and decode tokens/s of kvx-run against
# llama.cpp (llama-cpp-python, built from its PyPI sdist) on the same GGUF
# and prompt, in the same run, with the same thread count.
#   usage: bench/bench-cpu.sh [BUILD_DIR] [PROMPT_TOKENS_FILE_BYTES]
# KVX_BENCH_MODEL names another GGUF (default: SmolLM2-135M-Instruct);
# KVX_BENCH_THREADS (2), KVX_BENCH_DECODE (64 tokens), KVX_BENCH_RUNS (3)
# set the rest; KVX_BENCH_BASELINE names a second kvx-run binary (an older
# build) timed in the same rounds; KVX_BENCH_WEIGHTS (e.g. "huge mmap")
# times kvx-run once for each --weights mode listed, each on its own row.
# The programs run in turn, round after
# round, so that a change in the machine's load reaches all of them; each
# figure is the best of the rounds, and the load averages before each
# round are printed after the table.
# Needs: python3 -c 'import llama_cpp' (pip install llama-cpp-python).
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$top}
bytes=${2:-2400}
threads=${KVX_BENCH_THREADS:-2}
n=${KVX_BENCH_DECODE:-64}
runs=${KVX_BENCH_RUNS:-3}
base=${KVX_BENCH_BASELINE:-}
modes=${KVX_BENCH_WEIGHTS:-}
model=${KVX_BENCH_MODEL:-$top/models/SmolLM2-135M-Instruct.Q4_1.gguf}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
head -c "$bytes" /usr/share/common-licenses/GPL-3 > "$tmp/prompt.txt"
val() { sed -n "s/^$2: //p" "$1"; }
run() { # one run of a command writing stats to $1
	out=$1; shift
	"$@" > "$out" 2>&1 || { cat "$out"; exit 1; }
}
kvx() { # the stats of kvx-run binary $1, options $2...
	b=$1; shift
	"$b" -m "$model" -f "$tmp/prompt.txt" -n "$n" -t "$threads" --stats \
	    "$@" 2>&1 >/dev/null
}
best() { # the best of the rounds of prefix $1
	for k in prefill_tok_s decode_tok_s; do
		printf '%s: %s\n' $k "$(for i in $(seq "$runs"); do
		    val "$tmp/$1.$i" $k; done | sort -g | tail -1)"
	done
	grep prompt_tokens "$tmp/$1.1"
}
for i in $(seq "$runs"); do
	uptime | sed "s/.*load average: /round $i: load /" >> "$tmp/load"
	run "$tmp/kvx.$i" kvx "$build/tools/kvx-run"
	for w in $modes; do
		run "$tmp/w-$w.$i" kvx "$build/tools/kvx-run" --weights "$w"
	done
	run "$tmp/lcpp.$i" python3 "$top/bench/llamacpp.py" "$model" \
	    "$tmp/prompt.txt" "$n" "$threads"
	[ -z "$base" ] || run "$tmp/base.$i" kvx "$base"
done
best kvx > "$tmp/kvx.txt"
best lcpp > "$tmp/lcpp.txt"
echo "model: $(basename "$model"), threads: $threads, prompt: $(val "$tmp/kvx.txt" prompt_tokens) tokens, decode: $n tokens, best of $runs"
printf '%-14s %12s %12s\n' '' prefill/s decode/s
printf '%-14s %12s %12s\n' llama.cpp "$(val "$tmp/lcpp.txt" prefill_tok_s)" "$(val "$tmp/lcpp.txt" decode_tok_s)"
printf '%-14s %12s %12s\n' kvx "$(val "$tmp/kvx.txt" prefill_tok_s)" "$(val "$tmp/kvx.txt" decode_tok_s)"
ratio() { # kvx stats file $1 against llama.cpp's, labelled $2
	awk -v a="$(val "$1" prefill_tok_s)" -v b="$(val "$tmp/lcpp.txt" prefill_tok_s)" \
	    -v c="$(val "$1" decode_tok_s)" -v d="$(val "$tmp/lcpp.txt" decode_tok_s)" \
	    -v l="$2" 'BEGIN { printf "%-14s %12.2f %12.2f\n", l, a / b, c / d }'
}
if [ -n "$base" ]; then
	best base > "$tmp/base.txt"
	printf '%-14s %12s %12s\n' 'kvx baseline' "$(val "$tmp/base.txt" prefill_tok_s)" "$(val "$tmp/base.txt" decode_tok_s)"
	ratio "$tmp/base.txt" 'baseline ratio'
fi
ratio "$tmp/kvx.txt" ratio
for w in $modes; do
	best "w-$w" > "$tmp/w-$w.txt"
	printf '%-14s %12s %12s\n' "kvx $w" "$(val "$tmp/w-$w.txt" prefill_tok_s)" "$(val "$tmp/w-$w.txt" decode_tok_s)"
	ratio "$tmp/w-$w.txt" "$w ratio"
	printf '%-14s %12s\n' "$w load_s" "$(for i in $(seq "$runs"); do
	    val "$tmp/w-$w.$i" load_s; done | sort -g | head -1)"
done
cat "$tmp/load"

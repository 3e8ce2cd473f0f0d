#!/bin/sh
# bench/bench-cpu.sh - prefill and decode tokens/s of kvx-run against
# llama.cpp (llama-cpp-python, built from its PyPI sdist) on the same GGUF
# and prompt, in the same run, with the same thread count.
#   usage: bench/bench-cpu.sh [BUILD_DIR] [PROMPT_TOKENS_FILE_BYTES]
# KVX_BENCH_MODEL names another GGUF (default: SmolLM2-135M-Instruct).
# Needs: python3 -c 'import llama_cpp' (pip install llama-cpp-python).
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$top}
bytes=${2:-2400}
threads=${KVX_BENCH_THREADS:-2}
n=${KVX_BENCH_DECODE:-64}
model=${KVX_BENCH_MODEL:-$top/models/SmolLM2-135M-Instruct.Q4_1.gguf}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
head -c "$bytes" /usr/share/common-licenses/GPL-3 > "$tmp/prompt.txt"
val() { sed -n "s/^$2: //p" "$1"; }
best() { # best of 3 runs of a command writing stats to $1
	out=$1; shift
	for i in 1 2 3; do "$@" > "$out.$i" 2>&1 || { cat "$out.$i"; exit 1; }; done
	for k in prefill_tok_s decode_tok_s; do
		printf '%s: %s\n' $k "$(for i in 1 2 3; do val "$out.$i" $k; done | sort -g | tail -1)"
	done
	grep prompt_tokens "$out.1"
}
best "$tmp/kvx" sh -c "'$build/tools/kvx-run' -m '$model' -f '$tmp/prompt.txt' -n $n -t $threads --stats 2>&1 >/dev/null" > "$tmp/kvx.txt"
best "$tmp/lcpp" python3 "$top/bench/llamacpp.py" "$model" "$tmp/prompt.txt" $n $threads > "$tmp/lcpp.txt"
echo "model: $(basename "$model"), threads: $threads, prompt: $(val "$tmp/kvx.txt" prompt_tokens) tokens, decode: $n tokens, best of 3"
printf '%-10s %12s %12s\n' '' prefill/s decode/s
printf '%-10s %12s %12s\n' llama.cpp "$(val "$tmp/lcpp.txt" prefill_tok_s)" "$(val "$tmp/lcpp.txt" decode_tok_s)"
printf '%-10s %12s %12s\n' kvx "$(val "$tmp/kvx.txt" prefill_tok_s)" "$(val "$tmp/kvx.txt" decode_tok_s)"
awk -v a="$(val "$tmp/kvx.txt" prefill_tok_s)" -v b="$(val "$tmp/lcpp.txt" prefill_tok_s)" \
    -v c="$(val "$tmp/kvx.txt" decode_tok_s)" -v d="$(val "$tmp/lcpp.txt" decode_tok_s)" \
    'BEGIN { printf "%-10s %12.2f %12.2f\n", "ratio", a / b, c / d }'

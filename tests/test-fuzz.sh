#!/bin/sh
# Build the libFuzzer harnesses of the GGUF reader and the plan loader with
# clang and run each for KVX_FUZZ_TIME seconds (default 10; 0 skips) from
# its seed corpus.  TAP output; skips when clang's libFuzzer is missing.
top_srcdir=${top_srcdir:-.}
top_builddir=${top_builddir:-.}
secs=${KVX_FUZZ_TIME:-10}
if [ "$secs" = 0 ]; then echo "1..0 # SKIP KVX_FUZZ_TIME=0"; exit 0; fi
cc=${FUZZ_CC:-clang}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
echo 'int LLVMFuzzerTestOneInput(const char *d, long n) { return 0; }' > "$tmp/t.c"
if ! $cc -fsanitize=fuzzer "$tmp/t.c" -o "$tmp/t" 2>/dev/null; then
	echo "1..0 # SKIP no clang with libFuzzer (apt-get install clang libclang-rt-dev)"
	exit 0
fi
echo "1..4"
rt=$top_srcdir/runtime
core=$top_builddir/runtime/.libs/libkvxcore.a
flags="-g -O1 -fsanitize=fuzzer,address,undefined -std=gnu11 -mavx2 -mfma -mf16c -I$top_builddir -I$top_builddir/runtime -I$rt"
libs="$core -lyaml $(pkg-config --libs openblas 2>/dev/null || echo -lopenblas) -lm -lpthread"
n=0
for h in gguf plan; do
	case $h in
	gguf) src="$rt/gguf.c $rt/util.c";;
	plan) src="$rt/plan_schema.c $rt/plan_load.c $rt/plan_save.c $rt/util.c";;
	esac
	n=$((n + 1))
	# shellcheck disable=SC2086
	if $cc $flags "$top_srcdir/tests/fuzz/fuzz-$h.c" $src $libs \
	    -o "$tmp/fuzz-$h" 2>"$tmp/cc-$h.log"; then
		echo "ok $n - fuzz-$h builds"
	else
		echo "not ok $n - fuzz-$h builds"; sed 's/^/# /' "$tmp/cc-$h.log" | head -20
		n=$((n + 1)); echo "not ok $n - fuzz-$h runs ${secs}s without a crash"
		continue
	fi
	n=$((n + 1))
	mkdir -p "$tmp/corpus-$h"
	cp "$top_srcdir/tests/fuzz/$h-seed/"* "$tmp/corpus-$h/"
	if "$tmp/fuzz-$h" -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048 \
	    -artifact_prefix="$tmp/" "$tmp/corpus-$h" >"$tmp/run-$h.log" 2>&1; then
		echo "ok $n - fuzz-$h runs ${secs}s without a crash ($(grep -o 'Done [0-9]* runs' "$tmp/run-$h.log"))"
	else
		echo "not ok $n - fuzz-$h runs ${secs}s without a crash"
		tail -30 "$tmp/run-$h.log" | sed 's/^/# /'
	fi
done

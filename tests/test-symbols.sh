#!/bin/sh
# The shared library's exported functions must be exactly those kvx.h
# declares, and each must be in the SYNOPSIS of libkvx(3).  Run in every
# build (with CUDA or without): the kernels' and the runtime's private
# functions are compiled with hidden visibility.  TAP output.
top_srcdir=${top_srcdir:-.}
top_builddir=${top_builddir:-.}
echo "1..4"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
so=$(ls "$top_builddir"/runtime/.libs/libkvx.so.* 2>/dev/null | head -n 1)
if [ -z "$so" ]; then
	echo "not ok 1 - libkvx.so is built"
	exit 0
fi
echo "ok 1 - libkvx.so is built ($(basename "$so"))"
# every defined dynamic symbol but the loader's own sections' markers
nm -D --defined-only "$so" | awk '$2 != "A" && $3 !~ /^_(init|fini|edata|end)$|^__bss_start$/ { print $3 }' |
    sort -u > "$tmp/exported"
# the functions kvx.h declares, comments and macros removed by cpp
${CPP:-cpp} -P -I"$top_srcdir/runtime" -I"$top_builddir/runtime" \
    "$top_srcdir/runtime/kvx.h" 2>"$tmp/cpp.log" |
    tr -s ' \t' '  ' | grep -o 'kvx_[a-z0-9_]* *(' | sed 's/ *($//' |
    sort -u > "$tmp/declared"
sed -n '/^\.Sh SYNOPSIS/,/^\.Sh DESCRIPTION/p' "$top_srcdir/man/libkvx.3" |
    awk '$1 == ".Fn" || $1 == ".Fo" { print $2 }' | sort -u > "$tmp/documented"
report() {
	if [ -s "$1" ]; then
		echo "not ok $2 - $3"
		sed 's/^/#   /' "$1"
	else
		echo "ok $2 - $3"
	fi
}
n=$(wc -l < "$tmp/exported")
comm -3 "$tmp/exported" "$tmp/declared" > "$tmp/d1"
report "$tmp/d1" 2 "the $n exported functions are exactly those kvx.h declares"
comm -23 "$tmp/exported" "$tmp/documented" > "$tmp/d2"
report "$tmp/d2" 3 "every exported function is in libkvx(3)'s SYNOPSIS"
comm -13 "$tmp/exported" "$tmp/documented" > "$tmp/d3"
report "$tmp/d3" 4 "libkvx(3) documents no function the library lacks"

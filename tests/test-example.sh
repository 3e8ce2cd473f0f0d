#!/bin/sh
# Compile the example program of libkvx(3) against the built library and
# run it on the default model.  TAP output.
top_srcdir=${top_srcdir:-.}
top_builddir=${top_builddir:-.}
echo "1..3"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
sed -n '/example-begin/,/example-end/p' "$top_srcdir/man/libkvx.3" |
    sed '/^\.\\"/d; /^\.Bd/d; /^\.Ed/d; s/\\e/\\/g' > "$tmp/example.c"
if grep -q 'kvx_prefill' "$tmp/example.c"; then echo "ok 1 - example extracted from libkvx.3"
else echo "not ok 1 - example extracted from libkvx.3"; fi
lib="$top_builddir/runtime/.libs"
if ${CC:-cc} -o "$tmp/example" "$tmp/example.c" -I"$top_srcdir/runtime" -I"$top_builddir/runtime" \
    -L"$lib" -Wl,-rpath,"$lib" -lkvx 2>"$tmp/cc.log"; then
	echo "ok 2 - example compiles and links against libkvx"
else
	echo "not ok 2 - example compiles and links against libkvx"; sed 's/^/# /' "$tmp/cc.log"
fi
if [ ! -f "${KVX_MODEL:-}" ]; then echo "ok 3 # SKIP model not present"; exit 0; fi
out=$("$tmp/example" "$KVX_MODEL" 2>&1)
echo "$out" | sed 's/^/# /'
case "$out" in
*"The capital of France is"*Paris*"kv_bytes "*) echo "ok 3 - example generates Paris and reports memory";;
*) echo "not ok 3 - example generates Paris and reports memory";;
esac

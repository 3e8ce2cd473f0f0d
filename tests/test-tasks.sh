#!/bin/sh
# kvx-eval --tasks from the command line: the items written by
# --dump-tasks read back as JSON and checked against the text they come
# from, the same items for the same seed, a short end-to-end run of the
# full cache and a plan in both question modes with the CSV, the paired
# differences and the plot, and the documented exit codes.  TAP output.
top_srcdir=${top_srcdir:-.}
top_builddir=${top_builddir:-.}
eval_bin="$top_builddir/tools/kvx-eval"
plan="$top_srcdir/plans/smollm2-135m-uniform-20.yaml"

skip_all() { echo "1..0 # SKIP $1"; exit 77; }
[ -x "$eval_bin" ] || skip_all "kvx-eval not built"
[ -f "${KVX_MODEL:-}" ] || skip_all "model not present"
command -v python3 >/dev/null || skip_all "python3 not present"
fp=$("$eval_bin" -m "$KVX_MODEL" --print-fingerprint) ||
    skip_all "cannot open the model"
grep -q "fingerprint: $fp" "$plan" || skip_all "KVX_MODEL is not the default model"

tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
n=0
fails=0
ok() {
	n=$((n + 1))
	if [ "$1" -eq 0 ]; then echo "ok $n - $2"
	else echo "not ok $n - $2"; fails=$((fails + 1)); fi
}
check() { desc=$1; shift; "$@"; ok $? "$desc"; }
M=$KVX_MODEL

# --- the dump ---------------------------------------------------------------
dump() {
	"$eval_bin" -m "$M" --tasks ruler --task-lengths 512,1024 \
	    --task-samples 2 --format chat --dump-only -q "$@"
}
dump --dump-tasks "$tmp/a.jsonl" && dump --dump-tasks "$tmp/b.jsonl" &&
    dump --dump-tasks "$tmp/c.jsonl" --seed 2
ok $? "--dump-tasks --dump-only writes the items of every task"
check "the same seed writes the same items" cmp -s "$tmp/a.jsonl" "$tmp/b.jsonl"
check "another seed writes other items" \
    test "$(cmp -s "$tmp/a.jsonl" "$tmp/c.jsonl"; echo $?)" -eq 1
cat > "$tmp/read.py" <<'EOF'
import json, sys
names = ["niah_single", "niah_multikey", "niah_multivalue",
         "niah_multiquery", "vt", "cwe", "fwe", "passkey"]
items = [json.loads(l) for l in open(sys.argv[1])]
seen = set()
bad = []
for d in items:
    keys = {"id", "task", "length", "sample", "format", "tokens",
            "answer_tokens", "context", "questions", "references"}
    if set(d) != keys:
        bad.append("fields of %s" % d.get("id"))
        continue
    seen.add((d["task"], d["length"], d["sample"]))
    if not 0 < d["tokens"] <= d["length"] or d["format"] != "chat":
        bad.append("tokens or format of " + d["id"])
    if len(d["questions"]) != len(d["references"]) or not d["questions"]:
        bad.append("questions of " + d["id"])
    if not d["context"].startswith("<|im_start|>"):
        bad.append("template of " + d["id"])
    for q, refs in zip(d["questions"], d["references"]):
        if not q.rstrip().endswith(("is", "are", ":")):
            bad.append("answer prefix of " + d["id"])
        # every reference is written in the context
        for r in refs:
            if r not in d["context"]:
                bad.append("%s not in %s" % (r, d["id"]))
want = {(t, l, s) for t in names for l in (512, 1024) for s in (0, 1)}
if seen != want or len(items) != len(want):
    bad.append("items %d, want %d" % (len(items), len(want)))
print("\n".join("# " + b for b in bad[:10]))
sys.exit(1 if bad else 0)
EOF
check "the dump reads back as JSON: one item per task, length and sample, in the chat template, every reference in its context, fitted to its length" \
    python3 "$tmp/read.py" "$tmp/a.jsonl"

# --- one short run: full cache and a plan, both modes --------------------------
run() {
	"$eval_bin" -m "$M" --plan "$plan" --tasks niah_single,passkey \
	    --task-lengths 512 --task-samples 1 -q "$@"
}
run --csv "$tmp/after.csv" --plot "$tmp/t.svg" --baseline-plan full \
    > "$tmp/after.txt"
ok $? "kvx-eval --tasks runs the full cache and a plan"
sed 's/^/# /' "$tmp/after.txt"
check "the CSV header is the documented one" \
    test "$(head -n 1 "$tmp/after.csv")" = \
    "plan,method,budget,question,task,length,sample,score,kv_bytes,kv_bytes_full,answer"
check "one row per plan and item, question after" \
    test "$(grep -c ',after,' "$tmp/after.csv")" -eq 4
score=$(grep '^full,full,1,after,niah_single,512,0,' "$tmp/after.csv" |
    cut -d, -f8)
check "the full cache finds the needle in 512 tokens (score $score)" \
    awk -v s="$score" 'BEGIN { exit !(s > 0) }'
check "the plan keeps about a fifth of the full cache's bytes" awk -F, \
    '$1 == "smollm2-135m-uniform-20" { f = $9 / $10; if (f < 0.15 || f > 0.3) bad = 1; n++ }
    END { exit bad || n != 2 }' "$tmp/after.csv"
check "the table has a row per task and the mean, with intervals" \
    test "$(grep -cE '^(niah_single|passkey|mean) +512 +[01]\.[0-9]{3} \[' "$tmp/after.txt")" -eq 3
check "the paired differences from the full cache are reported" \
    grep -q "^paired difference from full" "$tmp/after.txt"
check "the plot is well-formed XML with a line per method" python3 -c \
    "import sys, xml.dom.minidom as x; d = x.parse(sys.argv[1]); sys.exit(not d.getElementsByTagName('polyline'))" \
    "$tmp/t.svg"
run --question inside --format chat --csv "$tmp/inside.csv" > /dev/null
ok $? "kvx-eval --question inside --format chat runs"
check "question inside: the rows say so" \
    test "$(grep -c ',inside,' "$tmp/inside.csv")" -eq 4

# --- errors: exit code and one line naming the problem ------------------------
expect() {
	code=$1; pat=$2; shift 2
	"$eval_bin" "$@" > /dev/null 2> "$tmp/e"
	rc=$?
	[ $rc -eq "$code" ] && [ "$(wc -l < "$tmp/e")" -eq 1 ] &&
	    grep -q "^kvx-eval: .*$pat" "$tmp/e"
	r=$?
	[ $r -eq 0 ] || echo "# exit $rc: $(cat "$tmp/e")"
	return $r
}
check "unknown task: exit 2" expect 2 "unknown task 'niah_double'" \
    -m "$M" --tasks niah_single,niah_double
check "length above the context size: exit 2" \
    expect 2 "--task-lengths: 2048 exceeds the context size of 1024" \
    -m "$M" --tasks vt --task-lengths 512,2048 --ctx 1024
check "length too short for a task: exit 2" expect 2 "cwe: length 128 is too short" \
    -m "$M" --tasks cwe --task-lengths 128 --dump-tasks "$tmp/x" --dump-only
check "--text and --tasks together: exit 2" expect 2 "one or the other" \
    -m "$M" --tasks vt --text "$tmp/a.jsonl"
check "unknown --baseline-plan: exit 2" expect 2 "nope.yaml is neither full" \
    -m "$M" --tasks vt --baseline-plan nope.yaml
check "bad question mode: exit 2" expect 2 "unknown question mode 'before'" \
    -m "$M" --tasks vt --question before
check "missing haystack: exit 5" expect 5 "nope.txt" \
    -m "$M" --tasks niah_single --haystack "$tmp/nope.txt"
check "unwritable dump: exit 6" expect 6 "no/such/dir/x.jsonl" \
    -m "$M" --tasks vt --dump-tasks "$tmp/no/such/dir/x.jsonl"

echo "1..$n"
[ $fails -eq 0 ]

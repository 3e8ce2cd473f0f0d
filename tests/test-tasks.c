/*
 * test-tasks.c - kvx-eval's task suite checked from the outside: where the
 * needles are (counted in the text), the distractors, the vt chain walked
 * from the statements, cwe and fwe counts recounted, determinism, the
 * fitted length retokenized; the string-match score on hand-made answers;
 * the bootstrap interval; and that a question asked after the compressed
 * context never sees an earlier question.
 * SPDX-License-Identifier: MIT
 */
#include "config.h"

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eval.h"
#include "tap.h"
#include "tasks.h"

static const char noise_unit[] = "The grass is green. The sky is blue. "
    "The sun is yellow. Here we go. There and back again. ";

/* eval.c reports through these (kvx-eval.c has them in the program). */
void
fail(int code, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\nBail out! exit %d\n", code);
	exit(1);
}

/* No progress in a test. */
void
progress(const char *fmt, ...)
{
	(void)fmt;
}

/* Occurrences of s in [from, to) of text. */
static int
count_in(const char *text, size_t from, size_t to, const char *s)
{
	const char *p = text + from;
	int n = 0;

	while ((p = strstr(p, s)) != NULL && (size_t)(p - text) < to) {
		n++;
		p += strlen(s);
	}
	return n;
}

/* Make one item or bail out. */
static void
make(const struct task_env *env, enum task_kind k, int len, int s, int n,
    uint64_t seed, struct task_item *it)
{
	char err[256];

	if (task_make(env, k, len, s, n, seed, it, err, sizeof err) != 0) {
		printf("Bail out! %s\n", err);
		exit(1);
	}
}

/* Needles in noise: each sample's asked needle sits at its depth, to
 * one noise unit, counted as units before it over all units. */
static void
check_depths(const struct task_env *env)
{
	struct task_item it;
	int s, n = 5, bad = 0, before, all;
	const char *at;
	double want, got;

	for (s = 0; s < n; s++) {
		make(env, TASK_NIAH_SINGLE, 1024, s, n, 7, &it);
		at = strstr(it.context, "One of the special magic numbers for");
		if (at == NULL || it.n_needle != 1) {
			bad = 1;
			task_item_free(&it);
			continue;
		}
		before = count_in(it.context, it.hay_begin,
		    (size_t)(at - it.context), noise_unit);
		all = count_in(it.context, it.hay_begin, it.hay_end,
		    noise_unit);
		want = 100.0 * s / (n - 1);
		got = 100.0 * before / all;
		if (fabs(got - want) > 100.0 / all + 1e-9 ||
		    fabs(it.depth[0] - want) > 1e-9) {
			diag("sample %d: needle at %.1f%%, asked %.1f%%", s,
			    got, want);
			bad = 1;
		}
		/* the needle's value is the reference, and is in the text */
		if (strstr(at, it.q[0].refs[0]) == NULL)
			bad = 1;
		task_item_free(&it);
	}
	ok(!bad, "niah_single: the needle is at 0, 25, 50, 75, 100%% of the "
	    "noise to one unit, and holds the reference");
}

/* Prose haystack: the needle at its depth to one sentence, in bytes. */
static void
check_prose(const kvx_model *m, const char *path)
{
	const char *files[1] = { path };
	struct task_env env;
	struct task_item it;
	char err[256];
	const char *at;
	double got, tol;
	int s, n = 3, bad = 0;

	if (task_env_init(&env, m, 0, files, 1, NULL, err, sizeof err) != 0) {
		ok(0, "prose haystack: %s", err);
		return;
	}
	for (s = 0; s < n; s++) {
		make(&env, TASK_NIAH_MULTIKEY, 1024, s, n, 3, &it);
		at = strstr(it.context, it.needle[0]);
		/* the longest sentence of the file is under 200 bytes */
		tol = 200.0 / (it.hay_end - it.hay_begin);
		got = (double)((size_t)(at - it.context) - it.hay_begin) /
		    (it.hay_end - it.hay_begin);
		if (at == NULL || fabs(got - it.depth[0] / 100.0) > tol + 0.02)
			bad = 1;
		if (strstr(it.context, "The grass is green") != NULL)
			bad = 1;
		/* the Latin-1 byte is replaced, the UTF-8 letter kept */
		if (strstr(it.context, "of ?ngstr\xc3\xb6m.") == NULL ||
		    strchr(it.context, '\xc5') != NULL)
			bad = 1;
		task_item_free(&it);
	}
	ok(!bad, "prose haystack: the needle at its depth to one sentence, "
	    "no noise, a byte that is not UTF-8 replaced");
	task_env_free(&env);
}

/* The key named in a needle or question: the text between "for " and
 * the next space; *out gets it. */
static void
key_of(const char *s, char *out, size_t size)
{
	const char *p = strstr(s, " for ");
	size_t n = 0;

	out[0] = '\0';
	if (p == NULL)
		return;
	for (p += 5; *p != '\0' && *p != ' ' && n + 1 < size; p++)
		out[n++] = *p;
	out[n] = '\0';
}

/* niah_multikey: four needles, one asked, three keys distinct from it. */
static void
check_multikey(const struct task_env *env)
{
	char asked[64], k[64];
	struct task_item it;
	int s, i, bad = 0, same;

	for (s = 0; s < 4; s++) {
		make(env, TASK_NIAH_MULTIKEY, 1024, s, 4, 11, &it);
		key_of(it.q[0].text, asked, sizeof asked);
		for (same = 0, i = 0; i < it.n_needle; i++) {
			key_of(it.needle[i], k, sizeof k);
			if (strcmp(k, asked) == 0) {
				same++;
				/* the asked needle holds the reference */
				if (strstr(it.needle[i], it.q[0].refs[0]) ==
				    NULL)
					bad = 1;
			}
		}
		if (it.n_needle != 4 || same != 1 || strlen(asked) < 3 ||
		    strlen(it.q[0].refs[0]) != 36)
			bad = 1;
		task_item_free(&it);
	}
	ok(!bad, "niah_multikey: four needles, the asked key in exactly one, "
	    "its UUID the reference");
}

/* niah_multivalue and multiquery: every reference is in the context. */
static void
check_multi(const struct task_env *env)
{
	struct task_item it;
	int i, j, bad = 0;

	make(env, TASK_NIAH_MULTIVALUE, 1024, 1, 3, 5, &it);
	if (it.n_q != 1 || it.q[0].n_ref != 4)
		bad = 1;
	for (j = 0; j < it.q[0].n_ref; j++)
		if (count_in(it.context, it.hay_begin, it.hay_end,
		    it.q[0].refs[j]) != 1)
			bad = 1;
	task_item_free(&it);
	ok(!bad, "niah_multivalue: four values of one key, each once in the "
	    "text");
	make(env, TASK_NIAH_MULTIQUERY, 1024, 1, 3, 5, &it);
	for (bad = it.n_q != 4, i = 0; i < it.n_q; i++)
		if (it.q[i].n_ref != 1 || count_in(it.context, it.hay_begin,
		    it.hay_end, it.q[i].refs[0]) != 1)
			bad = 1;
	task_item_free(&it);
	ok(!bad, "niah_multiquery: four questions, each reference once in the "
	    "text");
}

/* vt: parse every "VAR X = ..." statement and walk the assignments from
 * the value the question names; the variables reached are the refs. */
static void
check_vt(const struct task_env *env)
{
	char name[16][8], from[16][8], val[16][8], want[16];
	struct task_item it;
	int n, i, j, got, bad = 0, s, changed, hold[16];
	const char *p, *q;

	for (s = 0; s < 3; s++) {
		make(env, TASK_VT, 1024, s, 3, 21, &it);
		for (n = 0, p = it.context; n < 16 &&
		    (p = strstr(p, "VAR ")) != NULL; p += 4) {
			/* an assignment starts a statement, "= VAR" does not */
			if (p >= it.context + 2 && p[-2] == '=')
				continue;
			from[n][0] = val[n][0] = '\0';
			if (sscanf(p, "VAR %7s = VAR %7[A-Z]", name[n],
			    from[n]) == 2 || sscanf(p, "VAR %7s = %7[0-9]",
			    name[n], val[n]) == 2)
				n++;
		}
		q = strstr(it.q[0].text, "the value ");
		if (q == NULL || sscanf(q, "the value %15[0-9]", want) != 1) {
			bad = 1;
			task_item_free(&it);
			continue;
		}
		for (i = 0; i < n; i++)
			hold[i] = strcmp(val[i], want) == 0;
		do {
			changed = 0;
			for (i = 0; i < n; i++)
				for (j = 0; j < n && !hold[i]; j++)
					if (hold[j] && from[i][0] != '\0' &&
					    strcmp(from[i], name[j]) == 0)
						hold[i] = changed = 1;
		} while (changed);
		for (got = 0, i = 0; i < n; i++)
			for (j = 0; j < it.q[0].n_ref; j++)
				got += hold[i] &&
				    strcmp(name[i], it.q[0].refs[j]) == 0;
		for (i = 0, j = 0; i < n; i++)
			j += hold[i];
		if (n != 5 || j != 5 || got != 5 || it.q[0].n_ref != 5)
			bad = 1;
		task_item_free(&it);
	}
	ok(!bad, "vt: five statements, and walking them from the value "
	    "reaches exactly the five references");
}

/* Count of word w among the n words of list. */
static int
count_word(char **list, int n, const char *w)
{
	int i, c = 0;

	for (i = 0; i < n; i++)
		c += strcmp(list[i], w) == 0;
	return c;
}

/* Split [from, to) of text into words at spaces and newlines, dropping
 * list numbers and dots; *n gets the count, *buf the words' storage. */
static char **
words_of(const char *text, size_t from, size_t to, int *n, char **buf)
{
	int cap = (int)(to - from) / 2 + 1;
	char *w, **v;

	*buf = strndup(text + from, to - from);
	v = malloc(sizeof *v * (size_t)cap);
	*n = 0;
	for (w = strtok(*buf, " \n"); w != NULL; w = strtok(NULL, " \n")) {
		if (isdigit((unsigned char)w[0]) || w[0] == '.')
			continue;
		v[(*n)++] = w;
	}
	return v;
}

/* The references are the top counts of the list, strictly above every
 * other word's count. */
static int
top_counts_are_refs(char **list, int n, const struct task_question *q)
{
	int i, j, minref = 1 << 30, maxother = 0, c, isref;

	for (j = 0; j < q->n_ref; j++)
		if ((c = count_word(list, n, q->refs[j])) < minref)
			minref = c;
	for (i = 0; i < n; i++) {
		for (isref = 0, j = 0; j < q->n_ref; j++)
			isref |= strcmp(list[i], q->refs[j]) == 0;
		if (!isref && (c = count_word(list, n, list[i])) > maxother)
			maxother = c;
	}
	return minref > maxother;
}

/* cwe and fwe: recount the words of the haystack. */
static void
check_counts(const struct task_env *env)
{
	struct task_item it;
	char **list, *buf;
	int n, bad = 0, len;

	for (len = 1024; len <= 2048; len *= 2) {
		make(env, TASK_CWE, len, 0, 1, 9, &it);
		list = words_of(it.context, it.hay_begin, it.hay_end, &n,
		    &buf);
		if (it.q[0].n_ref != 10 || n < 100 ||
		    !top_counts_are_refs(list, n, &it.q[0]))
			bad = 1;
		free(buf);
		free(list);
		task_item_free(&it);
	}
	ok(!bad, "cwe: the ten references are the ten most common words, "
	    "each above every other count");
	make(env, TASK_FWE, 1024, 0, 1, 9, &it);
	list = words_of(it.context, it.hay_begin, it.hay_end, &n, &buf);
	ok(it.q[0].n_ref == 3 && n > 100 &&
	    top_counts_are_refs(list, n, &it.q[0]),
	    "fwe: the three references are the three most frequent coded "
	    "words, each above every other count");
	free(buf);
	free(list);
	task_item_free(&it);
}

/* The same seed makes the same items; another seed other items. */
static void
check_determinism(const struct task_env *env)
{
	struct task_item a, b, c;
	int k, bad = 0;

	for (k = 0; k < TASK_N; k++) {
		make(env, (enum task_kind)k, 1024, 1, 2, 42, &a);
		make(env, (enum task_kind)k, 1024, 1, 2, 42, &b);
		make(env, (enum task_kind)k, 1024, 1, 2, 43, &c);
		if (strcmp(a.context, b.context) != 0 ||
		    strcmp(a.q[0].text, b.q[0].text) != 0 ||
		    strcmp(a.q[0].refs[0], b.q[0].refs[0]) != 0 ||
		    (strcmp(a.context, c.context) == 0 &&
		    strcmp(a.q[0].refs[0], c.q[0].refs[0]) == 0)) {
			diag("%s is not deterministic", task_name(k));
			bad = 1;
		}
		task_item_free(&a);
		task_item_free(&b);
		task_item_free(&c);
	}
	ok(!bad, "every task: one seed, one item; another seed, another");
}

/* Tokens of s, special tokens parsed. */
static int
ntok(const kvx_model *m, const char *s)
{
	int32_t *ids = malloc(sizeof *ids * (strlen(s) + 16));
	int n = -1;

	if (kvx_tokenize(m, s, strlen(s), 1, ids, (int)strlen(s) + 16, &n) !=
	    KVX_OK)
		n = -1;
	free(ids);
	return n;
}

/* The fitted length: context, longest question and answer budget,
 * tokenized here, within one haystack unit under the length. */
static void
check_lengths(const kvx_model *m, const struct task_env *env)
{
	static const int lens[] = { 512, 1024, 2048 };
	struct task_item it;
	int k, l, i, t, q, bad = 0;

	for (k = 0; k < TASK_N; k++)
		for (l = 0; l < 3; l++) {
			if (k == TASK_CWE && lens[l] < 1024)
				continue;
			make(env, (enum task_kind)k, lens[l], 0, 1, 1, &it);
			for (q = 0, i = 0; i < it.n_q; i++)
				if ((t = ntok(m, it.q[i].text)) > q)
					q = t;
			t = ntok(m, it.context) + q + it.answer_tokens;
			/* a noise unit is 25 tokens, a list entry under 8 */
			if (t > lens[l] || t < lens[l] - 40) {
				diag("%s at %d: %d tokens", task_name(k),
				    lens[l], t);
				bad = 1;
			}
			task_item_free(&it);
		}
	ok(!bad, "every task at 512, 1024 and 2048: the prompt and answer "
	    "budget fill the length to within 40 tokens, never over");
}

/* The string-match score on answers written by hand. */
static void
check_score(void)
{
	char *one[] = { "1234567" };
	char *four[] = { "1111111", "2222222", "3333333", "4444444" };
	char *vars[] = { "BQPCO", "PFGQT" };

	ok(task_score(one, 1, " 1234567.") == 1.0 &&
	    task_score(one, 1, "123456 7") == 0.0 &&
	    task_score(one, 1, "") == 0.0,
	    "score: the reference found is 1, a near miss 0");
	ok(task_score(four, 4, "2222222 and 4444444, maybe 5555555") == 0.5 &&
	    task_score(four, 4, "4444444 3333333 2222222 1111111") == 1.0,
	    "score: two of four values is 0.5, all four in any order 1");
	ok(task_score(vars, 2, "the variables are bqpco, PfGqT") == 1.0,
	    "score: case is ignored");
}

/* The bootstrap interval holds the mean and narrows with more samples. */
static void
check_bootstrap(void)
{
	double x[400], lo, hi, lo4, hi4, m;
	int i;

	for (i = 0; i < 400; i++)
		x[i] = i % 10 < 7 ? 1.0 : 0.0;
	task_bootstrap(x, 20, 1, &lo, &hi);
	m = task_mean(x, 20);
	ok(lo <= m && m <= hi && lo < hi && lo >= 0.0 && hi <= 1.0,
	    "bootstrap: [%.3f, %.3f] holds the mean %.3f of 20", lo, hi, m);
	task_bootstrap(x, 400, 1, &lo4, &hi4);
	ok(hi4 - lo4 < (hi - lo) * 0.6 && lo4 <= 0.7 && 0.7 <= hi4,
	    "bootstrap: 400 samples give [%.3f, %.3f], narrower than 20's",
	    lo4, hi4);
	task_bootstrap(x, 1, 1, &lo, &hi);
	ok(lo == 1.0 && hi == 1.0, "bootstrap: one sample is its own "
	    "interval");
}

/* Asked after the compressed context, question A gives the same answer
 * before and after question B: the cache is rebuilt from the prefill. */
static void
check_restore(kvx_model *m, const struct task_env *env, const char *plan)
{
	struct entry ents[2];
	struct task_item it;
	struct task_row rows[2];
	kvx_ctx_params cp;
	kvx_ctx *src = NULL;
	char *a, *b, *c;
	int i;

	memset(ents, 0, sizeof ents);
	ents[0].path = "full";
	ents[1].path = plan;
	if (kvx_plan_load(plan, &ents[1].plan) != KVX_OK) {
		ok(0, "restore: %s", kvx_errmsg());
		return;
	}
	if (kvx_plan_check(ents[1].plan, m) != KVX_OK) {
		diag("restore: not run, %s is for another model", plan);
		kvx_plan_free(&ents[1].plan);
		return;
	}
	eval_label(&ents[1]);
	snprintf(ents[0].name, sizeof ents[0].name, "full");
	kvx_ctx_params_init(&cp);
	cp.n_ctx = 1024;
	cp.decode_headroom = 0;
	for (i = 0; i < 2; i++)
		if (kvx_ctx_new(m, ents[i].plan, &cp, &ents[i].ctx) != KVX_OK)
			fail(1, "%s", kvx_errmsg());
	if (kvx_ctx_new(m, NULL, &cp, &src) != KVX_OK)
		fail(1, "%s", kvx_errmsg());
	make(env, TASK_NIAH_MULTIQUERY, 512, 0, 1, 4, &it);
	/* questions 0, 1, 0: the third must answer as the first */
	free(it.q[2].text);
	free(it.q[2].ids);
	free(it.q[2].refs[0]);
	it.q[2].text = strdup(it.q[0].text);
	it.q[2].refs[0] = strdup(it.q[0].refs[0]);
	it.q[2].ids = malloc(sizeof *it.q[2].ids * it.q[0].n_ids);
	memcpy(it.q[2].ids, it.q[0].ids, sizeof *it.q[2].ids * it.q[0].n_ids);
	it.q[2].n_ids = it.q[0].n_ids;
	it.n_q = 3;
	free(it.q[3].text);
	free(it.q[3].ids);
	free(it.q[3].refs[0]);
	memset(&it.q[3], 0, sizeof it.q[3]);
	eval_tasks(m, src, ents, 2, &it, 1, 0, rows);
	for (i = 0; i < 2; i++) {
		diag("%s: %s", ents[i].name, rows[i].answer);
		a = rows[i].answer;
		b = strstr(a, " | ");
		c = b != NULL ? strstr(b + 3, " | ") : NULL;
		ok(b != NULL && c != NULL && (size_t)(b - a) == strlen(c + 3) &&
		    strncmp(a, c + 3, (size_t)(b - a)) == 0,
		    "restore (%s): question A answers alike before and after "
		    "question B", ents[i].name);
		ok(rows[i].kv_bytes > 0 && rows[i].kv_bytes_full ==
		    rows[0].kv_bytes && (i == 0 || rows[i].kv_bytes <
		    rows[0].kv_bytes), "restore (%s): its cache's bytes "
		    "are recorded", ents[i].name);
		free(rows[i].answer);
	}
	ok(rows[0].score > 0.0, "the full cache finds a needle in 512 tokens "
	    "(score %.2f)", rows[0].score);
	task_item_free(&it);
	for (i = 0; i < 2; i++) {
		kvx_ctx_free(&ents[i].ctx);
		kvx_plan_free(&ents[i].plan);
	}
	kvx_ctx_free(&src);
}

int
main(void)
{
	const char *path = getenv("KVX_MODEL"), *top = getenv("top_srcdir");
	char plan[4096], prose[] = "/tmp/kvx-test-tasks-XXXXXX";
	struct task_env env;
	kvx_model *m = NULL;
	char err[256];
	FILE *f;
	int fd, i;

	check_score();
	check_bootstrap();
	if (path == NULL || kvx_model_open(path, NULL, &m) != KVX_OK) {
		diag("no model (KVX_MODEL): the generators need its tokenizer");
		return tap_done();
	}
	if (task_env_init(&env, m, 1, NULL, 0, NULL, err, sizeof err) != 0) {
		printf("Bail out! %s\n", err);
		return 1;
	}
	diag("words: %s (%d)", env.words_generated ? "generated" :
	    "/usr/share/dict/words", env.n_words);
	check_depths(&env);
	check_multikey(&env);
	check_multi(&env);
	check_vt(&env);
	check_counts(&env);
	check_determinism(&env);
	check_lengths(m, &env);
	if ((fd = mkstemp(prose)) >= 0 && (f = fdopen(fd, "w")) != NULL) {
		for (i = 0; i < 400; i++)
			fprintf(f, "Sentence number %d of the test prose is "
			    "here, and it says little of \xc5ngstr\xc3\xb6m.%s",
			    i, i % 7 == 6 ? "\n\n" : " ");
		fclose(f);
		check_prose(m, prose);
		remove(prose);
	}
	snprintf(plan, sizeof plan, "%s/plans/smollm2-135m-uniform-20.yaml",
	    top != NULL ? top : ".");
	check_restore(m, &env, plan);
	task_env_free(&env);
	kvx_model_close(&m);
	return tap_done();
}

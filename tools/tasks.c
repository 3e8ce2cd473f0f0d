/*
 * tasks.c - RULER-style synthetic long-context items, fitted to a length
 * in tokens with the model's tokenizer; RULER's string-match score,
 * bootstrap intervals, and the items as JSON lines.
 * SPDX-License-Identifier: MIT
 *
 * An item is built from a number of haystack units (sentences of prose,
 * the noise sentence, list entries or coded words): the random choices
 * that do not depend on that number (keys, values, names) are drawn
 * first, from a generator seeded by (seed, task, length, sample), so that
 * fitting the item to its length by a search over the number of units
 * changes the haystack's size and nothing else.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tasks.h"
#include "util.h"

/* RULER's repeated noise sentence: a haystack with nothing to retrieve. */
static const char noise[] = "The grass is green. The sky is blue. "
    "The sun is yellow. Here we go. There and back again. ";

static const char *const names[TASK_N] = {
	"niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery",
	"vt", "cwe", "fwe", "passkey"
};

/* Greedy tokens each task may decode: its longest answer, with room. */
static const int answer_tokens[TASK_N] = { 24, 48, 64, 24, 40, 80, 32, 16 };

#define N_CHAIN		5	/* variables of a vt chain: 4 hops */
#define N_NEEDLE	4	/* needles of the multi-needle tasks */
#define N_COMMON	10	/* common words asked for by cwe */
#define FWE_VOCAB	64	/* coded words fwe draws from */
#define MAX_UNIT	240	/* bytes of prose in a haystack unit, about */

/* A growing string. */
struct sbuf {
	char	*s;
	size_t	 n, cap;
};

/* Append printf output to b; exits on no memory like the rest of the
 * program's allocations. */
static void KVX_PRINTF(2, 3)
sb_printf(struct sbuf *b, const char *fmt, ...)
{
	va_list ap;
	int k;

	for (;;) {
		va_start(ap, fmt);
		k = vsnprintf(b->s + b->n, b->cap - b->n, fmt, ap);
		va_end(ap);
		if (k >= 0 && (size_t)k < b->cap - b->n)
			break;
		b->cap = b->cap * 2 + (size_t)k + 64;
		if ((b->s = realloc(b->s, b->cap)) == NULL) {
			fputs("kvx-eval: out of memory\n", stderr);
			exit(1);
		}
	}
	b->n += (size_t)k;
}

/* Append len bytes of s to b. */
static void
sb_add(struct sbuf *b, const char *s, size_t len)
{
	sb_printf(b, "%.*s", (int)len, s);
}

/* strdup that exits on no memory. */
static char *
xstrdup(const char *s)
{
	char *d = strdup(s);

	if (d == NULL) {
		fputs("kvx-eval: out of memory\n", stderr);
		exit(1);
	}
	return d;
}

/* A number in [0, n) from the generator. */
static int
rnd(uint64_t *st, int n)
{
	return (int)(kvx__splitmix64(st) % (uint64_t)n);
}

/* A number in [0, 1) from the generator. */
static double
rnd01(uint64_t *st)
{
	return (double)(kvx__splitmix64(st) >> 11) / 9007199254740992.0;
}

/* The task's name as --tasks spells it. */
const char *
task_name(enum task_kind k)
{
	return k < TASK_N ? names[k] : "?";
}

/* The task's family: RULER's categories. */
const char *
task_family(enum task_kind k)
{
	return k == TASK_VT ? "tracing" : k == TASK_CWE || k == TASK_FWE ?
	    "aggregation" : "retrieval";
}

/* Parse a comma-separated list of task names into kinds. */
int
task_parse_list(const char *s, enum task_kind *kinds, char *err, size_t size)
{
	int n = 0, k, j, have[TASK_N] = { 0 };
	const char *p = s, *e;
	size_t len;

	while (*p != '\0') {
		e = strchr(p, ',');
		len = e != NULL ? (size_t)(e - p) : strlen(p);
		if (len == 5 && strncmp(p, "ruler", 5) == 0) {
			for (k = 0; k < TASK_N; k++)
				have[k] = 1;
		} else {
			for (k = 0; k < TASK_N; k++)
				if (strlen(names[k]) == len &&
				    strncmp(p, names[k], len) == 0)
					break;
			if (k == TASK_N) {
				snprintf(err, size, "--tasks: unknown task "
				    "'%.*s' (niah_single, niah_multikey, "
				    "niah_multivalue, niah_multiquery, vt, cwe, "
				    "fwe, passkey or ruler)", (int)len, p);
				return -1;
			}
			have[k] = 1;
		}
		if (e == NULL)
			break;
		p = e + 1;
	}
	for (j = 0; j < TASK_N; j++)
		if (have[j])
			kinds[n++] = (enum task_kind)j;
	if (n == 0)
		snprintf(err, size, "--tasks: no task named");
	return n > 0 ? n : -1;
}

// --- the environment: template, prose, words --------------------------------

/*
 * Split the chat template around a user message, so that the context
 * and a question can be tokenized apart and joined: pre, the user's
 * text, post, then the answer.
 */
static int
split_template(struct task_env *env, char *err, size_t size)
{
	static const char mark[] = "\x01kvx-user\x01";
	char *out, *at;

	if (kvx_chat_format(env->model, NULL, mark, &out) != KVX_OK) {
		snprintf(err, size, "chat template: %s", kvx_errmsg());
		return -1;
	}
	if ((at = strstr(out, mark)) == NULL) {
		free(out);
		snprintf(err, size, "chat template does not hold the user's "
		    "message (use --format plain)");
		return -1;
	}
	*at = '\0';
	env->chat_pre = xstrdup(out);
	env->chat_post = xstrdup(at + strlen(mark));
	free(out);
	return 0;
}

/* Bytes of the valid UTF-8 sequence at p (n bytes left), or 0. */
static int
utf8_len(const unsigned char *p, size_t n)
{
	int len, i;

	if (p[0] < 0x80)
		return 1;
	len = p[0] >= 0xc2 && p[0] < 0xe0 ? 2 : p[0] >= 0xe0 &&
	    p[0] < 0xf0 ? 3 : p[0] >= 0xf0 && p[0] < 0xf5 ? 4 : 0;
	if (len == 0 || (size_t)len > n)
		return 0;
	for (i = 1; i < len; i++)
		if ((p[i] & 0xc0) != 0x80)
			return 0;
	return len;
}

/*
 * Read the haystack files into one text with each run of white space made
 * one space, and note where its sentences start.  A byte that is not
 * UTF-8 becomes '?', so that the dump stays valid JSON.
 */
static int
read_prose(struct task_env *env, const char *const *hay, int n_hay,
    char *err, size_t size)
{
	struct sbuf b = { NULL, 0, 0 };
	size_t len, i, cap = 0;
	char *buf;
	int f, sp, k;

	for (f = 0; f < n_hay; f++) {
		if (kvx__read_file(hay[f], 0, &buf, &len) != KVX_OK) {
			snprintf(err, size, "%s", kvx_errmsg());
			free(b.s);
			return -1;
		}
		for (sp = 1, i = 0; i < len; i++) {
			if (isspace((unsigned char)buf[i])) {
				if (!sp)
					sb_add(&b, " ", 1);
				sp = 1;
			} else if (buf[i] != '\0') {
				k = utf8_len((unsigned char *)buf + i, len - i);
				if (k == 0)
					sb_add(&b, "?", 1);
				else
					sb_add(&b, buf + i, (size_t)k);
				i += k > 1 ? (size_t)k - 1 : 0;
				sp = 0;
			}
		}
		if (!sp)
			sb_add(&b, " ", 1);
		free(buf);
	}
	env->prose = b.s;
	env->n_sent = 0;
	if (b.n == 0) {
		snprintf(err, size, "--haystack: no text in the files");
		return -1;
	}
	/*
	 * a sentence ends at ". ", "! " or "? " after a letter, a digit, a
	 * quote or a bracket (not at "..", as code has); the next starts
	 * after the space.  Text without sentences (code, tables) is cut
	 * at a space after MAX_UNIT bytes, so that a unit stays small
	 * against the length it fills.
	 */
	for (i = 0; i < b.n; i++) {
		if (i > 0 && !(i > 2 && b.s[i - 1] == ' ' &&
		    ((strchr(".!?", b.s[i - 2]) != NULL &&
		    (isalnum((unsigned char)b.s[i - 3]) ||
		    strchr("\"')", b.s[i - 3]) != NULL)) ||
		    i - env->sent[env->n_sent - 1] >= MAX_UNIT)))
			continue;
		if ((size_t)env->n_sent == cap) {
			cap = cap * 2 + 256;
			env->sent = realloc(env->sent, sizeof *env->sent * cap);
			if (env->sent == NULL) {
				snprintf(err, size, "out of memory");
				return -1;
			}
		}
		env->sent[env->n_sent++] = i;
	}
	return 0;
}

/* 1 when w is a plain lower-case word of 3 to 9 letters. */
static int
plain_word(const char *w)
{
	size_t n = strlen(w), i;

	if (n < 3 || n > 9)
		return 0;
	for (i = 0; i < n; i++)
		if (w[i] < 'a' || w[i] > 'z')
			return 0;
	return 1;
}

/*
 * The word list: the plain words of a file, one a line (wamerican's
 * /usr/share/dict/words), or, without one, every two-syllable word of
 * fifteen consonants and five vowels.
 */
static int
read_words(struct task_env *env, const char *path, char *err, size_t size)
{
	static const char cons[] = "bdfghklmnprstvz", vow[] = "aeiou";
	size_t len, cap = 0;
	char *p, *line;
	int a, b, c, d;

	if (path == NULL && access("/usr/share/dict/words", R_OK) == 0)
		path = "/usr/share/dict/words";
	if (path == NULL) {
		env->words_generated = 1;
		env->words_buf = malloc(15 * 5 * 15 * 5 * 5);
		env->words = malloc(sizeof *env->words * 15 * 5 * 15 * 5);
		if (env->words_buf == NULL || env->words == NULL) {
			snprintf(err, size, "out of memory");
			return -1;
		}
		p = env->words_buf;
		for (a = 0; a < 15; a++)
			for (b = 0; b < 5; b++)
				for (c = 0; c < 15; c++)
					for (d = 0; d < 5; d++) {
						env->words[env->n_words++] = p;
						*p++ = cons[a];
						*p++ = vow[b];
						*p++ = cons[c];
						*p++ = vow[d];
						*p++ = '\0';
					}
		return 0;
	}
	if (kvx__read_file(path, 0, &env->words_buf, &len) != KVX_OK) {
		snprintf(err, size, "%s", kvx_errmsg());
		return -1;
	}
	for (line = strtok(env->words_buf, "\r\n"); line != NULL;
	    line = strtok(NULL, "\r\n")) {
		if (!plain_word(line))
			continue;
		if ((size_t)env->n_words == cap) {
			cap = cap * 2 + 1024;
			env->words = realloc(env->words,
			    sizeof *env->words * cap);
			if (env->words == NULL) {
				snprintf(err, size, "out of memory");
				return -1;
			}
		}
		env->words[env->n_words++] = line;
	}
	if (env->n_words < 1000) {
		snprintf(err, size, "%s: %d plain lower-case words, fewer than "
		    "1000", path, env->n_words);
		return -1;
	}
	return 0;
}

/* Make what every item is built from. */
int
task_env_init(struct task_env *env, const kvx_model *m, int chat,
    const char *const *hay, int n_hay, const char *words, char *err,
    size_t size)
{
	memset(env, 0, sizeof *env);
	env->model = m;
	env->chat = chat;
	if (chat && split_template(env, err, size) != 0)
		return -1;
	if (n_hay > 0 && read_prose(env, hay, n_hay, err, size) != 0)
		return -1;
	return read_words(env, words, err, size);
}

/* Free what task_env_init made. */
void
task_env_free(struct task_env *env)
{
	free(env->chat_pre);
	free(env->chat_post);
	free(env->prose);
	free(env->sent);
	free(env->words_buf);
	free(env->words);
	memset(env, 0, sizeof *env);
}

// --- items -------------------------------------------------------------------

/* What one build draws before the haystack is laid out. */
struct draw {
	char	 key[N_NEEDLE][48];
	char	 val[N_NEEDLE][48];
	char	 var[N_CHAIN][8];
	double	 pos[N_NEEDLE + N_CHAIN];	/* depths in [0, 1] */
	int	 first_sent;
	uint64_t layout;			/* seeds the unit order */
};

/* A key: two words of the list joined by a hyphen. */
static void
draw_key(const struct task_env *env, uint64_t *st, char *out, size_t size)
{
	snprintf(out, size, "%s-%s", env->words[rnd(st, env->n_words)],
	    env->words[rnd(st, env->n_words)]);
}

/* A random version-4 UUID in its usual text form. */
static void
draw_uuid(uint64_t *st, char *out, size_t size)
{
	uint64_t a = kvx__splitmix64(st), b = kvx__splitmix64(st);

	snprintf(out, size, "%08x-%04x-4%03x-%04x-%012llx",
	    (unsigned)(a >> 32), (unsigned)(a >> 16) & 0xffff,
	    (unsigned)a & 0xfff, 0x8000 | ((unsigned)(b >> 48) & 0x3fff),
	    (unsigned long long)(b & 0xffffffffffffULL));
}

/* Draw everything an item needs but its layout. */
static void
draw_item(const struct task_env *env, enum task_kind k, int s, int n_s,
    uint64_t *st, struct draw *d)
{
	int i, j, dup;

	memset(d, 0, sizeof *d);
	for (i = 0; i < N_NEEDLE; i++) {
		do {
			draw_key(env, st, d->key[i], sizeof d->key[i]);
			for (dup = 0, j = 0; j < i; j++)
				dup |= strcmp(d->key[i], d->key[j]) == 0;
		} while (dup);
		if (k == TASK_NIAH_MULTIKEY)
			draw_uuid(st, d->val[i], sizeof d->val[i]);
		else if (k == TASK_PASSKEY)
			snprintf(d->val[i], sizeof d->val[i], "%d",
			    10000 + rnd(st, 90000));
		else
			do {
				snprintf(d->val[i], sizeof d->val[i], "%d",
				    1000000 + rnd(st, 9000000));
				for (dup = 0, j = 0; j < i; j++)
					dup |= strcmp(d->val[i],
					    d->val[j]) == 0;
			} while (dup);
	}
	for (i = 0; i < N_CHAIN; i++)
		do {
			for (j = 0; j < 5; j++)
				d->var[i][j] = (char)('A' + rnd(st, 26));
			for (dup = 0, j = 0; j < i; j++)
				dup |= strcmp(d->var[i], d->var[j]) == 0;
		} while (dup);
	/* the asked needle's depth: evenly over 0-100% across samples */
	d->pos[0] = n_s > 1 ? (double)s / (n_s - 1) : 0.5;
	for (i = 1; i < N_NEEDLE + N_CHAIN; i++)
		d->pos[i] = rnd01(st);
	d->first_sent = env->n_sent > 0 ? rnd(st, env->n_sent) : 0;
	d->layout = kvx__splitmix64(st);
}

/* Append haystack unit u (counted from the item's first) to b. */
static void
add_unit(const struct task_env *env, const struct draw *d, int u,
    struct sbuf *b)
{
	size_t at, end;
	int i;

	if (env->prose == NULL) {
		sb_add(b, noise, sizeof noise - 1);
		return;
	}
	i = (d->first_sent + u) % env->n_sent;
	at = env->sent[i];
	end = i + 1 < env->n_sent ? env->sent[i + 1] : strlen(env->prose);
	sb_add(b, env->prose + at, end - at);
}

/* The haystack unit a needle at depth pos (0 to 1) goes before. */
static int
unit_at(double pos, int units)
{
	return (int)lround(pos * units);
}

/*
 * Lay out a haystack of units units with the item's needles (text
 * nd[i] at depth pos[i]) and append it to b; record each needle.
 */
static void
lay_needles(const struct task_env *env, const struct draw *d, int units,
    char nd[][128], const double *pos, int n, struct task_item *it,
    struct sbuf *b, int prose)
{
	int u, i;

	it->hay_begin = b->n;
	for (u = 0; u <= units; u++) {
		for (i = 0; i < n; i++)
			if (unit_at(pos[i], units) == u) {
				sb_printf(b, "%s ", nd[i]);
				it->needle[it->n_needle] = xstrdup(nd[i]);
				it->depth[it->n_needle++] = 100.0 * pos[i];
			}
		if (u < units) {
			if (prose)
				add_unit(env, d, u, b);
			else
				sb_add(b, noise, sizeof noise - 1);
		}
	}
	it->hay_end = b->n;
}

/* Set question i's text (question, then the answer's first words) and
 * references. */
static void
set_question(const struct task_env *env, struct task_item *it, int i,
    const char *q, const char *prefix)
{
	struct sbuf b = { NULL, 0, 0 };

	if (env->chat)
		sb_printf(&b, "\n%s%s%s", q, env->chat_post, prefix);
	else
		sb_printf(&b, "\n%s\n%s", q, prefix);
	it->q[i].text = b.s;
}

/* Add reference r to question i. */
static void
add_ref(struct task_item *it, int i, const char *r)
{
	it->q[i].refs[it->q[i].n_ref++] = xstrdup(r);
}

/* The needle tasks and the pass key: needles in prose or in noise. */
static void
build_niah(const struct task_env *env, enum task_kind k,
    const struct draw *d, int units, struct task_item *it, struct sbuf *b)
{
	char nd[N_NEEDLE][128], q[256], pre[256];
	const char *what = k == TASK_NIAH_MULTIKEY ? "UUIDs" : "numbers";
	int i, n = k == TASK_NIAH_SINGLE || k == TASK_PASSKEY ? 1 : N_NEEDLE;

	if (k == TASK_PASSKEY)
		sb_printf(b, "A lot of irrelevant text follows, and somewhere "
		    "in it an important piece of information. Find it and "
		    "remember it: you will be asked about it.\n\n");
	else
		sb_printf(b, "The text below hides some special magic %s. "
		    "Read it carefully and remember them: a question about "
		    "them follows the text.\n\n", what);
	for (i = 0; i < n; i++) {
		const char *key = d->key[k == TASK_NIAH_MULTIVALUE ? 0 : i];

		if (k == TASK_PASSKEY)
			snprintf(nd[i], sizeof nd[i], "The pass key is %s. "
			    "Remember it. %s is the pass key.", d->val[i],
			    d->val[i]);
		else
			snprintf(nd[i], sizeof nd[i], "One of the special "
			    "magic %s for %s is: %s.", what, key, d->val[i]);
	}
	lay_needles(env, d, units, nd, d->pos, n, it, b,
	    env->prose != NULL && k != TASK_PASSKEY);
	sb_printf(b, "\n");
	switch (k) {
	case TASK_PASSKEY:
		set_question(env, it, 0, "What is the pass key?",
		    "The pass key is");
		add_ref(it, 0, d->val[0]);
		it->n_q = 1;
		break;
	case TASK_NIAH_MULTIVALUE:
		snprintf(q, sizeof q, "What are all the special magic numbers "
		    "for %s mentioned in the text above?", d->key[0]);
		snprintf(pre, sizeof pre, "The special magic numbers for %s "
		    "mentioned in the text above are", d->key[0]);
		set_question(env, it, 0, q, pre);
		for (i = 0; i < n; i++)
			add_ref(it, 0, d->val[i]);
		it->n_q = 1;
		break;
	default:
		/* multiquery asks about each of its keys in turn */
		it->n_q = k == TASK_NIAH_MULTIQUERY ? N_NEEDLE : 1;
		for (i = 0; i < it->n_q; i++) {
			snprintf(q, sizeof q, "What is the special magic %s "
			    "for %s mentioned in the text above?",
			    k == TASK_NIAH_MULTIKEY ? "UUID" : "number",
			    d->key[i]);
			snprintf(pre, sizeof pre, "The special magic %s for "
			    "%s mentioned in the text above is",
			    k == TASK_NIAH_MULTIKEY ? "UUID" : "number",
			    d->key[i]);
			set_question(env, it, i, q, pre);
			add_ref(it, i, d->val[i]);
		}
	}
}

/* Compare two doubles, for qsort. */
static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* Variable tracking: a chain of five assignments in noise. */
static void
build_vt(const struct task_env *env, const struct draw *d, int units,
    struct task_item *it, struct sbuf *b)
{
	char nd[N_CHAIN][128], q[256], pre[256];
	double pos[N_CHAIN];
	int i;

	sb_printf(b, "Memorize and follow the chain of variable assignments "
	    "hidden in the text below.\n\n");
	/* in order along the text, so the chain reads forwards */
	memcpy(pos, d->pos + N_NEEDLE, sizeof pos);
	qsort(pos, N_CHAIN, sizeof *pos, cmp_double);
	snprintf(nd[0], sizeof nd[0], "VAR %s = %s.", d->var[0],
	    d->val[0] + 2);
	for (i = 1; i < N_CHAIN; i++)
		snprintf(nd[i], sizeof nd[i], "VAR %s = VAR %s.", d->var[i],
		    d->var[i - 1]);
	lay_needles(env, d, units, nd, pos, N_CHAIN, it, b, 0);
	sb_printf(b, "\n");
	snprintf(q, sizeof q, "Question: Which variables are assigned the "
	    "value %s in the text above, directly or through other "
	    "variables?", d->val[0] + 2);
	snprintf(pre, sizeof pre, "Answer: Following the chain of assignments "
	    "in the text above, the variables assigned the value %s are:",
	    d->val[0] + 2);
	set_question(env, it, 0, q, pre);
	for (i = 0; i < N_CHAIN; i++)
		add_ref(it, 0, d->var[i]);
	it->n_q = 1;
}

static void	fwe_counts(int, int *);

/* Shuffle n ints with the generator (Fisher-Yates). */
static void
shuffle(int *x, int n, uint64_t *st)
{
	int i, j, t;

	for (i = n - 1; i > 0; i--) {
		j = rnd(st, i + 1);
		t = x[i];
		x[i] = x[j];
		x[j] = t;
	}
}

/*
 * Common words: a numbered list where N_COMMON words appear fc times
 * each and units other words uc times each, fc > uc, shuffled.
 */
static void
build_cwe(const struct task_env *env, int length, int units,
    struct task_item *it, struct sbuf *b, uint64_t seed)
{
	int fc = length >= 4096 ? 30 : length >= 2048 ? 10 : length >= 1024 ?
	    6 : 3;
	int uc = fc >= 10 ? 3 : fc >= 6 ? 2 : 1, nw = N_COMMON + units;
	int n, i, j, *w, *list;
	uint64_t st = seed;

	w = malloc(sizeof *w * (size_t)nw);
	n = N_COMMON * fc + units * uc;
	list = malloc(sizeof *list * (size_t)(n > 0 ? n : 1));
	if (w == NULL || list == NULL) {
		fputs("kvx-eval: out of memory\n", stderr);
		exit(1);
	}
	/* distinct words: a partial shuffle of the word list's indices */
	for (i = 0; i < nw; i++) {
		int dup;

		do {
			w[i] = rnd(&st, env->n_words);
			for (dup = 0, j = 0; j < i; j++)
				dup |= w[j] == w[i];
		} while (dup);
	}
	for (n = 0, i = 0; i < nw; i++)
		for (j = 0; j < (i < N_COMMON ? fc : uc); j++)
			list[n++] = w[i];
	shuffle(list, n, &st);
	sb_printf(b, "Below is a numbered list of words. Some words appear "
	    "more often than others: remember which ones appear most "
	    "often.\n\n");
	it->hay_begin = b->n;
	for (i = 0; i < n; i++)
		sb_printf(b, "%d. %s\n", i + 1, env->words[list[i]]);
	it->hay_end = b->n;
	set_question(env, it, 0, "Question: What are the 10 most common "
	    "words in the list above?", "Answer: The 10 words that appear "
	    "most often in the list are:");
	for (i = 0; i < N_COMMON; i++)
		add_ref(it, 0, env->words[w[i]]);
	it->n_q = 1;
	free(w);
	free(list);
}

/*
 * Frequent words: coded words (three to six random letters) with counts
 * following a Zipf law of exponent 2 over FWE_VOCAB ranks, at about
 * units words in all, shuffled; the three most frequent are asked.
 */
static void
build_fwe(const struct task_env *env, int units, struct task_item *it,
    struct sbuf *b, uint64_t seed)
{
	char code[FWE_VOCAB][8];
	int cnt[FWE_VOCAB], i, j, n, len, dup, *list;
	uint64_t st = seed;

	for (i = 0; i < FWE_VOCAB; i++)
		do {
			len = 3 + rnd(&st, 4);
			for (j = 0; j < len; j++)
				code[i][j] = (char)('a' + rnd(&st, 26));
			code[i][len] = '\0';
			for (dup = 0, j = 0; j < i; j++)
				dup |= strcmp(code[i], code[j]) == 0;
		} while (dup);
	fwe_counts(units, cnt);
	for (n = 0, i = 0; i < FWE_VOCAB; i++)
		n += cnt[i];
	if ((list = malloc(sizeof *list * (size_t)(n > 0 ? n : 1))) == NULL) {
		fputs("kvx-eval: out of memory\n", stderr);
		exit(1);
	}
	for (n = 0, i = 0; i < FWE_VOCAB; i++)
		for (j = 0; j < cnt[i]; j++)
			list[n++] = i;
	shuffle(list, n, &st);
	sb_printf(b, "Read the coded text below and keep count of how often "
	    "each coded word appears: find the three coded words that appear "
	    "most often.\n\n");
	it->hay_begin = b->n;
	for (i = 0; i < n; i++)
		sb_printf(b, "%s%s", code[list[i]], i % 8 == 7 ? " .... " :
		    " ");
	it->hay_end = b->n;
	sb_printf(b, "\n");
	set_question(env, it, 0, "Question: Ignore the dots '....'. Without "
	    "explanation, what are the three most frequent coded words in the "
	    "text above?", "Answer: According to the coded text above, the "
	    "three most frequent coded words are:");
	for (i = 0; i < 3; i++)
		add_ref(it, 0, code[i]);
	it->n_q = 1;
	free(list);
}

/* fwe's count of each rank for about units words. */
static void
fwe_counts(int units, int *cnt)
{
	double z = 0.0;
	int i;

	for (i = 0; i < FWE_VOCAB; i++)
		z += 1.0 / ((i + 1.0) * (i + 1.0));
	for (i = 0; i < FWE_VOCAB; i++)
		cnt[i] = (int)floor(units / z / ((i + 1.0) * (i + 1.0)));
}

/* Free an item's strings and tokens. */
void
task_item_free(struct task_item *it)
{
	int i, j;

	free(it->context);
	free(it->ids);
	for (i = 0; i < it->n_q; i++) {
		free(it->q[i].text);
		free(it->q[i].ids);
		for (j = 0; j < it->q[i].n_ref; j++)
			free(it->q[i].refs[j]);
	}
	for (i = 0; i < it->n_needle; i++)
		free(it->needle[i]);
	memset(it, 0, sizeof *it);
}

/* The generator's start for one item. */
static uint64_t
item_seed(uint64_t seed, enum task_kind k, int length, int s)
{
	uint64_t st = seed ^ 0x6b76782d6576616cULL;

	st = kvx__splitmix64(&st) ^ (uint64_t)k;
	st = kvx__splitmix64(&st) ^ (uint64_t)length;
	st = kvx__splitmix64(&st) ^ (uint64_t)s;
	return kvx__splitmix64(&st);
}

/* Build the item's text with a haystack of units units. */
static void
build(const struct task_env *env, enum task_kind k, int length, int s,
    int n_s, uint64_t seed, int units, struct task_item *it)
{
	struct sbuf b = { NULL, 0, 0 };
	uint64_t st = item_seed(seed, k, length, s);
	struct draw d;

	task_item_free(it);
	it->kind = k;
	it->length = length;
	it->sample = s;
	it->answer_tokens = answer_tokens[k];
	snprintf(it->id, sizeof it->id, "%s-%d-%d", names[k], length, s);
	draw_item(env, k, s, n_s, &st, &d);
	if (env->chat)
		sb_printf(&b, "%s", env->chat_pre);
	switch (k) {
	case TASK_VT:
		build_vt(env, &d, units, it, &b);
		break;
	case TASK_CWE:
		build_cwe(env, length, units, it, &b, d.layout);
		break;
	case TASK_FWE:
		build_fwe(env, units, it, &b, d.layout);
		break;
	default:
		build_niah(env, k, &d, units, it, &b);
	}
	it->context = b.s;
}

/* Tokenize s (special tokens parsed in the chat format); *out malloc'd.
 * first: s opens the sequence, so it starts with BOS where the model
 * wants one (Gemma 3). */
static int
tokenize(const struct task_env *env, const char *s, int first,
    int32_t **out, int *n)
{
	size_t len = strlen(s);
	int cap = (int)(len + 16), bos;

	bos = first && kvx_token_add_bos(env->model) ? 1 : 0;
	if (len > (size_t)INT32_MAX - 16 ||
	    (*out = malloc(sizeof **out * (size_t)cap)) == NULL)
		return -1;
	(*out)[0] = kvx_token_bos(env->model);
	if (kvx_tokenize(env->model, s, len, env->chat, *out + bos,
	    cap - bos, n) != KVX_OK) {
		free(*out);
		*out = NULL;
		return -1;
	}
	*n += bos;
	return 0;
}

/* Tokens the item's longest prompt takes with its answer budget. */
int
task_item_tokens(const struct task_item *it)
{
	int i, q = 0;

	for (i = 0; i < it->n_q; i++)
		if (it->q[i].n_ids > q)
			q = it->q[i].n_ids;
	return it->n_ids + q + it->answer_tokens;
}

/* Tokenize the item's context and questions; -1 when the tokenizer
 * fails. */
static int
tokenize_item(const struct task_env *env, struct task_item *it)
{
	int i;

	free(it->ids);
	it->ids = NULL;
	if (tokenize(env, it->context, 1, &it->ids, &it->n_ids) != 0)
		return -1;
	for (i = 0; i < it->n_q; i++) {
		free(it->q[i].ids);
		it->q[i].ids = NULL;
		if (tokenize(env, it->q[i].text, 0, &it->q[i].ids,
		    &it->q[i].n_ids) != 0)
			return -1;
	}
	return 0;
}

/* Build with units units and return its tokens, or -1. */
static int
try_units(const struct task_env *env, enum task_kind k, int length, int s,
    int n_s, uint64_t seed, int units, struct task_item *it)
{
	build(env, k, length, s, n_s, seed, units, it);
	if (tokenize_item(env, it) != 0)
		return -1;
	return task_item_tokens(it);
}

/* Make sample s of a task, fitted to length tokens. */
int
task_make(const struct task_env *env, enum task_kind k, int length, int s,
    int n_s, uint64_t seed, struct task_item *it, char *err, size_t size)
{
	int lo = 0, hi = 16, mid, t, cnt[FWE_VOCAB];

	memset(it, 0, sizeof *it);
	if ((t = try_units(env, k, length, s, n_s, seed, 0, it)) < 0)
		goto tokfail;
	if (t > length) {
		snprintf(err, size, "%s: length %d is too short (%d tokens "
		    "without a haystack)", names[k], length, t);
		task_item_free(it);
		return -1;
	}
	/* the largest haystack that fits: double, then bisect */
	for (;;) {
		if ((t = try_units(env, k, length, s, n_s, seed, hi,
		    it)) < 0)
			goto tokfail;
		if (t > length)
			break;
		lo = hi;
		if (hi > (1 << 24)) {
			snprintf(err, size, "%s: length %d cannot be filled",
			    names[k], length);
			task_item_free(it);
			return -1;
		}
		hi *= 2;
	}
	while (hi - lo > 1) {
		mid = lo + (hi - lo) / 2;
		if ((t = try_units(env, k, length, s, n_s, seed, mid,
		    it)) < 0)
			goto tokfail;
		if (t <= length)
			lo = mid;
		else
			hi = mid;
	}
	if (try_units(env, k, length, s, n_s, seed, lo, it) < 0)
		goto tokfail;
	if (k == TASK_FWE) {
		fwe_counts(lo, cnt);
		if (cnt[2] <= cnt[3]) {
			snprintf(err, size, "fwe: length %d is too short for "
			    "three distinct counts", length);
			task_item_free(it);
			return -1;
		}
	}
	return 0;
tokfail:
	snprintf(err, size, "%s: %s", names[k], kvx_errmsg());
	task_item_free(it);
	return -1;
}

// --- scores ----------------------------------------------------------------

/* 1 when needle occurs in hay, ignoring ASCII case. */
static int
has_nocase(const char *hay, const char *needle)
{
	size_t n = strlen(needle), i;

	if (n == 0)
		return 1;
	for (; *hay != '\0'; hay++) {
		for (i = 0; i < n && hay[i] != '\0' &&
		    tolower((unsigned char)hay[i]) ==
		    tolower((unsigned char)needle[i]); i++)
			;
		if (i == n)
			return 1;
	}
	return 0;
}

/* RULER's string match: the share of references found in the answer. */
double
task_score(char *const *refs, int n_ref, const char *answer)
{
	int i, hit = 0;

	for (i = 0; i < n_ref; i++)
		hit += has_nocase(answer, refs[i]);
	return n_ref > 0 ? (double)hit / n_ref : 0.0;
}

/* Mean of n values; 0 for none. */
double
task_mean(const double *x, int n)
{
	double s = 0.0;
	int i;

	for (i = 0; i < n; i++)
		s += x[i];
	return n > 0 ? s / n : 0.0;
}

/* Percentile bootstrap: the 2.5% and 97.5% quantiles of the means of
 * TASK_BOOT_REPS resamples. */
void
task_bootstrap(const double *x, int n, uint64_t seed, double *lo,
    double *hi)
{
	static double m[TASK_BOOT_REPS];
	uint64_t st = seed ^ 0x626f6f74ULL;
	double s;
	int r, i;

	if (n <= 1) {
		*lo = *hi = n == 1 ? x[0] : 0.0;
		return;
	}
	for (r = 0; r < TASK_BOOT_REPS; r++) {
		for (s = 0.0, i = 0; i < n; i++)
			s += x[rnd(&st, n)];
		m[r] = s / n;
	}
	qsort(m, TASK_BOOT_REPS, sizeof *m, cmp_double);
	*lo = m[(int)(0.025 * TASK_BOOT_REPS)];
	*hi = m[(int)(0.975 * TASK_BOOT_REPS) - 1];
}

// --- the dump --------------------------------------------------------------

/* Write s as a JSON string. */
static void
json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s != '\0'; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c == '\n')
			fputs("\\n", f);
		else if (c == '\t')
			fputs("\\t", f);
		else if (c < 0x20)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

/* Write the item as one JSON line. */
int
task_dump(FILE *f, const struct task_item *it, int chat)
{
	int i, j;

	fprintf(f, "{\"id\":");
	json_str(f, it->id);
	fprintf(f, ",\"task\":\"%s\",\"length\":%d,\"sample\":%d,"
	    "\"format\":\"%s\",\"tokens\":%d,\"answer_tokens\":%d,"
	    "\"context\":", names[it->kind], it->length, it->sample,
	    chat ? "chat" : "plain", task_item_tokens(it), it->answer_tokens);
	json_str(f, it->context);
	fprintf(f, ",\"questions\":[");
	for (i = 0; i < it->n_q; i++) {
		fputs(i ? "," : "", f);
		json_str(f, it->q[i].text);
	}
	fprintf(f, "],\"references\":[");
	for (i = 0; i < it->n_q; i++) {
		fputs(i ? ",[" : "[", f);
		for (j = 0; j < it->q[i].n_ref; j++) {
			fputs(j ? "," : "", f);
			json_str(f, it->q[i].refs[j]);
		}
		fputc(']', f);
	}
	fprintf(f, "]}\n");
	return ferror(f) ? -1 : 0;
}

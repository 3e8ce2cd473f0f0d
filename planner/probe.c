/*
 * probe.c - retrieval probes built from calibration text.
 * SPDX-License-Identifier: GPL-3.0-or-later
 *
 * Statements are spliced into the prose at token boundaries, each on a
 * line of its own, so that the tokens around them stay those of the prose.
 * The wording differs from kvx-eval's task suite on purpose: the plan is
 * measured there, and should not be fitted to its templates.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "probe.h"
#include "util.h"

static const char *const adjective[] = {
	"amber", "silent", "crooked", "velvet", "northern", "hollow",
	"copper", "frozen", "gentle", "hidden", "ancient", "narrow",
	"scarlet", "wooden", "distant", "bitter"
};
static const char *const noun[] = {
	"lantern", "harbour", "falcon", "orchard", "ledger", "violin",
	"compass", "meadow", "furnace", "glacier", "pillar", "chapel",
	"saddle", "beacon", "thimble", "quarry"
};
#define N_ADJ	(int)(sizeof adjective / sizeof adjective[0])
#define N_NOUN	(int)(sizeof noun / sizeof noun[0])

/* One statement's texts before tokenization. */
struct stmt {
	char	 say[128];	/* the inserted line */
	char	 ask[192];	/* the question and the answer's lead */
	char	 ans[32];	/* the answer, with its leading space */
	int32_t	*ids;
	int	 n;
};

/* Uniform integer in [0, n). */
static int64_t
below(uint64_t *s, int64_t n)
{
	return n > 0 ? (int64_t)(kvx__splitmix64(s) % (uint64_t)n) : 0;
}

/* Tokenize text into a fresh array. */
static kvx_status
encode(const kvx_model *m, const char *text, int32_t **ids, int *n)
{
	size_t len = strlen(text);
	int cap = (int)len + 8;
	kvx_status rc;

	if ((*ids = kvx__malloc_array((size_t)cap, sizeof **ids)) == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "out of memory");
	if ((rc = kvx_tokenize(m, text, len, 0, *ids, cap, n)) != KVX_OK) {
		free(*ids);
		*ids = NULL;
	}
	return rc;
}

/* Write statement i's texts: a named code or a record's value. */
static void
compose(struct stmt *st, int kind, int name, uint64_t *s)
{
	static const char hex[] = "0123456789abcdef";
	char val[16];
	int i;

	if (kind == 0) {
		const char *a = adjective[name / N_NOUN % N_ADJ];
		const char *b = noun[name % N_NOUN];

		snprintf(val, sizeof val, "%07lld",
		    (long long)(1000000 + below(s, 9000000)));
		snprintf(st->say, sizeof st->say, "\nThe access code for the "
		    "%s %s is %s.\n", a, b, val);
		snprintf(st->ask, sizeof st->ask, "\nQuestion: what is the "
		    "access code for the %s %s?\nAnswer: The access code for "
		    "the %s %s is", a, b, a, b);
	} else {
		int rec = 10000 + name * 347 % 90000;

		val[0] = 'k';
		for (i = 1; i < 8; i++)
			val[i] = hex[below(s, 16)];
		val[8] = '\0';
		snprintf(st->say, sizeof st->say, "\nRecord %05d holds the "
		    "value %s.\n", rec, val);
		snprintf(st->ask, sizeof st->ask, "\nQuestion: which value "
		    "does record %05d hold?\nAnswer: Record %05d holds the "
		    "value", rec, rec);
	}
	snprintf(st->ans, sizeof st->ans, " %s", val);
}

/* Release a probe's tokens. */
void
probe_free(probe *p)
{
	free(p->ids);
	memset(p, 0, sizeof *p);
}

/* Haystack tokens [from, to) into dst: the prose h as it runs, or its
 * first repeat tokens again and again. */
static void
hay_copy(int32_t *dst, const int32_t *h, int from, int to, int repeat)
{
	int j;

	if (repeat <= 0) {
		memcpy(dst, h + from, (size_t)(to - from) * sizeof *dst);
		return;
	}
	for (j = from; j < to; j++)
		*dst++ = h[j % repeat];
}

/* Build one probe; see probe.h. */
kvx_status
probe_make(const kvx_model *m, const int32_t *hay, int64_t n_hay, int n,
    int n_statement, int repeat, uint64_t *s, probe *out)
{
	struct stmt st[PROBE_MAX_STATEMENTS];
	int32_t *q = NULL, *a = NULL;
	int nq = 0, na = 0, used[N_ADJ * N_NOUN], k = n_statement;
	int i, t, fill, hay_len, first, at;
	int64_t off;
	kvx_status rc = KVX_OK;

	memset(out, 0, sizeof *out);
	memset(st, 0, sizeof st);
	memset(used, 0, sizeof used);
	if (k < 1 || k > PROBE_MAX_STATEMENTS)
		return kvx__fail(KVX_ERR_ARG, "--probes %d out of range [1, %d]",
		    k, PROBE_MAX_STATEMENTS);
	first = (int)below(s, 2);
	for (i = 0; i < k; i++) {
		int name;

		/* distinct names, so that the question has one answer */
		do
			name = (int)below(s, N_ADJ * N_NOUN);
		while (used[name]);
		used[name] = 1;
		compose(&st[i], (i + first) % 2, name, s);
	}
	out->asked = (int)below(s, k);
	if ((rc = encode(m, st[out->asked].ask, &q, &nq)) != KVX_OK ||
	    (rc = encode(m, st[out->asked].ans, &a, &na)) != KVX_OK)
		goto done;
	if (na > PROBE_MAX_ANSWER) {
		rc = kvx__fail(KVX_ERR_UNSUPPORTED, "a probe's answer takes %d "
		    "tokens, more than %d", na, PROBE_MAX_ANSWER);
		goto done;
	}
	fill = nq + na;
	for (i = 0; i < k; i++) {
		if ((rc = encode(m, st[i].say, &st[i].ids, &st[i].n)) != KVX_OK)
			goto done;
		fill += st[i].n;
	}
	hay_len = n - fill;
	if (hay_len < n / 2 || hay_len > n_hay) {
		rc = kvx__fail(KVX_ERR_UNSUPPORTED, "%d probes and their "
		    "question take "
		    "%d of the %d sample tokens (lower --probes or raise "
		    "--sample-tokens)", k, fill, n);
		goto done;
	}
	if ((out->ids = kvx__malloc_array((size_t)n, sizeof *out->ids)) ==
	    NULL) {
		rc = kvx__fail(KVX_ERR_NOMEM, "out of memory");
		goto done;
	}
	if (repeat > hay_len)
		repeat = hay_len;
	off = below(s, n_hay - (repeat > 0 ? repeat : hay_len) + 1);
	/* statement i goes at a random point of the i-th of k equal slots */
	for (i = 0, t = 0, at = 0; i < k; i++) {
		int lo = (int)((int64_t)hay_len * i / k);
		int hi = (int)((int64_t)hay_len * (i + 1) / k);
		int cut = lo + (int)below(s, hi - lo + 1);

		hay_copy(out->ids + t, hay + off, at, cut, repeat);
		t += cut - at;
		at = cut;
		out->depth[i] = t;
		memcpy(out->ids + t, st[i].ids, (size_t)st[i].n *
		    sizeof *out->ids);
		t += st[i].n;
	}
	hay_copy(out->ids + t, hay + off, at, hay_len, repeat);
	t += hay_len - at;
	memcpy(out->ids + t, q, (size_t)nq * sizeof *out->ids);
	t += nq;
	memcpy(out->ids + t, a, (size_t)na * sizeof *out->ids);
	t += na;
	out->n_ids = t;
	out->n_prompt = t - na;
	out->n_answer = na;
	out->n_question = nq;
	out->n_statement = k;
done:
	for (i = 0; i < k; i++)
		free(st[i].ids);
	free(q);
	free(a);
	if (rc != KVX_OK)
		probe_free(out);
	return rc;
}

/*
 * eval.c - kvx-eval's protocol: continuation perplexity, KL divergence
 * and top-1 agreement on real text under teacher forcing, and pass-key
 * retrieval in prose.
 * SPDX-License-Identifier: MIT
 *
 * Every text is prefilled once with a full cache; each plan then
 * compresses that prefill (kvx_compress_from) and runs the continuation,
 * so a plan costs its compression and its continuation only, and every
 * plan sees exactly the same prefill, on the CPU and on the GPU alike
 * (kvx-eval makes every context of one model, so on one device).
 */
#include "config.h"

#include <ctype.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eval.h"

/* Tokenize text (no special tokens); *out is malloc'd. */
kvx_status
eval_tokenize(const kvx_model *m, const char *s, size_t len, int32_t **out,
    int *n)
{
	int cap = (int)(len + 16);
	kvx_status rc;

	if (len > (size_t)INT32_MAX - 16)
		fail(EXIT_TEXT, "text of %zu bytes is too large", len);
	if ((*out = malloc(sizeof **out * (size_t)cap)) == NULL)
		fail(EXIT_RUN, "out of memory");
	if ((rc = kvx_tokenize(m, s, len, 0, *out, cap, n)) != KVX_OK) {
		free(*out);
		*out = NULL;
	}
	return rc;
}

/* Put the BOS token before the n ids of *ids (realloc'd) when the model
 * starts its texts with it (Gemma 3); others are left as they are. */
void
eval_add_bos(const kvx_model *m, int32_t **ids, int *n)
{
	int32_t *p;

	if (!kvx_token_add_bos(m))
		return;
	if ((p = realloc(*ids, sizeof *p * ((size_t)*n + 1))) == NULL)
		fail(EXIT_RUN, "out of memory");
	memmove(p + 1, p, sizeof *p * (size_t)*n);
	p[0] = kvx_token_bos(m);
	*ids = p;
	(*n)++;
}

/*
 * The plan's columns: its file name without directory or extension, and
 * the method and budget it records (kvx_plan_get_info).
 */
void
eval_label(struct entry *e)
{
	const char *b = strrchr(e->path, '/');
	kvx_plan_info pi;
	char *dot;

	if (kvx_plan_get_info(e->plan, &pi) != KVX_OK)
		fail(EXIT_PLAN, "%s: %s", e->path, kvx_errmsg());
	snprintf(e->name, sizeof e->name, "%s", b != NULL ? b + 1 : e->path);
	if ((dot = strrchr(e->name, '.')) != NULL && dot != e->name)
		*dot = '\0';
	snprintf(e->method, sizeof e->method, "%s",
	    pi.method != NULL && pi.method[0] != '\0' ? pi.method :
	    "unknown");
	if (pi.budget_kind == KVX_BUDGET_TOKENS)
		snprintf(e->budget, sizeof e->budget, "%.0ft", pi.budget);
	else
		snprintf(e->budget, sizeof e->budget, "%.4g", pi.budget);
}

/* Index of the largest of n logits. */
static int
argmax(const float *x, int n)
{
	int i, best = 0;

	for (i = 1; i < n; i++)
		if (x[i] > x[best])
			best = i;
	return best;
}

/* log sum exp of n logits, in double. */
static double
logsumexp(const float *x, int n)
{
	double s = 0.0, mx = x[argmax(x, n)];
	int i;

	for (i = 0; i < n; i++)
		s += exp((double)x[i] - mx);
	return mx + log(s);
}

/* KL(p || q) between the softmax distributions of two logit rows. */
static double
kl_rows(const float *p, const float *q, int n)
{
	double lp = logsumexp(p, n), lq = logsumexp(q, n), kl = 0.0, a;
	int i;

	for (i = 0; i < n; i++) {
		a = (double)p[i] - lp;
		kl += exp(a) * (a - ((double)q[i] - lq));
	}
	return kl > 0.0 ? kl : 0.0;
}

/* The logits predicting continuation token i: the prefill's last row for
 * the first token, then row i - 1 of the teacher-forced rows. */
static const float *
pred_row(const float *last, const float *rows, int i, int V)
{
	return i == 0 ? last : rows + (size_t)(i - 1) * V;
}

/* Prefill n tokens into src's sequence 0, which the plans start from. */
static kvx_status
prefill_src(kvx_ctx *src, const int32_t *ids, int n, float *last)
{
	kvx_seq_clear(src, 0);
	return kvx_prefill(src, 0, ids, n, last);
}

/* Compress the prefill in src into e's empty sequence 0. */
static kvx_status
compress_into(struct entry *e, kvx_ctx *src)
{
	kvx_seq_clear(e->ctx, 0);
	return kvx_compress_from(e->ctx, 0, src, 0);
}

/* Compress the prefill in src into e's context; *kv gets its bytes. */
static void
restore(struct entry *e, kvx_ctx *src, uint64_t *kv)
{
	kvx_memory mem;

	if (compress_into(e, src) != KVX_OK)
		fail(EXIT_RUN, "%s: %s", e->name, kvx_errmsg());
	if (kvx_ctx_memory(e->ctx, &mem) != KVX_OK)
		fail(EXIT_RUN, "%s", kvx_errmsg());
	*kv = mem.kv_bytes;
}

/*
 * Compress the shared prefill in src into e's context, teacher-force the
 * continuation, and leave its M - 1 logit rows in rows.
 */
static void
run_continuation(struct entry *e, kvx_ctx *src, const int32_t *cont, int M,
    float *rows, struct result *r)
{
	restore(e, src, &r->kv_bytes);
	/* the last continuation token predicts nothing we score */
	if (M > 1 && kvx_extend(e->ctx, 0, cont, M - 1, rows) != KVX_OK)
		fail(EXIT_RUN, "%s: %s", e->name, kvx_errmsg());
	kvx_seq_clear(e->ctx, 0);
}

/* Perplexity, KL from the full cache and top-1 agreement of one plan. */
static void
score(const float *last, const float *rows, const float *frows,
    const int32_t *cont, int M, int V, int is_full, struct result *r)
{
	const float *p, *f;
	double nll = 0.0, kl = 0.0;
	int i, agree = 0;

	for (i = 0; i < M; i++) {
		p = pred_row(last, rows, i, V);
		nll += logsumexp(p, V) - (double)p[cont[i]];
		if (is_full) {
			agree++;
			continue;
		}
		f = pred_row(last, frows, i, V);
		kl += kl_rows(f, p, V);
		agree += argmax(f, V) == argmax(p, V);
	}
	r->ppl = exp(nll / M);
	r->kl = kl / M;
	r->top1 = (double)agree / M;
}

/* Evaluate every entry on one text; res gets one result per entry. */
void
eval_text(kvx_model *m, kvx_ctx *src, struct entry *ents, int n_ent,
    const struct text *t, int ti, int n_text, int N, int M,
    struct result *res)
{
	const kvx_model_info *mi = kvx_model_get_info(m);
	int V = mi->n_vocab, i;
	size_t rowsz = (size_t)(M > 1 ? M - 1 : 1) * V;
	float *last, *frows, *rows;
	const int32_t *cont = t->ids + N;

	last = malloc(sizeof *last * (size_t)V);
	frows = malloc(sizeof *frows * rowsz);
	rows = malloc(sizeof *rows * rowsz);
	if (last == NULL || frows == NULL || rows == NULL)
		fail(EXIT_RUN, "out of memory");
	progress("text %d/%d: prefill of %d tokens", ti + 1, n_text, N);
	if (prefill_src(src, t->ids, N, last) != KVX_OK)
		fail(EXIT_RUN, "%s: %s", t->path, kvx_errmsg());
	for (i = 0; i < n_ent; i++) {
		progress("text %d/%d: %s", ti + 1, n_text, ents[i].name);
		run_continuation(&ents[i], src, cont, M, i == 0 ? frows : rows,
		    &res[i]);
		score(last, i == 0 ? frows : rows, frows, cont, M, V, i == 0,
		    &res[i]);
		res[i].kv_bytes_full = res[0].kv_bytes;
	}
	kvx_seq_clear(src, 0);
	free(last);
	free(frows);
	free(rows);
}

// --- pass key --------------------------------------------------------------

/* 1 when token id ends a sentence or a line, a good place for a needle. */
static int
ends_sentence(const kvx_model *m, int32_t id)
{
	char piece[64];
	size_t len;

	if (kvx_token_piece(m, id, piece, sizeof piece, &len) != KVX_OK ||
	    len == 0)
		return 0;
	return strchr(".!?\n", piece[len - 1]) != NULL;
}

/*
 * Build a prompt of prose with the needle at depth percent: f prose
 * tokens, the needle inserted after the sentence end nearest before the
 * depth, then the question if q != NULL.  Returns the prompt length.
 */
static int
build_haystack(const kvx_model *m, const int32_t *prose, int f,
    const int32_t *needle, int nn, const int32_t *q, int nq, int depth,
    int32_t *out)
{
	int at = (int)((long long)f * depth / 100), j, n = 0;

	if (at > 0 && at < f)
		for (j = at - 1; j >= 0 && j >= at - 128; j--)
			if (ends_sentence(m, prose[j])) {
				at = j + 1;
				break;
			}
	memcpy(out, prose, sizeof *out * (size_t)at);
	n = at;
	memcpy(out + n, needle, sizeof *out * (size_t)nn);
	n += nn;
	memcpy(out + n, prose + at, sizeof *out * (size_t)(f - at));
	n += f - at;
	if (q != NULL) {
		memcpy(out + n, q, sizeof *out * (size_t)nq);
		n += nq;
	}
	return n;
}

/*
 * Greedy-decode ANSWER_TOKENS tokens from first's logits in e's context and
 * write the first run of digits of the text into answer.
 */
static void
decode_answer(const kvx_model *m, struct entry *e, float *logits, int V,
    char *answer, size_t size)
{
	char text[256], piece[64];
	size_t tl = 0, pl;
	int32_t tok;
	int i, seq = 0, k = 0;
	const char *p;

	text[0] = '\0';
	for (i = 0; i < ANSWER_TOKENS; i++) {
		tok = argmax(logits, V);
		if (kvx_token_is_eog(m, tok))
			break;
		if (kvx_token_piece(m, tok, piece, sizeof piece, &pl) ==
		    KVX_OK && tl + pl < sizeof text) {
			memcpy(text + tl, piece, pl);
			text[tl += pl] = '\0';
		}
		if (i + 1 < ANSWER_TOKENS &&
		    kvx_decode(e->ctx, 1, &seq, &tok, logits) != KVX_OK)
			fail(EXIT_RUN, "%s: %s", e->name, kvx_errmsg());
	}
	for (p = text; *p != '\0' && !isdigit((unsigned char)*p); p++)
		;
	while (isdigit((unsigned char)*p) && (size_t)k + 1 < size)
		answer[k++] = *p++;
	answer[k] = '\0';
}

/*
 * Run the pass-key trials: for each length and depth, a question-agnostic
 * prefill (question after compression) and a question-aware one (question
 * inside the prefill); *out gets n_ent rows per trial.
 */
int
eval_passkey(kvx_model *m, kvx_ctx *src, struct entry *ents, int n_ent,
    const int32_t *prose, int n_prose, const int *lens, int n_len,
    const int *depths, int n_depth, uint64_t seed, struct pk_row **out)
{
	static const char *question = "\nWhat is the pass key? The pass key is";
	const kvx_model_info *mi = kvx_model_get_info(m);
	int V = mi->n_vocab, li, di, aware, i, nq, nn, f, n, nrow = 0, key;
	int32_t *q, *needle, *ids;
	float *last, *qrows, *logits;
	char ntext[128], want[16];
	struct pk_row *rows, *r;
	uint64_t rng = seed;

	if (eval_tokenize(m, question, strlen(question), &q, &nq) != KVX_OK)
		fail(EXIT_RUN, "%s", kvx_errmsg());
	rows = calloc((size_t)n_len * n_depth * 2 * n_ent, sizeof *rows);
	ids = malloc(sizeof *ids * (size_t)(lens[n_len - 1] + 64));
	last = malloc(sizeof *last * (size_t)V);
	logits = malloc(sizeof *logits * (size_t)V);
	qrows = malloc(sizeof *qrows * (size_t)nq * V);
	if (rows == NULL || ids == NULL || last == NULL || logits == NULL ||
	    qrows == NULL)
		fail(EXIT_RUN, "out of memory");
	for (li = 0; li < n_len; li++)
		for (di = 0; di < n_depth; di++) {
			key = 10000 + (int)(kvx__splitmix64(&rng) % 90000);
			snprintf(want, sizeof want, "%d", key);
			snprintf(ntext, sizeof ntext, " The pass key is %d. "
			    "Remember it. %d is the pass key.", key, key);
			if (eval_tokenize(m, ntext, strlen(ntext), &needle,
			    &nn) != KVX_OK)
				fail(EXIT_RUN, "%s", kvx_errmsg());
			/* the length covers prose, needle, question, answer */
			f = lens[li] - nn - nq - ANSWER_TOKENS;
			if (f < 1 || f > n_prose)
				fail(EXIT_TEXT, "pass key: %d prose tokens "
				    "cannot fill a context of %d tokens",
				    n_prose, lens[li]);
			for (aware = 0; aware < 2; aware++) {
				progress("pass key: length %d, depth %d%%, "
				    "%s", lens[li], depths[di], aware ?
				    "question-aware" : "question-agnostic");
				n = build_haystack(m, prose, f, needle, nn,
				    aware ? q : NULL, nq, depths[di], ids);
				if (prefill_src(src, ids, n, last) != KVX_OK)
					fail(EXIT_RUN, "pass key: %s",
					    kvx_errmsg());
				for (i = 0; i < n_ent; i++) {
					struct entry *e = &ents[i];

					if (compress_into(e, src) != KVX_OK)
						fail(EXIT_RUN, "%s: %s",
						    e->name, kvx_errmsg());
					if (aware)
						memcpy(logits, last,
						    sizeof *logits * V);
					else {
						if (kvx_extend(e->ctx, 0, q, nq,
						    qrows) != KVX_OK)
							fail(EXIT_RUN, "%s: %s",
							    e->name,
							    kvx_errmsg());
						memcpy(logits, qrows +
						    (size_t)(nq - 1) * V,
						    sizeof *logits * V);
					}
					r = &rows[nrow++];
					r->plan = i;
					r->length = lens[li];
					r->depth = depths[di];
					r->aware = aware;
					r->key = key;
					decode_answer(m, e, logits, V,
					    r->answer, sizeof r->answer);
					r->match = strcmp(r->answer, want) == 0;
					kvx_seq_clear(e->ctx, 0);
				}
			}
			free(needle);
		}
	kvx_seq_clear(src, 0);
	free(q);
	free(ids);
	free(last);
	free(logits);
	free(qrows);
	*out = rows;
	return nrow;
}

/* Mean over texts of each entry's results. */
void
eval_mean(const struct result *res, int n_text, int n_ent,
    struct result *mean)
{
	int t, i;

	for (i = 0; i < n_ent; i++) {
		double ppl = 0, kl = 0, top1 = 0, kb = 0, kf = 0;

		for (t = 0; t < n_text; t++) {
			const struct result *r = &res[(size_t)t * n_ent + i];

			ppl += r->ppl;
			kl += r->kl;
			top1 += r->top1;
			kb += (double)r->kv_bytes;
			kf += (double)r->kv_bytes_full;
		}
		mean[i].ppl = ppl / n_text;
		mean[i].kl = kl / n_text;
		mean[i].top1 = top1 / n_text;
		mean[i].kv_bytes = (uint64_t)llround(kb / n_text);
		mean[i].kv_bytes_full = (uint64_t)llround(kf / n_text);
	}
}


// --- task suite ------------------------------------------------------------

/*
 * Greedy-decode at most max tokens from logits in e's context; answer
 * (size bytes) gets the text.  Stops at the end of a turn, or once every
 * reference is in the answer, when more tokens cannot change the score.
 */
static void
decode_task(const kvx_model *m, struct entry *e, float *logits, int V,
    int max, const struct task_question *q, char *answer, size_t size)
{
	char piece[128];
	size_t al = 0, pl;
	int32_t tok;
	int i, seq = 0;

	answer[0] = '\0';
	for (i = 0; i < max; i++) {
		tok = argmax(logits, V);
		if (kvx_token_is_eog(m, tok))
			break;
		if (kvx_token_piece(m, tok, piece, sizeof piece, &pl) ==
		    KVX_OK && al + pl < size) {
			memcpy(answer + al, piece, pl);
			answer[al += pl] = '\0';
		}
		if (task_score(q->refs, q->n_ref, answer) == 1.0)
			break;
		if (i + 1 < max &&
		    kvx_decode(e->ctx, 1, &seq, &tok, logits) != KVX_OK)
			fail(EXIT_RUN, "%s: %s", e->name, kvx_errmsg());
	}
}

/* Append s and a separator to a row's answer. */
static void
join_answer(struct task_row *r, const char *s)
{
	size_t n = r->answer != NULL ? strlen(r->answer) : 0;

	if ((r->answer = realloc(r->answer, n + strlen(s) + 4)) == NULL)
		fail(EXIT_RUN, "out of memory");
	snprintf(r->answer + n, strlen(s) + 4, "%s%s", n ? " | " : "", s);
}

/* Answer every question of every item with every entry. */
void
eval_tasks(kvx_model *m, kvx_ctx *src, struct entry *ents, int n_ent,
    const struct task_item *items, int n_items, int inside,
    struct task_row *rows)
{
	const kvx_model_info *mi = kvx_model_get_info(m);
	int V = mi->n_vocab, it, q, i, nq, max_q = 1, max_p = 1;
	const struct task_item *t;
	const struct task_question *tq;
	struct task_row *r;
	float *logits, *qrows;
	int32_t *ids;
	char answer[4096];
	uint64_t kv;
	double *hits;

	for (it = 0; it < n_items; it++) {
		if (task_item_tokens(&items[it]) > max_p)
			max_p = task_item_tokens(&items[it]);
		for (q = 0; q < items[it].n_q; q++)
			if (items[it].q[q].n_ids > max_q)
				max_q = items[it].q[q].n_ids;
	}
	logits = malloc(sizeof *logits * (size_t)V);
	qrows = malloc(sizeof *qrows * (size_t)max_q * V);
	ids = malloc(sizeof *ids * (size_t)max_p);
	hits = calloc((size_t)n_ent, sizeof *hits);
	if (logits == NULL || qrows == NULL || ids == NULL || hits == NULL)
		fail(EXIT_RUN, "out of memory");
	for (it = 0; it < n_items; it++) {
		t = &items[it];
		progress("tasks: %s (%d/%d)", t->id, it + 1, n_items);
		memset(hits, 0, sizeof *hits * (size_t)n_ent);
		for (i = 0; i < n_ent; i++) {
			r = &rows[(size_t)it * n_ent + i];
			memset(r, 0, sizeof *r);
			r->plan = i;
			r->item = it;
		}
		if (!inside) {
			if (prefill_src(src, t->ids, t->n_ids, NULL) != KVX_OK)
				fail(EXIT_RUN, "%s: %s", t->id, kvx_errmsg());
		}
		for (q = nq = 0; q < t->n_q; nq += t->q[q++].n_ref) {
			tq = &t->q[q];
			if (inside) {
				memcpy(ids, t->ids, sizeof *ids * t->n_ids);
				memcpy(ids + t->n_ids, tq->ids,
				    sizeof *ids * tq->n_ids);
				if (prefill_src(src, ids, t->n_ids + tq->n_ids,
				    logits) != KVX_OK)
					fail(EXIT_RUN, "%s: %s", t->id,
					    kvx_errmsg());
			}
			for (i = 0; i < n_ent; i++) {
				r = &rows[(size_t)it * n_ent + i];
				/* a fresh copy of the prefill each time: no
				 * question sees an earlier one */
				restore(&ents[i], src, &kv);
				if (q == 0)
					r->kv_bytes = kv;
				if (inside)
					memcpy(qrows, logits, sizeof *qrows *
					    (size_t)V);
				else if (kvx_extend(ents[i].ctx, 0, tq->ids,
				    tq->n_ids, qrows) != KVX_OK)
					fail(EXIT_RUN, "%s: %s", ents[i].name,
					    kvx_errmsg());
				else
					memmove(qrows, qrows +
					    (size_t)(tq->n_ids - 1) * V,
					    sizeof *qrows * (size_t)V);
				decode_task(m, &ents[i], qrows, V,
				    t->answer_tokens, tq, answer,
				    sizeof answer);
				hits[i] += tq->n_ref * task_score(tq->refs,
				    tq->n_ref, answer);
				join_answer(r, answer);
				kvx_seq_clear(ents[i].ctx, 0);
			}
		}
		for (i = 0; i < n_ent; i++) {
			r = &rows[(size_t)it * n_ent + i];
			r->score = nq > 0 ? hits[i] / nq : 0.0;
			r->kv_bytes_full = rows[(size_t)it * n_ent].kv_bytes;
		}
	}
	kvx_seq_clear(src, 0);
	free(logits);
	free(qrows);
	free(ids);
	free(hits);
}

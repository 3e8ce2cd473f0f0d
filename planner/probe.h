/*
 * probe.h - retrieval probes for kvx-plan's profiling: calibration text
 * with statements inserted at depths spread over it, a question about one
 * of them at the end, and the answer to teacher-force.
 * SPDX-License-Identifier: GPL-3.0-or-later
 *
 * Prose barely exercises the heads that copy a distant exact string, so
 * their retention curves look flat there; a probe makes the answer depend
 * on such a copy.  Two kinds of statement alternate: a code for a named
 * thing ("The access code for the amber lantern is 4831207.") and a
 * record's value ("Record 58213 holds the value k7f3a91c."), both with
 * random content, so that only the inserted text can supply the answer.
 */
#ifndef KVX_PROBE_H
#define KVX_PROBE_H

#include <stdint.h>

#include "kvx.h"

/* The most statements one probe may hold. */
#define PROBE_MAX_STATEMENTS	64
/* The most tokens an answer takes (it is 8 characters). */
#define PROBE_MAX_ANSWER	16
/* Tokens of prose a repeated haystack repeats (about two sentences). */
#define PROBE_REPEAT_SPAN	32

typedef struct probe {
	int32_t	*ids;		/* prompt then answer, n_ids in all */
	int	 n_ids;
	int	 n_prompt;	/* prose, statements and the question */
	int	 n_question;	/* the question's tokens, ending the prompt */
	int	 n_answer;	/* the answer's tokens, after the prompt */
	int	 asked;		/* which statement the question is about */
	int	 depth[PROBE_MAX_STATEMENTS];	/* each one's first token */
	int	 n_statement;
} probe;

/*
 * Build a probe of exactly n tokens from the prose hay[0..n_hay) (at
 * least n tokens), with n_statement statements at evenly spread depths
 * (jittered within their slot) and the question about a random one.
 * With repeat > 0 the haystack is one span of repeat tokens of the prose
 * said again and again (the shape of logs, boilerplate and the filler of
 * synthetic long-context tests, where every position looks alike and only
 * the statements differ), else the prose as it runs.  The state s is
 * advanced.  KVX_ERR_UNSUPPORTED when the statements and the question
 * leave less than half of n for prose.
 */
kvx_status	 probe_make(const kvx_model *, const int32_t *hay,
		     int64_t n_hay, int n, int n_statement, int repeat,
		     uint64_t *s, probe *out);
void		 probe_free(probe *);

#endif

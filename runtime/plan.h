/*
 * plan.h - the in-memory form of a kvx plan (file format: kvx-plan(5)).
 * SPDX-License-Identifier: MIT
 */
#ifndef KVX_PLAN_H
#define KVX_PLAN_H

#include <stdint.h>

#include "kvx.h"

#define KVX_PLAN_FORMAT_VERSION 1

enum plan_budget_kind {
	PLAN_BUDGET_FRACTION = KVX_BUDGET_FRACTION,	/* share of the prompt
							   tokens */
	PLAN_BUDGET_TOKENS = KVX_BUDGET_TOKENS		/* fixed token count
							   per head */
};

enum plan_pool { PLAN_POOL_MAX = 0, PLAN_POOL_AVG = 1, PLAN_POOL_NONE = 2 };
enum plan_gqa { PLAN_GQA_MEAN = 0, PLAN_GQA_MAX = 1 };
/* How tokens are scored; snapkv is the default a plan without the key
 * gets (0), so that older plans read as they always did. */
enum plan_scorer {
	PLAN_SCORER_SNAPKV = 0,
	PLAN_SCORER_EA = 1,		/* expected-attention */
	PLAN_SCORER_KVZIP = 2
};
enum plan_cov { PLAN_COV_FULL = 0, PLAN_COV_DIAG = 1, PLAN_COV_NONE = 2 };

/* Expected Attention's defaults (kvpress's ExpectedAttentionPress, with
 * the statistics taken over the queries a context keeps). */
#define PLAN_EA_QUERIES		KVX_WINDOW_MAX
/* expected_attention.queries: all, every query of the prompt */
#define PLAN_EA_ALL		0
#define PLAN_EA_FUTURE		512
#define PLAN_EA_MAX_FUTURE	(1 << 20)

/* KVzip's defaults: the repeat pass reconstructs the context in chunks
 * of at most KVX_WINDOW_MAX tokens (the queries a layer hands to
 * selection), each after a request to repeat written in the model's chat
 * template. */
#define PLAN_KVZIP_CHUNK	KVX_WINDOW_MAX
enum plan_kvzip_prompt { PLAN_KVZIP_CHAT = 0, PLAN_KVZIP_PLAIN = 1 };

struct kvx_plan {
	int		 version;	/* KVX_PLAN_FORMAT_VERSION */
	char		 method[32];	/* uniform|pyramid|ada|layer|kvx|full */

	/* model identity */
	char		 arch[32];
	char		 name[64];	/* the model's general.name; optional */
	int		 n_layer, n_head, n_head_kv, head_dim;
	char		 fingerprint[65];
	int		*windows;	/* n_layer: keys a query of each layer
					   sees, its sliding window, or 0 for a
					   global layer; NULL: every layer is
					   global */

	/* budget */
	int		 budget_kind;	/* enum plan_budget_kind */
	double		 budget;	/* fraction, or tokens if TOKENS */
	int64_t		 ref_context;	/* reference context (tokens) */
	uint64_t	 ref_bytes;	/* planned KV bytes at ref_context */
	uint64_t	 ref_bytes_full;/* full-cache KV bytes at ref_context */

	/* selection */
	int		 window;	/* observation window w */
	int		 pool;		/* enum plan_pool */
	int		 pool_kernel;	/* k, odd */
	int		 gqa;		/* enum plan_gqa */
	int		 sinks;		/* always-kept leading tokens */
	int		 min_tokens;	/* floor per head, tokens */
	int		 scorer;	/* enum plan_scorer */

	/* expected-attention: read and written only under that scorer */
	int		 ea_queries;	/* last prompt queries of the
					   statistics, [2, KVX_WINDOW_MAX],
					   or PLAN_EA_ALL */
	int		 ea_future;	/* future positions RoPE is averaged
					   over */
	int		 ea_cov;	/* enum plan_cov */
	int		 ea_vnorm;	/* 1: times the value's norm */

	/* kvzip: read and written only under that scorer */
	int		 kz_chunk;	/* context tokens per repeat chunk,
					   [1, KVX_WINDOW_MAX] */
	int		 kz_prompt;	/* enum plan_kvzip_prompt */

	/* budgets */
	int		 mode;		/* kvx_plan_mode */
	double		 alpha;		/* hybrid: per-head floor, share of the
					   layer's even split, in [0, 1] */
	double		*budgets;	/* static: n_layer * n_head_kv,
					   hybrid: n_layer; fractions */

	/* provenance (optional; empty strings / 0 when absent) */
	char		 solver[32];
	double		 objective;
	double		 predicted_retention;
	double		 uniform_retention;
	char		 corpus[256];
	int		 samples;
	int		 sample_tokens;
	uint64_t	 seed;
	char		 tool_version[32];
	char		 created_by[64];
	char		 validation[96];	/* kvx-plan --validate's
					   outcome, or empty */
};

/* Allocate a plan with identity from info, defaults for selection
 * (window 32, max pool k 7, GQA mean, sinks 4, min_tokens 0), and
 * budgets set to fraction everywhere. */
kvx_status	 plan_new(const kvx_model_info *, int mode, double fraction,
		     kvx_plan **out);
kvx_status	 plan_copy(const kvx_plan *, kvx_plan **out);
/* Set the plan's scorer (enum plan_scorer), with that scorer's default
 * parameters. */
void		 plan_set_scorer(kvx_plan *, int scorer);
/* The scorer's name as kvx-plan(5) spells it, or NULL; and its value for
 * a name, or -1. */
const char	*plan_scorer_name(int scorer);
int		 plan_scorer_parse(const char *name);
/* Number of entries in budgets for the plan's mode. */
int		 plan_n_budgets(const kvx_plan *);
/* Layer's sliding window: 0 for a global layer or one out of range. */
int		 plan_layer_window(const kvx_plan *, int layer);
/* Copy n_layer windows from w into the plan (w NULL, or every window 0:
 * all layers global, windows freed). */
kvx_status	 plan_set_windows(kvx_plan *, const int *w);
/*
 * Tokens kept for (layer, head) after a prompt of n tokens:
 * clamp(round(f base), floor, cap) with floor = min(cap, max(min_tokens,
 * window + sinks)) and cap = sel_window_rows(the layer's sliding window,
 * n), n for a global layer; base is n for a fraction budget and ref_context for a
 * tokens budget (the counts then stay fixed as the prompt grows).  For a
 * hybrid plan head is ignored (pass -1) and the result is the layer's
 * tokens per KV head: the layer keeps n_head_kv times that in all.
 * Returns 0 when layer or head is out of range or n <= 0.
 */
int		 plan_tokens(const kvx_plan *, int layer, int head, int n);
/*
 * Hybrid plans: for layer l after a prompt of n tokens with an observation
 * window of w, the candidates per head (c - w - sinks, at least 0, where c
 * is the rows the layer may keep, sel_window_rows, and a sliding-window
 * layer past its window keeps no sinks), the
 * candidate tokens the layer's heads share in all (its budget less each
 * head's window and sinks) and the floor of each head's share (alpha of
 * an even split).  The heads then split total by sel_hybrid_split.
 */
void		 plan_hybrid_share(const kvx_plan *, int layer, int n, int w,
		     int n_head_kv, int *ncand, int *total, int *floor);
/* Fill ref_bytes / ref_bytes_full for ref_context (bytes_per_elem is the
 * runtime's KV element size). */
void		 plan_update_bytes(kvx_plan *, int bytes_per_elem);
/* KVX_ERR_MISMATCH naming the first identity field (arch, layers, heads,
 * kv_heads, head_dim, fingerprint) that differs from info. */
kvx_status	 plan_check_info(const kvx_plan *, const kvx_model_info *);
/* KVX_ERR_PLAN if any field is out of the ranges of kvx-plan(5). */
kvx_status	 plan_validate(const kvx_plan *);
/* The plan as YAML text (what kvx_plan_save writes); *out is malloc'd and
 * NUL-terminated, *len excludes the NUL. */
kvx_status	 plan_emit(const kvx_plan *, char **out, size_t *len);

#endif

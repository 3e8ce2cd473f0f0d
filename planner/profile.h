/*
 * profile.h - kvx-plan's sampled profiling: retention curves per (layer,
 * KV head) measured on the lightweight variant of the model, and their
 * text file form.
 * SPDX-License-Identifier: GPL-3.0-or-later
 *
 * A retention curve R(l, h, f) is the share of a head's pooled SnapKV
 * score mass that selection keeps when the head keeps round(f n) of n
 * prompt tokens (sinks and the observation window always kept), on the
 * grid f_j = j / (G - 1), averaged over the samples.
 *
 * Beside it, with retrieval probes (probe.h), Rr(l, h, f) is the same
 * objective measured on the probe samples at the queries that produce the
 * answer (teacher-forced), averaged over the probe samples.  The prose
 * curve R averages every sample, a probe sample measured at the window
 * queries just before its question.
 *
 * Where the question of a probe sits at run time decides what its
 * measurement compresses.  Inside (the default): the whole prompt,
 * question included, is compressed, its last window rows kept.  After
 * (kvzip only, as KVzip is used: a context compressed, then asked): only
 * the context before the question is scored and compressed, the budget is
 * a share of it, its last window rows are kept, and the question's rows
 * are kept whole, as the runtime appends them after compression.  Under
 * kvzip both give plans of the same task score (bench/RESULTS.md, 17).
 */
#ifndef KVX_PROFILE_H
#define KVX_PROFILE_H

#include <stdint.h>

#include "kvx.h"

#define PROFILE_MAX_WINDOW	KVX_WINDOW_MAX	/* the largest a plan may hold */
#define PROFILE_MAX_GRID	4096

/*
 * What a curve measures at budget share f, averaged over the samples:
 *   MASS    the share of the window's pooled attention mass kept;
 *   OUTPUT  1 - |W_o (o - o_kept)|^2 / |x|^2 summed over the KV head's
 *           query heads and the evaluated window queries: how little
 *           keeping the head's top share f perturbs the residual stream
 *           x, where o is the head's attention output with every token
 *           and o_kept its output over the kept tokens (the softmax
 *           renormalised over them, as the runtime computes it).  Unlike
 *           the mass, this sees that broad attention over similar values
 *           loses little, and weighs layers by how much their attention
 *           moves the residual stream.
 *   ABS     the same error over n_embd instead of |x|^2 (per residual
 *           dimension), so that layers count alike whatever the size of
 *           their residual stream.
 *   AUTO    OUTPUT where the architecture normalises each block's output
 *           before the residual add (gemma3), else ABS: there the gains
 *           of those norms grow the residual stream by orders of
 *           magnitude over depth, and an error per residual dimension
 *           ranks layers by the size of the stream, not by the damage.
 * Where a layer has that norm, its error passes through it (outnorm.h).
 */
enum prof_objective {
	PROF_OBJ_OUTPUT = 0, PROF_OBJ_MASS = 1, PROF_OBJ_ABS = 2,
	PROF_OBJ_AUTO = 3
};

/* Where a probe's question sits at run time (see above). */
enum prof_question {
	PROF_Q_INSIDE = 0,
	PROF_Q_AFTER = 1
};

/* A probe's haystack: the prose as it runs, a span of it repeated
 * (probe.h), or the two in turn (every other probe repeated). */
enum prof_hay {
	PROF_HAY_PROSE = 0,
	PROF_HAY_REPEAT = 1,
	PROF_HAY_MIXED = 2
};
/* Their names, in that order, NULL-terminated: the profile's words and
 * kvx-plan's --probe-hay values. */
extern const char *const prof_hay_names[];
/* The names of enum plan_pool and enum plan_gqa, in their order,
 * NULL-terminated: the profile's words and kvx-plan's --pool and --gqa
 * values. */
extern const char *const prof_pool_names[];
extern const char *const prof_gqa_names[];

typedef struct prof_opts {
	int		 samples;	/* S windows (8) */
	int		 sample_tokens;	/* T tokens each (2048) */
	int		 profile_tokens;	/* of each sample, the last N
					   are run (1024); 0: all T */
	uint64_t	 seed;		/* sample offsets (1) */
	int		 span;		/* local attention span, 0: full (512) */
	int		 grid;		/* G levels (256) */
	int		 window;	/* observation window w (32) */
	int		 pool;		/* enum plan_pool (max) */
	int		 pool_kernel;	/* odd (7) */
	int		 gqa;		/* enum plan_gqa (mean) */
	int		 sinks;		/* always-kept leading tokens (4) */
	int		 scorer;	/* enum plan_scorer (snapkv); expected-
					   attention with its plan defaults */
	int		 objective;	/* PROF_OBJ_AUTO (default), ABS,
					   OUTPUT, MASS */
	int		 probes;	/* statements per probe (4) */
	double		 probe_share;	/* share of the samples that carry
					   a retrieval probe (1); 0: none */
	int		 probe_question;	/* enum prof_question (inside);
					   after needs the kvzip scorer */
	int		 probe_hay;	/* enum prof_hay (prose) */
	int		 progress;	/* progress lines on stderr */
	int		 device;	/* where the forward runs:
					   KVX_DEVICE_AUTO (default), _CPU or
					   _GPU (profile_device) */
} prof_opts;

typedef struct profile {
	int		 n_layer, n_head_kv, grid;
	char		 fingerprint[65];
	int		 samples, sample_tokens, profile_tokens, span;
	uint64_t	 seed;
	int		 window, pool, pool_kernel, gqa, sinks;
	int		 scorer;	/* enum plan_scorer */
	int		 objective;
	int64_t		 corpus_tokens;
	char		 corpus[256];	/* base names, comma separated */
	int		 probes, probe_samples;	/* 0: no retrieval curves */
	int		 probe_after;	/* the probes' questions came after
					   the compressed context */
	int		 probe_hay;	/* enum prof_hay of the probes */
	double		*R;		/* [n_layer][n_head_kv][grid] prose */
	double		*Rr;		/* the same, retrieval; or NULL */
	double		 seconds;	/* profiling wall time */
	double		 hook_seconds;	/* of it, scoring and curves */
	int		 device;	/* where the forward ran:
					   KVX_DEVICE_CPU or _GPU */
} profile;

/* Fill opts with the defaults above. */
void		 prof_opts_init(prof_opts *);

/* The objective that PROF_OBJ_* objective measures on model m (AUTO
 * resolved by its architecture). */
int		 profile_objective(const kvx_model *m, int objective);

/*
 * Where the lightweight variant's forward runs for device: auto takes the
 * GPU when libkvx has CUDA, a device is usable and the GPU forward runs
 * the model, unless the environment sets KVX_DEVICE=cpu (as contexts do),
 * else the CPU.  KVX_ERR_DEVICE, saying why, when the GPU is asked for
 * and cannot be used.  The scores and curves are computed on the CPU
 * either way, from the K/V and queries the forward hands over.
 */
kvx_status	 profile_device(const kvx_model *, int device, int *out);

/*
 * Profile the model on the calibration files: tokenize them, draw the
 * sample offsets, run the lightweight variant on each sample and average
 * the curves.  KVX_ERR_IO when a file cannot be read, KVX_ERR_ARG when the
 * corpus is empty or shorter than one sample (the message says how many
 * tokens it has).
 */
kvx_status	 profile_run(kvx_model *, const char *const *files, int n_files,
		     const prof_opts *, profile **out);
void		 profile_free(profile **);
/*
 * The calibration files tokenized and laid end to end into *ids (*n_ids
 * tokens, the caller frees), their base names, comma separated, into
 * names (as many as fit).  KVX_ERR_IO when a file cannot be read.
 */
kvx_status	 profile_load_corpus(const kvx_model *, const char *const *files,
		     int n_files, int32_t **ids, int64_t *n_ids, char *names,
		     size_t names_size);

/* R(l, h, f) by linear interpolation on the grid, f clamped to [0, 1]. */
double		 profile_eval(const profile *, int layer, int head, double f);
/* The same on the retrieval curve Rr (which must exist). */
double		 profile_eval_retrieval(const profile *, int layer, int head,
		     double f);
/* The same on curves laid out as R. */
double		 profile_eval_curve(const profile *, const double *curves,
		     int layer, int head, double f);
/* The grid's level j as a fraction. */
double		 profile_level(const profile *, int j);

/* Write the profile as text; KVX_ERR_IO if path exists and !overwrite. */
kvx_status	 profile_save(const profile *, const char *path, int overwrite);
/* Read a profile; KVX_ERR_MISMATCH when it was made for another model,
 * KVX_ERR_FORMAT (with the line) when malformed. */
kvx_status	 profile_load(const char *path, const kvx_model_info *,
		     profile **out);

#endif

/*
 * kvx.h - libkvx, a runtime that enforces per-(layer, KV head) KV-cache
 * budget plans during LLM inference.
 *
 * SPDX-License-Identifier: MIT
 *
 * Conventions: every call returns a kvx_status (KVX_OK is 0).  On failure
 * a one-line message describing the problem is available from
 * kvx_errmsg(); it is kept per thread and overwritten by the next failing
 * call.  New objects come back through out-parameters; the _free and _close calls take
 * the address of the handle and clear it.
 */
#ifndef KVX_H
#define KVX_H

#include <stddef.h>
#include <stdint.h>

#include "kvx_version.h"

#ifdef __cplusplus
extern "C" {
#endif

/* libkvx is built with hidden visibility: what this header declares is
 * exactly what the shared library exports. */
#if defined(__GNUC__)
#pragma GCC visibility push(default)
#endif

typedef enum kvx_status {
	KVX_OK = 0,
	KVX_ERR_ARG,		/* bad argument from the caller */
	KVX_ERR_IO,		/* file could not be opened, read or written */
	KVX_ERR_FORMAT,		/* malformed GGUF or YAML */
	KVX_ERR_UNSUPPORTED,	/* valid but not supported (arch, type) */
	KVX_ERR_NOMEM,		/* allocation failed */
	KVX_ERR_PLAN,		/* plan invalid or impossible */
	KVX_ERR_MISMATCH,	/* plan made for another model */
	KVX_ERR_CAPACITY,	/* sequence or context full */
	KVX_ERR_DEVICE		/* GPU error */
} kvx_status;

typedef struct kvx_model kvx_model;
typedef struct kvx_plan kvx_plan;
typedef struct kvx_ctx kvx_ctx;

/* Version of the library as linked (the macros in kvx_version.h give the
 * headers' version): the string, e.g. "0.1.0", and KVX_VERSION_NUMBER's
 * form, e.g. 100. */
const char	*kvx_version(void);
int		 kvx_version_number(void);
/* Static description of a status code. */
const char	*kvx_strerror(kvx_status);
/* Message of the last failing call in this thread ("" if none). */
const char	*kvx_errmsg(void);

/* --- model ---------------------------------------------------------- */

typedef struct kvx_model_info {
	const char	*arch;		/* "llama", "qwen2" or "gemma3" */
	const char	*name;		/* general.name, or "" */
	int		 n_layer;
	int		 n_head;	/* query heads */
	int		 n_head_kv;	/* KV heads */
	int		 head_dim;
	int		 n_embd;
	int		 n_ff;
	int		 n_vocab;
	int		 n_ctx_train;
	float		 rope_theta;
	float		 rms_eps;
	char		 fingerprint[65];	/* sha256 hex of the tensor table
						   and key metadata */
} kvx_model_info;

/*
 * Options of kvx_model_open.  Fill with kvx_model_params_init first, then
 * set what differs: fields may be added at the end in later versions, and
 * the init call gives them their defaults.
 */
typedef struct kvx_model_params {
	int	n_threads;	/* CPU worker threads of each context made
				   from the model that does not set its own
				   (<= 0, the default: the online CPUs) */
	int	weights;	/* where CPU contexts read the weights:
				   KVX_WEIGHTS_AUTO (the default) takes
				   the environment's KVX_WEIGHTS (mmap or
				   huge), else huge pages */
} kvx_model_params;

/*
 * Weight placement.  MMAP: the CPU reads the mapped file.  HUGEPAGES: the
 * first CPU context made from the model (or any CPU forward) reads the
 * tensor data once into private anonymous memory advised for transparent
 * huge pages, at the same addresses, which spares the decode's large
 * products the TLB misses of 4 KiB pages; GPU contexts, which copy the
 * weights to the device, do not trigger it.  Where huge pages are turned
 * off or the memory cannot be had, the weights silently stay mapped.
 */
enum { KVX_WEIGHTS_AUTO = 0, KVX_WEIGHTS_MMAP = 1, KVX_WEIGHTS_HUGEPAGES = 2 };

void		 kvx_model_params_init(kvx_model_params *);
/*
 * Open a GGUF model (mmap).  params NULL means the defaults.  The model is
 * immutable once open: any number of contexts made from it may run at the
 * same time on different threads.  It must outlive them.
 */
kvx_status	 kvx_model_open(const char *path,
		     const kvx_model_params *params, kvx_model **out);
void		 kvx_model_close(kvx_model **);
const kvx_model_info *kvx_model_get_info(const kvx_model *);
/* Where the weights are now: KVX_WEIGHTS_HUGEPAGES once they were moved
 * to anonymous memory, KVX_WEIGHTS_MMAP otherwise (-1 for NULL). */
int		 kvx_model_get_weights(const kvx_model *);
/* Keys a query of layer sees, its own included, on a sliding-window layer
 * (gemma3's local layers); 0 for a global layer or one out of range. */
int		 kvx_model_get_window(const kvx_model *, int layer);

/* --- tokenizer ------------------------------------------------------ */

/*
 * Encode UTF-8 text.  With parse_special, special-token texts such as
 * "<|im_start|>" become their ids.  Writes at most cap ids; *n receives the
 * full count (KVX_ERR_CAPACITY when it exceeds cap).
 */
kvx_status	 kvx_tokenize(const kvx_model *, const char *text, size_t len,
		     int parse_special, int32_t *ids, int cap, int *n);
/* Bytes of one token, appended to buf (NUL-terminated); *len gets the
 * piece length.  Special tokens render as their text. */
kvx_status	 kvx_token_piece(const kvx_model *, int32_t id, char *buf,
		     size_t size, size_t *len);
int32_t		 kvx_token_bos(const kvx_model *);
/* 1 when the model's texts start with kvx_token_bos (the GGUF's
 * tokenizer.ggml.add_bos_token, as llama.cpp reads it: Gemma 3); the
 * caller prepends it, kvx_tokenize does not. */
int		 kvx_token_add_bos(const kvx_model *);
int32_t		 kvx_token_eos(const kvx_model *);
/* 1 when id ends a turn or the text (EOS, <|im_end|>, ...). */
int		 kvx_token_is_eog(const kvx_model *, int32_t id);
/* Format one user message with the model's chat template (ChatML, or
 * Gemma's turns), ready for generation.  *out is malloc'd; free it with
 * free(). */
kvx_status	 kvx_chat_format(const kvx_model *, const char *system,
		     const char *user, char **out);

/* --- plans (format: kvx-plan(5)) ------------------------------------ */

typedef enum kvx_plan_mode {
	KVX_PLAN_STATIC = 0,	/* budgets per (layer, KV head) */
	KVX_PLAN_HYBRID = 1	/* budgets per layer; heads share at run time */
} kvx_plan_mode;

/*
 * Largest observation window (selection.window) a plan may have: the
 * runtime keeps at most this many window queries per layer, and plan
 * loading and kvx-plan refuse a larger window.
 */
#define KVX_WINDOW_MAX 128

kvx_status	 kvx_plan_load(const char *path, kvx_plan **out);
/* Parse a plan held in memory; name is used in messages. */
kvx_status	 kvx_plan_load_mem(const char *buf, size_t len,
		     const char *name, kvx_plan **out);
/* Write the plan.  Fails with KVX_ERR_IO if path exists and !overwrite. */
kvx_status	 kvx_plan_save(const kvx_plan *, const char *path,
		     int overwrite);
/* KVX_ERR_MISMATCH, naming the differing field, if the plan was not made
 * for this model. */
kvx_status	 kvx_plan_check(const kvx_plan *, const kvx_model *);
void		 kvx_plan_free(kvx_plan **);
kvx_plan_mode	 kvx_plan_get_mode(const kvx_plan *);
/* Planned share of the prompt kept for (layer, kv head), in [0, 1].  For a
 * hybrid plan, the layer's share. */
double		 kvx_plan_get_budget(const kvx_plan *, int layer, int head);
/* The sliding window the plan was made for on layer (keys a query sees),
 * 0 for a global layer or one out of range. */
int		 kvx_plan_get_window(const kvx_plan *, int layer);

typedef enum kvx_budget_kind {
	KVX_BUDGET_FRACTION = 0,	/* a share of the prompt's tokens */
	KVX_BUDGET_TOKENS = 1		/* tokens per head at ref_context */
} kvx_budget_kind;

/*
 * What a plan holds besides its budgets, as kvx-plan(5) names it.  The
 * strings point into the plan and live as long as it does.  Fields to
 * come take the place of reserved, so the struct keeps its size.
 */
typedef struct kvx_plan_info {
	const char	*method;	/* uniform, pyramid, ada, layer, kvx or
					   full */
	kvx_plan_mode	 mode;
	kvx_budget_kind	 budget_kind;
	double		 budget;	/* share in (0, 1], or tokens */
	int		 window;	/* observation window, at most
					   KVX_WINDOW_MAX */
	int		 sinks;		/* leading tokens always kept */
	const char	*pool;		/* max, avg or none */
	int		 pool_kernel;	/* odd width of the pooling */
	const char	*gqa;		/* mean or max over a query group */
	double		 alpha;		/* hybrid: each head's floor, a share
					   of an even split; static: 0 */
	int		 min_tokens;	/* floor per head, tokens */
	int64_t		 ref_context;	/* tokens the byte counts are for */
	uint64_t	 ref_bytes;	/* planned K+V bytes at ref_context,
					   0 if the plan omits them */
	uint64_t	 ref_bytes_full;/* a full cache's bytes, likewise */
	/* the model the plan was made for */
	const char	*arch;
	const char	*name;		/* its general.name, or "" */
	int		 n_layer;
	int		 n_head;
	int		 n_head_kv;
	int		 head_dim;
	const char	*fingerprint;	/* 64 hex digits, as kvx_model_info */
	const char	*scorer;	/* snapkv, expected-attention or
					   kvzip */
	/* expected-attention's parameters; 0 and NULL under another */
	int		 ea_queries;	/* last prompt queries of the
					   statistics; 0: every query of
					   the prompt (queries: all) */
	int		 ea_future;	/* positions RoPE is averaged over */
	const char	*ea_covariance;	/* full, diagonal or none */
	int		 ea_value_norm;	/* 1: scores times the value norm */
	/* kvzip's parameters; 0 and NULL under another scorer */
	int		 kvzip_chunk;	/* context tokens per repeat chunk */
	const char	*kvzip_prompt;	/* chat or plain */
	double		 reserved[11];	/* zero */
} kvx_plan_info;

/* Fill info from the plan: KVX_ERR_ARG when either is NULL. */
kvx_status	 kvx_plan_get_info(const kvx_plan *, kvx_plan_info *info);

/* --- contexts and inference ----------------------------------------- */

typedef struct kvx_ctx_params {
	int	n_seq;		/* sequences (default 1) */
	int	n_ctx;		/* max tokens per sequence (default: model's) */
	int	decode_headroom;/* slots reserved per segment after
				   compression for decode (default 256) */
	int	device;		/* KVX_DEVICE_AUTO (default): the GPU when
				   libkvx has CUDA, one is usable and the GPU
				   forward runs the model's architecture,
				   unless the environment sets
				   KVX_DEVICE=cpu */
	int	n_threads;	/* CPU worker threads of this context (0, the
				   default: the model's n_threads) */
	int	query_stats;	/* 1: a full-cache context keeps each
				   prefill's query statistics (a mean and a
				   covariance per layer and query head; on
				   the GPU, their sums), so that
				   kvx_compress_from can apply a plan whose
				   Expected Attention statistics span the
				   whole prompt (default 0: such a
				   compression fails with
				   KVX_ERR_UNSUPPORTED, but on the GPU for
				   a prompt of at most KVX_WINDOW_MAX
				   tokens, whose queries it keeps anyway) */
} kvx_ctx_params;

enum { KVX_DEVICE_AUTO = 0, KVX_DEVICE_CPU = 1, KVX_DEVICE_GPU = 2 };

void		 kvx_ctx_params_init(kvx_ctx_params *);
/* plan NULL = full cache.  The plan is copied; it is checked against the
 * model first. */
kvx_status	 kvx_ctx_new(kvx_model *, const kvx_plan *,
		     const kvx_ctx_params *, kvx_ctx **out);
void		 kvx_ctx_free(kvx_ctx **);

/*
 * Run n prompt tokens of sequence seq (which must be empty) with full
 * attention, then compress its cache to the plan.  logits (n_vocab floats,
 * may be NULL) receives the last token's logits.
 */
kvx_status	 kvx_prefill(kvx_ctx *, int seq, const int32_t *ids, int n,
		     float *logits);
/*
 * Append n tokens to seq without compressing, attending over what the
 * cache holds.  logits, if not NULL, receives n * n_vocab floats.
 */
kvx_status	 kvx_extend(kvx_ctx *, int seq, const int32_t *ids, int n,
		     float *logits);
/* One token for each of n sequences; logits gets n * n_vocab floats. */
kvx_status	 kvx_decode(kvx_ctx *, int n, const int *seqs,
		     const int32_t *ids, float *logits);
/*
 * Fill sequence dseq of dst (empty) from sequence sseq of src, which must
 * hold an uncompressed prefill (a full-cache context's, neither extended
 * nor decoded since), compressing to dst's plan as a prefill by dst
 * would.  Lets several plans share one prefill.  Both contexts run on the
 * same device.  A full cache keeps, per sequence and layer, the queries
 * of the last KVX_WINDOW_MAX prompt tokens for this (the CPU in host
 * memory, the GPU in device memory: KVX_WINDOW_MAX x n_head x head_dim
 * floats a layer), and with query_stats the statistics of all of them.
 */
kvx_status	 kvx_compress_from(kvx_ctx *dst, int dseq, const kvx_ctx *src,
		     int sseq);
/* Forget a sequence's tokens. */
kvx_status	 kvx_seq_clear(kvx_ctx *, int seq);

typedef struct kvx_memory {
	uint64_t	kv_bytes;	/* bytes allocated for K and V */
	uint64_t	kv_bytes_used;	/* bytes holding kept tokens */
	uint64_t	kv_bytes_full;	/* a full cache for the same tokens */
	int64_t		n_tokens;	/* tokens seen, all sequences */
	int64_t		n_kept;		/* token slots kept, summed over
					   layers and KV heads */
} kvx_memory;

kvx_status	 kvx_ctx_memory(const kvx_ctx *, kvx_memory *);

/*
 * Time a context has spent, all sequences together: in kvx_prefill and
 * kvx_compress_from, and the part of it that scored and selected tokens
 * for the plan (a kvzip plan's repeat pass included), so that what
 * compression costs shows as a share of the prefill.
 */
typedef struct kvx_ctx_stats {
	double		prefill_s;	/* seconds in prefills */
	double		select_s;	/* of them, scoring and selection;
					   -1 where the device does not
					   measure it (the GPU, but under
					   a kvzip plan) */
	double		reserved[6];	/* zero */
} kvx_ctx_stats;

kvx_status	 kvx_ctx_get_stats(const kvx_ctx *, kvx_ctx_stats *);
/* The device the context runs on: KVX_DEVICE_CPU or KVX_DEVICE_GPU (never
 * KVX_DEVICE_AUTO; -1 for NULL). */
int		 kvx_ctx_get_device(const kvx_ctx *);
int		 kvx_seq_len(const kvx_ctx *, int seq);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif
#ifdef __cplusplus
}
#endif
#endif /* KVX_H */

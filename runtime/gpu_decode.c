/*
 * gpu_decode.c - batched decode steps on the device.
 * SPDX-License-Identifier: MIT
 *
 * Each step builds, per layer, the segments' table and the split-K work
 * list on the host and uploads them in one copy (or, laid out during the
 * step before, sent ahead on a second stream); the step's launches run
 * as one CUDA graph, captured again only when the batch, the item count
 * or a buffer changes.
 */
#include "config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_impl.h"
#include "util.h"

/*
 * Where the tables of a decode step lie in h_step and d_step, as byte
 * offsets: the token ids, their positions, then per layer the tables
 * step_fill writes.
 */
struct step_lay {
	size_t			 ids, pos;
	struct step_ltab {
		size_t	off;	/* long long a segment: its row 0 */
		size_t	app;	/* long long a segment: the new row */
		size_t	first;	/* int a segment, and one more */
		size_t	items;	/* cap struct wl_item */
	}			*l;	/* one a layer */
};

/* Round up to 16 bytes. */
static size_t
a16(size_t n)
{
	return (n + 15) & ~(size_t)15;
}

/*
 * The device work of one decode step on the context's stream, over the
 * tables at g->d_step laid out by lo (g->h_step holding the same):
 * embedding, the layers (the split-K partial attention, on the variant
 * var, over a fixed grid of cap items a layer, the surplus skipped; the
 * combine, in the form the layer's counts call for, writes the
 * attention's output as fp16 for the output projection), and the LM
 * head when head is set.  Issued directly or captured.
 */
static kvx_status
step_issue(gpu_ctx *g, int n, int cap, const struct step_lay *lo,
    int head, int var)
{
	int Hkv = g->Hkv, D = g->D, G = g->H / Hkv, nseg = n * Hkv, l, e;
	char *d = g->d_step;
	kvx_status rc;

	CK(kvx_cuda_embed(g->embd, g->E, g->ids, n, g->m->desc->embd_scale ?
	    sqrtf((float)g->E) : 1.0f, g->x, g->stream));
	for (l = 0; l < g->L; l++) {
		const struct step_ltab *t = &lo->l[l];

		if ((rc = gpu__qkv_rope(g, l, n, (const long long *)(d +
		    t->app), g->kbase, g->vbase)) != KVX_OK)
			return rc;
		if ((e = kvx_cuda_attn_partial(g->q, g->kbase, g->vbase,
		    KVX_CUDA_F16, (const long long *)(d + t->off), G, D, D,
		    1.0f / sqrtf((float)D),
		    (const struct wl_item *)(d + t->items), NULL, cap,
		    (const int *)(d + t->first), g->pm, g->pl, g->pacc, NULL,
		    var, g->stream)) != 0 ||
		    (e = kvx_cuda_attn_combine((const int *)(d + t->first),
		    nseg, G, D, g->pm, g->pl, g->pacc, g->xh, KVX_CUDA_F16, 0,
		    wl_most((const int *)(g->h_step + t->first), nseg),
		    g->stream)) != 0)
			return gpu__cuda_fail(e, __FILE__, __LINE__,
			    "decode attention");
		if ((rc = gpu__out_ffn(g, l, n, 1)) != KVX_OK)
			return rc;
	}
	return head ? gpu__lm_head(g, 0, n) : KVX_OK;
}

/*
 * Captures the step into g->gx (replacing the old graph) for batch n and
 * cap items a layer; the buffer generation it was made at is
 * remembered, so that any regrown buffer it names forces a new capture
 * (g->bgen).
 */
static kvx_status
step_capture(gpu_ctx *g, int n, int cap, const struct step_lay *lo,
    int head, int var)
{
	cudaGraph_t gr = NULL;
	kvx_status rc;
	int e;

	if (g->gx != NULL) {
		cudaGraphExecDestroy(g->gx);
		g->gx = NULL;
	}
	/* thread-local: other threads' contexts may allocate meanwhile */
	if ((e = cudaStreamBeginCapture(g->stream,
	    cudaStreamCaptureModeThreadLocal)) != cudaSuccess)
		return gpu__cuda_fail(e, __FILE__, __LINE__, "graph capture");
	rc = step_issue(g, n, cap, lo, head, var);
	e = cudaStreamEndCapture(g->stream, &gr);
	if (rc == KVX_OK && e != cudaSuccess)
		rc = gpu__cuda_fail(e, __FILE__, __LINE__, "graph capture");
	if (rc == KVX_OK && (e = cudaGraphInstantiate(&g->gx, gr, 0)) !=
	    cudaSuccess) {
		g->gx = NULL;
		rc = gpu__cuda_fail(e, __FILE__, __LINE__,
		    "graph instantiation");
	}
	if (gr != NULL)
		cudaGraphDestroy(gr);
	if (rc != KVX_OK) {
		cudaGetLastError();
		return rc;
	}
	g->gx_n = n;
	g->gx_cap = cap;
	g->gx_head = head;
	g->gx_var = var;
	g->gx_bgen = g->bgen;
	return KVX_OK;
}

/* 1 when the captured graph fits a step of batch n, cap items a layer
 * and the partial kernel's variant var. */
static int
graph_fits(const gpu_ctx *g, int n, int cap, int head, int var)
{
	return g->gx != NULL && g->gx_n == n && g->gx_cap >= cap &&
	    g->gx_var == var &&
	    g->gx_head == head && g->gx_bgen == g->bgen;
}

/* Rows of layer l over seqs whose segments will hold len + 1 + ahead
 * rows, and the longest segment's in *most. */
static long long
layer_rows(gpu_ctx *g, int n, const int *seqs, int l, int ahead, int *most)
{
	long long rows = 0;
	int i, h, r;

	*most = 0;
	for (i = 0; i < n; i++)
		for (h = 0; h < g->Hkv; h++) {
			r = seg_at(g, seqs[i], l, h)->len + 1 + ahead;
			rows += r;
			*most = r > *most ? r : *most;
		}
	return rows;
}

/*
 * Item capacity a layer of a step over seqs whose segments will hold
 * len + 1 + ahead rows, each layer's chunk, and the partial kernel's
 * variant: one item a segment (chunk = the longest) in the layers where
 * wl_one says so on the DEEP variant's resident blocks, on the DEEP
 * variant when every layer takes it; else kvx_cuda_attn_variant's
 * variant, and in the other layers items for whole waves of its
 * resident blocks.  The capacity is the graph's when the graph fits,
 * else the need plus room to grow, so that a graph outlives many steps.
 * Per layer at most nseg + rows / chunk + 1 items.
 */
static int
step_items(gpu_ctx *g, int n, const int *seqs, int ahead, int head,
    int *chunk, int *var)
{
	int Hkv = g->Hkv, G = g->H / Hkv, nseg = n * Hkv, l, most, cap = 0;
	int deep = kvx_cuda_attn_blocks(G, g->D, KVX_CUDA_F16,
	    KVX_CUDA_ATTN_DEEP), res, all = 1;
	long long rows;

	for (l = 0; l < g->L && all; l++) {
		rows = layer_rows(g, n, seqs, l, ahead, &most);
		all = wl_one(rows, nseg, most, deep);
	}
	*var = all ? KVX_CUDA_ATTN_DEEP : kvx_cuda_attn_variant(G, g->D,
	    KVX_CUDA_F16, nseg);
	res = *var == KVX_CUDA_ATTN_DEEP ? deep : kvx_cuda_attn_blocks(G,
	    g->D, KVX_CUDA_F16, *var);
	for (l = 0; l < g->L; l++) {
		rows = layer_rows(g, n, seqs, l, ahead, &most);
		chunk[l] = *var == KVX_CUDA_ATTN_DEEP &&
		    wl_one(rows, nseg, most, deep) ? most :
		    wl_chunk(rows, res);
		if ((int)(rows / chunk[l]) + nseg + 1 > cap)
			cap = (int)(rows / chunk[l]) + nseg + 1;
	}
	if (graph_fits(g, n, cap, head, *var))
		return g->gx_cap;
	return cap + cap / 4 + 16;
}

/* Lays out the tables of a step of batch n and cap items a layer in
 * lo; returns their bytes. */
static size_t
step_layout(const gpu_ctx *g, int n, int cap, struct step_lay *lo)
{
	size_t nseg = (size_t)n * g->Hkv, at;
	int l;

	lo->ids = 0;
	lo->pos = a16((size_t)n * sizeof(int32_t));
	at = lo->pos + a16((size_t)n * sizeof(int));
	for (l = 0; l < g->L; l++) {
		lo->l[l].off = at;
		lo->l[l].app = lo->l[l].off + a16(nseg * sizeof(long long));
		lo->l[l].first = lo->l[l].app + a16(nseg * sizeof(long long));
		lo->l[l].items = lo->l[l].first + a16((nseg + 1) *
		    sizeof(int));
		at = lo->l[l].items + a16((size_t)cap * sizeof(struct wl_item));
	}
	return at;
}

/*
 * The tables of that step in buf (all but the token ids): positions, and
 * per layer the segment offsets, the append offsets, each segment's
 * first item and the split-K items, padded to cap with items of segment
 * -1 (skipped).  A sliding-window layer's
 * segment starts past the rows that left the query's window.  len: nseg
 * ints of scratch.
 */
static kvx_status
step_fill(gpu_ctx *g, int n, const int *seqs, int ahead, int cap,
    const int *chunk, const struct step_lay *lo, char *buf, int *len)
{
	int Hkv = g->Hkv, D = g->D, nseg = n * Hkv, i, l, h, nit;

	for (i = 0; i < n; i++)
		((int *)(buf + lo->pos))[i] = g->npos[seqs[i]] + ahead;
	for (l = 0; l < g->L; l++) {
		long long *off = (long long *)(buf + lo->l[l].off);
		long long *app = (long long *)(buf + lo->l[l].app);
		int *first = (int *)(buf + lo->l[l].first);
		struct wl_item *items = (struct wl_item *)(buf +
		    lo->l[l].items);

		for (i = 0; i < n; i++)
			for (h = 0; h < Hkv; h++) {
				gseg *sg = seg_at(g, seqs[i], l, h);
				int skip = gpu__win_skip(g, seqs[i], l, h,
				    g->npos[seqs[i]] + ahead);

				if (skip > sg->len + ahead)
					skip = sg->len + ahead;
				off[i * Hkv + h] = sg->off + (long long)skip * D;
				app[i * Hkv + h] = sg->off +
				    (long long)(sg->len + ahead) * D;
				len[i * Hkv + h] = sg->len + 1 + ahead - skip;
			}
		nit = wl_chunked(len, nseg, chunk[l], items, cap, first);
		if (nit < 0)
			return kvx__fail(KVX_ERR_DEVICE, "work list overflow");
		/* padding, skipped by the partial kernel */
		memset(items + nit, 0xff, (size_t)(cap - nit) * sizeof *items);
	}
	return KVX_OK;
}

/* Pinned host buffer *p of at least need bytes (*have its size). */
static kvx_status
host_room(char **p, size_t *have, size_t need)
{
	if (need <= *have)
		return KVX_OK;
	cudaFreeHost(*p);
	*p = NULL;
	*have = 0;
	if (cudaMallocHost((void **)p, need) != cudaSuccess) {
		cudaGetLastError();
		*p = NULL;
		return kvx__fail(KVX_ERR_NOMEM, "cannot allocate the decode "
		    "tables");
	}
	*have = need;
	return KVX_OK;
}

/*
 * Room for one more row in every segment of (s, l).  A full segment of a
 * sliding-window layer first drops the rows that no query from the
 * sequence's next position on sees, as the CPU's slide_windows does, so
 * that it holds its window plus the tokens decoded since it last slid;
 * a full segment that still lacks room grows.  Either moves the layer
 * to a new block, which receives the rows kept.
 */
static kvx_status
make_room(gpu_ctx *g, int s, int l)
{
	int caps[SEL_MAX_KV_HEADS], drop[SEL_MAX_KV_HEADS], h, move = 0;
	gseg was[SEL_MAX_KV_HEADS];
	kvx_status rc;

	for (h = 0; h < g->Hkv; h++) {
		gseg *sg = seg_at(g, s, l, h);

		was[h] = *sg;
		caps[h] = sg->cap;
		drop[h] = 0;
		if (sg->len + 1 <= sg->cap)
			continue;
		move = 1;
		drop[h] = gpu__win_skip(g, s, l, h, g->npos[s]);
		if (drop[h] > sg->len)
			drop[h] = sg->len;
		if (sg->len - drop[h] + 1 > sg->cap) {
			int add = sg->cap / 2 > 64 ? sg->cap / 2 : 64;

			/* a segment never needs more than n_ctx rows: stay
			   inside a chunk */
			caps[h] = sg->cap + add;
			if (caps[h] > g->p.n_ctx + 64)
				caps[h] = g->p.n_ctx + 64;
		}
		/* the move copies the rows from off on, len of them */
		sg->off += (long long)drop[h] * g->D;
		sg->len -= drop[h];
		sg->cap -= drop[h];
	}
	if (!move)
		return KVX_OK;
	if ((rc = gpu__blk_move(g, s, l, caps)) != KVX_OK) {
		for (h = 0; h < g->Hkv; h++)
			*seg_at(g, s, l, h) = was[h];
		return rc;
	}
	for (h = 0; h < g->Hkv; h++)
		gpu__win_drop(g, s, l, h, drop[h]);
	return KVX_OK;
}

/* The look-ahead upload's stream and events, made on first use; 0 when
 * they cannot be (the tables then go up with the step, as without). */
static int
pre_stream(gpu_ctx *g)
{
	if (g->cstream != NULL)
		return 1;
	if (g->pre_nodev)
		return 0;
	if (cudaEventCreateWithFlags(&g->ev_pre, cudaEventDisableTiming) !=
	    cudaSuccess ||
	    cudaEventCreateWithFlags(&g->ev_used, cudaEventDisableTiming) !=
	    cudaSuccess ||
	    gpu__stream_take(&g->cstream, &g->cstream_seq) != cudaSuccess) {
		cudaGetLastError();
		if (g->ev_pre != NULL)
			cudaEventDestroy(g->ev_pre);
		if (g->ev_used != NULL)
			cudaEventDestroy(g->ev_used);
		g->ev_pre = g->ev_used = NULL;
		g->cstream = NULL;
		g->pre_nodev = 1;
		return 0;
	}
	return 1;
}

/* Waits for a look-ahead upload that may still read h_pre. */
static kvx_status
pre_idle(gpu_ctx *g)
{
	if (!g->pre_busy)
		return KVX_OK;
	g->pre_busy = 0;
	if (cudaEventSynchronize(g->ev_pre) != cudaSuccess)
		return kvx__fail(KVX_ERR_DEVICE, "%s:%d: decode table upload "
		    "failed: %s", __FILE__, __LINE__,
		    cudaGetErrorString(cudaGetLastError()));
	return KVX_OK;
}

/*
 * Sends the look-ahead tables (h_pre, need bytes) to d_pre on the upload
 * stream while the step runs, after the step's own copy out of d_pre.
 * Sets g->pre_dev when under way; on any failure the next step uploads
 * them with itself.
 */
static void
pre_send(gpu_ctx *g, size_t need)
{
	g->pre_dev = 0;
	if (!pre_stream(g))
		return;
	if (need > g->dpre_room) {
		cudaFree(g->d_pre);
		g->d_pre = NULL;
		g->dpre_room = 0;
		if (cudaMalloc((void **)&g->d_pre, need) != cudaSuccess) {
			cudaGetLastError();
			return;
		}
		g->dpre_room = need;
	}
	if (cudaStreamWaitEvent(g->cstream, g->ev_used, 0) != cudaSuccess ||
	    cudaMemcpyAsync(g->d_pre, g->h_pre, need,
	    cudaMemcpyHostToDevice, g->cstream) != cudaSuccess ||
	    cudaEventRecord(g->ev_pre, g->cstream) != cudaSuccess) {
		cudaGetLastError();
		/* a copy may have been queued: wait for it before h_pre is
		   written again */
		cudaStreamSynchronize(g->cstream);
		cudaGetLastError();
		return;
	}
	g->pre_busy = 1;
	g->pre_dev = 1;
}

/*
 * One token for each of n distinct sequences.  Makes room in full
 * segments first; then the step's tables, laid out on the host
 * (step_fill), go up in one upload and the graph runs (captured again
 * only when the batch, the item count or a buffer changes).  While it
 * runs, the host lays
 * out the tables of the next step of the same batch (every segment one
 * row longer), which that step uses unless the batch or any segment
 * changed in between (g->gen), so that the host's part of a step
 * overlaps the device's; those tables go to the device on a second
 * stream at once, so that the next step copies them within the device
 * and sends only its token ids.
 */
static kvx_status
decode_step(gpu_ctx *g, int n, const int *seqs, const int32_t *ids,
    float *logits)
{
	int Hkv = g->Hkv, D = g->D, G = g->H / Hkv, nseg = n * Hkv;
	int i, l, h, cap, *len = NULL;
	int *chunk = NULL, head = logits != NULL || g->head, pre, dev = 0;
	int var, pvar;
	size_t need;
	struct step_lay lay = { 0, 0, NULL };
	double t0 = 0.0, t1;
	kvx_status rc;

	if ((rc = gpu__ensure_fw(g, n)) != KVX_OK ||
	    (head && (rc = gpu__ensure_logits(g, n)) != KVX_OK) ||
	    (g->timing && (rc = gpu__events(g)) != KVX_OK))
		return rc;
	/* the tables laid out during the last step, if still right: then
	   every segment had room for two more rows then, one now */
	pre = g->pre_ok && g->pre_n == n && g->pre_gen == g->gen &&
	    g->pre_head == head && memcmp(g->pre_seqs, seqs, (size_t)n *
	    sizeof(int)) == 0 && graph_fits(g, n, g->pre_cap, head,
	    g->gx_var) && g->gx_cap == g->pre_cap;
	g->pre_ok = 0;
	dev = pre && g->pre_dev;
	g->pre_dev = 0;
	/* h_step and h_pre trade places below: neither may still be
	   read */
	if ((rc = pre_idle(g)) != KVX_OK)
		return rc;
	for (i = 0; i < n && !pre; i++)
		for (l = 0; l < g->L; l++)
			if ((rc = make_room(g, seqs[i], l)) != KVX_OK)
				return rc;
	if (g->timing) {
		CK(cudaStreamSynchronize(g->stream));
		t0 = kvx__now();
	}
	len = kvx__malloc_array((size_t)nseg, sizeof(int));
	chunk = kvx__malloc_array((size_t)g->L, sizeof(int));
	lay.l = kvx__malloc_array((size_t)g->L, sizeof *lay.l);
	if (len == NULL || chunk == NULL || lay.l == NULL) {
		rc = kvx__fail(KVX_ERR_NOMEM, "out of memory");
		goto out;
	}
	if (pre) {
		char *t = g->h_step;
		size_t tc = g->step_cap;

		g->h_step = g->h_pre;
		g->step_cap = g->pre_room;
		g->h_pre = t;
		g->pre_room = tc;
		/* made for this graph, whose variant it takes */
		cap = g->pre_cap;
		var = g->gx_var;
		need = step_layout(g, n, cap, &lay);
	} else {
		cap = step_items(g, n, seqs, 0, head, chunk, &var);
		need = step_layout(g, n, cap, &lay);
		if ((rc = host_room(&g->h_step, &g->step_cap, need)) != KVX_OK)
			goto out;
		if ((rc = step_fill(g, n, seqs, 0, cap, chunk, &lay, g->h_step,
		    len)) != KVX_OK)
			goto out;
	}
	memcpy(g->h_step + lay.ids, ids, (size_t)n * sizeof(int32_t));
	if (g->timing)
		g->st.decode_host_s += kvx__now() - t0;
	if (need > g->dstep_room) {
		g->dstep_room = 0;
		g->bgen++;
		if ((rc = gpu__regrow((void **)&g->d_step, need)) != KVX_OK)
			goto out;
		g->dstep_room = need;
	}
	if (cap > g->part_cap) {
		g->part_cap = 0;
		g->bgen++;
		if ((rc = gpu__regrow((void **)&g->pm, (size_t)cap * G * 4)) !=
		    KVX_OK ||
		    (rc = gpu__regrow((void **)&g->pl, (size_t)cap * G * 4)) !=
		    KVX_OK ||
		    (rc = gpu__regrow((void **)&g->pacc, (size_t)cap * G * D *
		    4)) != KVX_OK)
			goto out;
		g->part_cap = cap;
	}
	/* the tables: from d_pre, where the last step sent them, with
	   the token ids from the host; or all from the host */
	if ((g->timing && cudaEventRecord(g->ev[0], g->stream) !=
	    cudaSuccess) || (dev ?
	    cudaMemcpyAsync(g->d_step, g->d_pre, need,
	    cudaMemcpyDeviceToDevice, g->stream) != cudaSuccess ||
	    cudaEventRecord(g->ev_used, g->stream) != cudaSuccess ||
	    cudaMemcpyAsync(g->ids, g->h_step + lay.ids, (size_t)n * 4,
	    cudaMemcpyHostToDevice, g->stream) != cudaSuccess :
	    cudaMemcpyAsync(g->d_step, g->h_step, need,
	    cudaMemcpyHostToDevice, g->stream) != cudaSuccess ||
	    cudaMemcpyAsync(g->ids, g->d_step + lay.ids, (size_t)n * 4,
	    cudaMemcpyDeviceToDevice, g->stream) != cudaSuccess) ||
	    cudaMemcpyAsync(g->pos, g->d_step + lay.pos,
	    (size_t)n * 4, cudaMemcpyDeviceToDevice, g->stream) !=
	    cudaSuccess) {
		rc = kvx__fail(KVX_ERR_DEVICE, "%s:%d: decode table upload "
		    "failed", __FILE__, __LINE__);
		goto out;
	}
	if (g->nograph)
		rc = step_issue(g, n, cap, &lay, head, var);
	else {
		if (!graph_fits(g, n, cap, head, var))
			rc = step_capture(g, n, cap, &lay, head, var);
		if (rc == KVX_OK && cudaGraphLaunch(g->gx, g->stream) !=
		    cudaSuccess)
			rc = kvx__fail(KVX_ERR_DEVICE, "%s:%d: graph launch "
			    "failed", __FILE__, __LINE__);
	}
	if (rc == KVX_OK && g->timing && cudaEventRecord(g->ev[1],
	    g->stream) != cudaSuccess)
		rc = kvx__fail(KVX_ERR_DEVICE, "%s:%d: event record failed",
		    __FILE__, __LINE__);
	if (rc != KVX_OK)
		goto out;
	if (logits != NULL && cudaMemcpyAsync(logits, g->logits, (size_t)n *
	    g->V * 4, cudaMemcpyDeviceToHost, g->stream) != cudaSuccess) {
		rc = kvx__fail(KVX_ERR_DEVICE, "%s:%d: logits copy failed",
		    __FILE__, __LINE__);
		goto out;
	}
	/* meanwhile, the next step's tables: only when no segment will
	   need to grow and the graph will still fit */
	t1 = kvx__now();
	for (i = 0, pre = 1; i < n && pre; i++)
		for (l = 0; l < g->L && pre; l++)
			for (h = 0; h < Hkv; h++)
				if (seg_at(g, seqs[i], l, h)->len + 2 >
				    seg_at(g, seqs[i], l, h)->cap)
					pre = 0;
	if (pre && n <= g->pre_max &&
	    (cap = step_items(g, n, seqs, 1, head, chunk, &pvar)) ==
	    g->gx_cap && graph_fits(g, n, cap, head, pvar) &&
	    step_layout(g, n, cap, &lay) == need &&
	    host_room(&g->h_pre, &g->pre_room, need) == KVX_OK &&
	    step_fill(g, n, seqs, 1, cap, chunk, &lay, g->h_pre, len) ==
	    KVX_OK) {
		memcpy(g->pre_seqs, seqs, (size_t)n * sizeof(int));
		g->pre_n = n;
		g->pre_cap = cap;
		g->pre_head = head;
		g->pre_gen = g->gen;
		g->pre_ok = 1;
		pre_send(g, need);
	}
	/* the new rows, counted while the device still runs (taken back
	   if the step fails): a sequence's segments lie together */
	for (i = 0; i < n; i++) {
		gseg *sg = seg_at(g, seqs[i], 0, 0);

		for (h = 0; h < g->L * Hkv; h++)
			sg[h].len++;
		g->npos[seqs[i]]++;
	}
	if (g->timing)
		g->st.decode_ahead_s += kvx__now() - t1;
	/* the tables stay in use until the step ends */
	if (cudaStreamSynchronize(g->stream) != cudaSuccess) {
		g->pre_ok = 0;
		rc = kvx__fail(KVX_ERR_DEVICE, "%s:%d: decode step failed: %s",
		    __FILE__, __LINE__, cudaGetErrorString(cudaGetLastError()));
		for (i = 0; i < n; i++) {
			gseg *sg = seg_at(g, seqs[i], 0, 0);

			for (h = 0; h < g->L * Hkv; h++)
				sg[h].len--;
			g->npos[seqs[i]]--;
		}
		goto out;
	}
	if (g->timing) {
		float ms;

		g->st.decode_s += kvx__now() - t0;
		g->st.decode_tokens += n;
		if (cudaEventElapsedTime(&ms, g->ev[0], g->ev[1]) ==
		    cudaSuccess)
			g->st.decode_dev_s += ms * 1e-3;
	}
out:
	free(len);
	free(chunk);
	free(lay.l);
	return rc;
}

/* One decode step for n distinct sequences, their tokens checked first. */
kvx_status
gpu_decode(gpu_ctx *g, int n, const int *seqs, const int32_t *ids,
    float *logits)
{
	int i;

	for (i = 0; i < n; i++)
		if (ids[i] < 0 || ids[i] >= g->V)
			return kvx__fail(KVX_ERR_ARG, "token id %d out of range "
			    "[0, %d)", ids[i], g->V);
	return decode_step(g, n, seqs, ids, logits);
}

/* Append n tokens to sequence s, one decode step each. */
kvx_status
gpu_extend(gpu_ctx *g, int s, const int32_t *ids, int n, float *logits)
{
	kvx_status rc;
	int i;

	/* token by token: each sees the cache and the tokens before it */
	for (i = 0; i < n; i++)
		if ((rc = gpu_decode(g, 1, &s, ids + i, logits != NULL ?
		    logits + (size_t)i * g->V : NULL)) != KVX_OK)
			return rc;
	return KVX_OK;
}

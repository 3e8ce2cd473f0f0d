/*
 * kvx-trace.c - the device's own timeline of a profiled range: every
 * kernel and copy that runs between cudaProfilerStart and
 * cudaProfilerStop (kvx-bench-e2e brackets its last timed step so),
 * graph nodes included, as the device timed them.  Preloaded into any
 * program; writes one line a record to $KVX_TRACE (default
 * kvx-trace.tsv):
 *
 *   range  kind  start_ns  end_ns  bytes  name
 *
 * range counts the profiled ranges from 1; kind is "kernel" or "copy"
 * (bytes then the copy's size, name its direction).  bench/trace.py
 * sums a file per range: kernels by family, copies, and the gaps
 * between them.
 *
 * Build (not part of make: it needs CUPTI, the toolkit's profiling
 * library):
 *
 *   cc -O2 -shared -fPIC -o libkvx-trace.so bench/kvx-trace.c \
 *       -I/usr/local/cuda/include -L/usr/local/cuda/lib64 -lcupti
 *   KVX_TRACE=e2e.tsv LD_PRELOAD=./libkvx-trace.so \
 *       bench/kvx-bench-e2e -1 -m MODEL -b 4 -c 8192 -s 2 -u 25,10
 *
 * (-1: the configurations in the traced process itself, not in children
 * of their own.)
 *
 * SPDX-License-Identifier: MIT
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cupti.h>

#define BUF_BYTES (8u << 20)

static FILE *out;
static int range;		/* the current profiled range, 0 outside */
static int ranges;		/* ranges begun */
static CUpti_SubscriberHandle sub;

/* A fresh buffer for CUPTI to fill. */
static void CUPTIAPI
buf_want(uint8_t **buf, size_t *size, size_t *max_records)
{
	*buf = aligned_alloc(8, BUF_BYTES);
	*size = *buf != NULL ? BUF_BYTES : 0;
	*max_records = 0;
}

static const char *
copy_kind(int k)
{
	switch (k) {
	case CUPTI_ACTIVITY_MEMCPY_KIND_HTOD:
		return "HtoD";
	case CUPTI_ACTIVITY_MEMCPY_KIND_DTOH:
		return "DtoH";
	case CUPTI_ACTIVITY_MEMCPY_KIND_DTOD:
		return "DtoD";
	default:
		return "other";
	}
}

/* A filled buffer: its records to the file. */
static void CUPTIAPI
buf_done(CUcontext ctx, uint32_t stream, uint8_t *buf, size_t size,
    size_t valid)
{
	CUpti_Activity *rec = NULL;

	(void)ctx;
	(void)stream;
	(void)size;
	while (out != NULL && cuptiActivityGetNextRecord(buf, valid, &rec) ==
	    CUPTI_SUCCESS) {
		if (rec->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL ||
		    rec->kind == CUPTI_ACTIVITY_KIND_KERNEL) {
			CUpti_ActivityKernel10 *k = (void *)rec;

			fprintf(out, "%d\tkernel\t%llu\t%llu\t0\t%s\n", ranges,
			    (unsigned long long)k->start,
			    (unsigned long long)k->end,
			    k->name != NULL ? k->name : "?");
		} else if (rec->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
			CUpti_ActivityMemcpy6 *m = (void *)rec;

			fprintf(out, "%d\tcopy\t%llu\t%llu\t%llu\t%s\n", ranges,
			    (unsigned long long)m->start,
			    (unsigned long long)m->end,
			    (unsigned long long)m->bytes,
			    copy_kind(m->copyKind));
		}
	}
	free(buf);
}

static void
collect(int on)
{
	CUpti_ActivityKind k[2] = { CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL,
	    CUPTI_ACTIVITY_KIND_MEMCPY };
	int i;

	for (i = 0; i < 2; i++)
		if (on)
			cuptiActivityEnable(k[i]);
		else
			cuptiActivityDisable(k[i]);
}

/* cudaProfilerStart and Stop open and close a range. */
static void CUPTIAPI
on_api(void *ud, CUpti_CallbackDomain dom, CUpti_CallbackId cb,
    const void *data)
{
	const CUpti_CallbackData *d = data;

	(void)ud;
	if (dom != CUPTI_CB_DOMAIN_RUNTIME_API)
		return;
	if (cb == CUPTI_RUNTIME_TRACE_CBID_cudaProfilerStart_v4000 &&
	    d->callbackSite == CUPTI_API_EXIT && !range) {
		range = ++ranges;
		collect(1);
	} else if (cb == CUPTI_RUNTIME_TRACE_CBID_cudaProfilerStop_v4000 &&
	    d->callbackSite == CUPTI_API_ENTER && range) {
		/* the caller has waited for the range's work */
		cuptiActivityFlushAll(1);
		collect(0);
		range = 0;
	}
}

__attribute__((constructor)) static void
trace_init(void)
{
	const char *path = getenv("KVX_TRACE");

	out = fopen(path != NULL ? path : "kvx-trace.tsv", "w");
	if (out == NULL) {
		perror("kvx-trace");
		return;
	}
	if (cuptiActivityRegisterCallbacks(buf_want, buf_done) !=
	    CUPTI_SUCCESS ||
	    cuptiSubscribe(&sub, (CUpti_CallbackFunc)on_api, NULL) !=
	    CUPTI_SUCCESS ||
	    cuptiEnableCallback(1, sub, CUPTI_CB_DOMAIN_RUNTIME_API,
	    CUPTI_RUNTIME_TRACE_CBID_cudaProfilerStart_v4000) !=
	    CUPTI_SUCCESS ||
	    cuptiEnableCallback(1, sub, CUPTI_CB_DOMAIN_RUNTIME_API,
	    CUPTI_RUNTIME_TRACE_CBID_cudaProfilerStop_v4000) !=
	    CUPTI_SUCCESS)
		fprintf(stderr, "kvx-trace: CUPTI would not start\n");
}

__attribute__((destructor)) static void
trace_fini(void)
{
	cuptiActivityFlushAll(1);
	if (out != NULL)
		fclose(out);
	out = NULL;
}

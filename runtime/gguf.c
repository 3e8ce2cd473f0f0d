/*
 * gguf.c - GGUF (v2, v3) reader.
 * SPDX-License-Identifier: MIT
 *
 * File layout (little endian), after the GGUF specification:
 *   "GGUF" u32 version, u64 n_tensors, u64 n_kv,
 *   n_kv x { string key, u32 vtype, value },
 *   n_tensors x { string name, u32 n_dims, u64 ne[n_dims], u32 type,
 *                 u64 offset },
 *   padding to general.alignment, then the data section.
 * A string is u64 length + bytes; an array is u32 element type, u64 count,
 * elements.  Version 1 used 32-bit counts and lengths and is rejected.
 *
 * The parser never trusts a count: before anything is allocated or read,
 * the bytes it needs are checked against what is left of the file, so a
 * hostile header cannot make it allocate more than a small multiple of the
 * file size.
 *
 * The file is mapped at a 2 MiB boundary, so that gguf_load_anon can put
 * the data section on transparent huge pages at the same addresses.
 */
#define _GNU_SOURCE		/* mremap's MREMAP_FIXED */
#include "config.h"

#include <sys/mman.h>
#include <sys/stat.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf.h"
#include "util.h"

#define GGUF_DEFAULT_ALIGNMENT	32
#define GGUF_MAX_DIMS		4
#define HUGE_PAGE		((size_t)2 << 20)	/* x86-64, arm64 PMD */
#define READ_CHUNK		((size_t)8 << 20)	/* pread per call */

int gguf__fail_anon;

/*
 * The handle given out is the first member of this, so that lookups can
 * use hash tables without widening the public struct.
 */
struct gguf_priv {
	gguf_file	 f;
	char		*name;		/* path, for messages */
	int		 mapped;
	int		 anon;		/* data section in anonymous memory */
	size_t		*kv_tab;	/* open addressing: index + 1 */
	size_t		 kv_cap;
	size_t		*t_tab;
	size_t		 t_cap;
};

/* Cursor over the file being parsed. */
struct rd {
	const uint8_t	*p;
	size_t		 size;
	size_t		 off;
	const char	*name;
	char		 what[128];	/* what is being read */
	int64_t		 elem;		/* array element, or -1 */
};

/* Per-type block geometry; types the reader does not know have bytes 0. */
static const struct {
	const char	*name;
	int		 elems;
	size_t		 bytes;
} ggml_types[] = {
	[0] = { "F32", 1, 4 },		[1] = { "F16", 1, 2 },
	[2] = { "Q4_0", 32, 18 },	[3] = { "Q4_1", 32, 20 },
	[6] = { "Q5_0", 32, 22 },	[7] = { "Q5_1", 32, 24 },
	[8] = { "Q8_0", 32, 34 },
	/* Two halves (d, s) and 32 quants, as in ggml's block_q8_1. */
	[9] = { "Q8_1", 32, 36 },
	[10] = { "Q2_K", 256, 84 },	[11] = { "Q3_K", 256, 110 },
	[12] = { "Q4_K", 256, 144 },	[13] = { "Q5_K", 256, 176 },
	[14] = { "Q6_K", 256, 210 },	[15] = { "Q8_K", 256, 292 },
	[16] = { "IQ2_XXS", 256, 66 },	[17] = { "IQ2_XS", 256, 74 },
	[18] = { "IQ3_XXS", 256, 98 },	[19] = { "IQ1_S", 256, 50 },
	[20] = { "IQ4_NL", 32, 18 },	[21] = { "IQ3_S", 256, 110 },
	[22] = { "IQ2_S", 256, 82 },	[23] = { "IQ4_XS", 256, 136 },
	[24] = { "I8", 1, 1 },		[25] = { "I16", 1, 2 },
	[26] = { "I32", 1, 4 },		[27] = { "I64", 1, 8 },
	[28] = { "F64", 1, 8 },		[29] = { "IQ1_M", 256, 56 },
	[30] = { "BF16", 1, 2 },
	[34] = { "TQ1_0", 256, 54 },	[35] = { "TQ2_0", 256, 66 },
};
#define N_GGML_TYPES	(int)(sizeof ggml_types / sizeof ggml_types[0])

/* Size in bytes of a scalar metadata value; 0 for string and array. */
static const size_t vtype_size[GGUF_NVTYPE] = {
	[GGUF_U8] = 1, [GGUF_I8] = 1, [GGUF_U16] = 2, [GGUF_I16] = 2,
	[GGUF_U32] = 4, [GGUF_I32] = 4, [GGUF_F32] = 4, [GGUF_BOOL] = 1,
	[GGUF_U64] = 8, [GGUF_I64] = 8, [GGUF_F64] = 8,
};

/* Bytes per block of a ggml type, 0 when unknown. */
size_t
ggml_type_block_bytes(int type)
{
	if (type < 0 || type >= N_GGML_TYPES)
		return 0;
	return ggml_types[type].bytes;
}

/* Elements per block of a ggml type, 0 when unknown. */
int
ggml_type_block_elems(int type)
{
	if (type < 0 || type >= N_GGML_TYPES)
		return 0;
	return ggml_types[type].elems;
}

/* Printable name of a ggml type. */
const char *
ggml_type_name(int type)
{
	if (type < 0 || type >= N_GGML_TYPES || ggml_types[type].name == NULL)
		return "unknown";
	return ggml_types[type].name;
}

/* Whether a counted string equals a C string. */
int
gguf_str_eq(gguf_str s, const char *c)
{
	size_t n = strlen(c);

	return s.len == n && memcmp(s.p, c, n) == 0;
}

/* FNV-1a over a byte range, for the lookup tables. */
static uint64_t
hash_bytes(const void *p, size_t n)
{
	const uint8_t *b = p;
	uint64_t h = 0xcbf29ce484222325ull;

	while (n-- > 0) {
		h ^= *b++;
		h *= 0x100000001b3ull;
	}
	return h;
}

/* Smallest power of two >= 2n, at least 16. */
static size_t
table_cap(uint64_t n)
{
	size_t cap = 16;

	while (cap < 2 * n)
		cap *= 2;
	return cap;
}

/*
 * Insert entry idx (whose name is s) into tab; returns the index of an
 * existing entry with the same name, or SIZE_MAX when s was new.
 */
static size_t
table_insert(size_t *tab, size_t cap, gguf_str s, size_t idx,
    const gguf_str *(*name_of)(const gguf_file *, size_t),
    const gguf_file *f)
{
	size_t i = hash_bytes(s.p, s.len) & (cap - 1);
	const gguf_str *o;

	for (; tab[i] != 0; i = (i + 1) & (cap - 1)) {
		o = name_of(f, tab[i] - 1);
		if (o->len == s.len && memcmp(o->p, s.p, s.len) == 0)
			return tab[i] - 1;
	}
	tab[i] = idx + 1;
	return SIZE_MAX;
}

/* Looks up name in tab; index of the entry or SIZE_MAX. */
static size_t
table_find(const size_t *tab, size_t cap, const char *name,
    const gguf_str *(*name_of)(const gguf_file *, size_t),
    const gguf_file *f)
{
	size_t n = strlen(name);
	size_t i = hash_bytes(name, n) & (cap - 1);
	const gguf_str *o;

	if (tab == NULL)
		return SIZE_MAX;
	for (; tab[i] != 0; i = (i + 1) & (cap - 1)) {
		o = name_of(f, tab[i] - 1);
		if (o->len == n && memcmp(o->p, name, n) == 0)
			return tab[i] - 1;
	}
	return SIZE_MAX;
}

/* Key of metadata entry i. */
static const gguf_str *
kv_name(const gguf_file *f, size_t i)
{
	return &f->kv[i].key;
}

/* Name of tensor i. */
static const gguf_str *
tensor_name(const gguf_file *f, size_t i)
{
	return &f->tensors[i].name;
}

/* Sets the description of what is being read, used in messages. */
static void KVX_PRINTF(2, 3)
rd_what(struct rd *r, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(r->what, sizeof r->what, fmt, ap);
	va_end(ap);
	r->elem = -1;
}

/*
 * What is being read, with the array element if any; formatted only for
 * messages, since string arrays have a hundred thousand elements.
 */
static const char *
rd_where(const struct rd *r, char *buf, size_t size)
{
	if (r->elem < 0)
		return r->what;
	snprintf(buf, size, "string %" PRId64 " of %s", r->elem, r->what);
	return buf;
}

/* Fails unless n more bytes are available. */
static kvx_status
rd_need(struct rd *r, uint64_t n)
{
	char buf[160];

	if (n > r->size - r->off)
		return kvx__fail(KVX_ERR_FORMAT,
		    "%s: truncated at offset %zu while reading %s "
		    "(file size %zu)", r->name, r->off,
		    rd_where(r, buf, sizeof buf), r->size);
	return KVX_OK;
}

/* Reads a little-endian u32. */
static kvx_status
rd_u32(struct rd *r, uint32_t *v)
{
	kvx_status st;

	if ((st = rd_need(r, 4)) != KVX_OK)
		return st;
	memcpy(v, r->p + r->off, 4);
	r->off += 4;
	return KVX_OK;
}

/* Reads a little-endian u64. */
static kvx_status
rd_u64(struct rd *r, uint64_t *v)
{
	kvx_status st;

	if ((st = rd_need(r, 8)) != KVX_OK)
		return st;
	memcpy(v, r->p + r->off, 8);
	r->off += 8;
	return KVX_OK;
}

/* Reads a length-prefixed string, leaving it in place. */
static kvx_status
rd_str(struct rd *r, gguf_str *s)
{
	kvx_status st;
	uint64_t len;
	char buf[160];

	if ((st = rd_u64(r, &len)) != KVX_OK)
		return st;
	if (len > r->size - r->off)
		return kvx__fail(KVX_ERR_FORMAT,
		    "%s: string length %" PRIu64 " at offset %zu runs past "
		    "the end while reading %s (file size %zu)", r->name, len,
		    r->off - 8, rd_where(r, buf, sizeof buf), r->size);
	s->p = (const char *)r->p + r->off;
	s->len = len;
	r->off += len;
	return KVX_OK;
}

/* Decodes a scalar of type t at p into kv->v. */
static void
decode_scalar(gguf_kv *kv, int t, const uint8_t *p)
{
	uint8_t u8; uint16_t u16; uint32_t u32; uint64_t u64;
	float f32; double f64;

	switch (t) {
	case GGUF_U8: case GGUF_BOOL:
		kv->v.u = p[0];
		break;
	case GGUF_I8:
		memcpy(&u8, p, 1);
		kv->v.i = (int8_t)u8;
		break;
	case GGUF_U16:
		memcpy(&u16, p, 2);
		kv->v.u = u16;
		break;
	case GGUF_I16:
		memcpy(&u16, p, 2);
		kv->v.i = (int16_t)u16;
		break;
	case GGUF_U32:
		memcpy(&u32, p, 4);
		kv->v.u = u32;
		break;
	case GGUF_I32:
		memcpy(&u32, p, 4);
		kv->v.i = (int32_t)u32;
		break;
	case GGUF_U64:
		memcpy(&u64, p, 8);
		kv->v.u = u64;
		break;
	case GGUF_I64:
		memcpy(&u64, p, 8);
		kv->v.i = (int64_t)u64;
		break;
	case GGUF_F32:
		memcpy(&f32, p, 4);
		kv->v.f = f32;
		break;
	case GGUF_F64:
		memcpy(&f64, p, 8);
		kv->v.f = f64;
		break;
	}
}

/* Parses metadata entry i at the cursor. */
static kvx_status
parse_kv(struct rd *r, gguf_kv *kv, uint64_t i)
{
	kvx_status st;
	uint32_t t, at;
	uint64_t n, k;
	gguf_str *strs;

	rd_what(r, "metadata key %" PRIu64, i);
	if ((st = rd_str(r, &kv->key)) != KVX_OK)
		return st;
	rd_what(r, "metadata %" PRIu64 " '%.*s'", i,
	    (int)(kv->key.len > 60 ? 60 : kv->key.len), kv->key.p);
	if ((st = rd_u32(r, &t)) != KVX_OK)
		return st;
	if (t >= GGUF_NVTYPE)
		return kvx__fail(KVX_ERR_FORMAT,
		    "%s: bad value type %" PRIu32 " at offset %zu in %s",
		    r->name, t, r->off - 4, r->what);
	kv->type = (int)t;
	kv->arr_type = -1;
	kv->n = 1;
	if (t == GGUF_STR) {
		kv->data = r->p + r->off;
		return rd_str(r, &kv->v.s);
	}
	if (t != GGUF_ARR) {
		if ((st = rd_need(r, vtype_size[t])) != KVX_OK)
			return st;
		kv->data = r->p + r->off;
		decode_scalar(kv, (int)t, kv->data);
		r->off += vtype_size[t];
		return KVX_OK;
	}
	if ((st = rd_u32(r, &at)) != KVX_OK ||
	    (st = rd_u64(r, &n)) != KVX_OK)
		return st;
	if (at >= GGUF_NVTYPE)
		return kvx__fail(KVX_ERR_FORMAT,
		    "%s: bad array element type %" PRIu32 " at offset %zu "
		    "in %s",
		    r->name, at, r->off - 12, r->what);
	if (at == GGUF_ARR)
		return kvx__fail(KVX_ERR_FORMAT,
		    "%s: nested arrays are not supported (%s)", r->name,
		    r->what);
	kv->arr_type = (int)at;
	kv->n = n;
	kv->data = r->p + r->off;
	if (at != GGUF_STR) {
		if (n > (r->size - r->off) / vtype_size[at])
			return kvx__fail(KVX_ERR_FORMAT,
			    "%s: array of %" PRIu64 " elements at offset %zu "
			    "runs past the end in %s (file size %zu)", r->name,
			    n, r->off, r->what, r->size);
		r->off += n * vtype_size[at];
		return KVX_OK;
	}
	/* Each string takes at least its 8-byte length. */
	if (n > (r->size - r->off) / 8)
		return kvx__fail(KVX_ERR_FORMAT,
		    "%s: array of %" PRIu64 " strings at offset %zu cannot fit "
		    "in the file in %s (file size %zu)", r->name, n, r->off,
		    r->what, r->size);
	if ((strs = kvx__malloc_array(n, sizeof *strs)) == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "%s: out of memory for %s",
		    r->name, r->what);
	kv->strs = strs;
	for (k = 0; k < n; k++) {
		r->elem = (int64_t)k;
		if ((st = rd_str(r, &strs[k])) != KVX_OK)
			return st;
	}
	r->elem = -1;
	return KVX_OK;
}

/* Parses tensor info i at the cursor. */
static kvx_status
parse_tensor(struct rd *r, gguf_tensor *t, uint64_t i)
{
	kvx_status st;
	uint32_t nd, type;
	uint64_t nel = 1, nblk;
	int d;

	rd_what(r, "tensor info %" PRIu64, i);
	if ((st = rd_str(r, &t->name)) != KVX_OK ||
	    (st = rd_u32(r, &nd)) != KVX_OK)
		return st;
	if (nd > GGUF_MAX_DIMS)
		return kvx__fail(KVX_ERR_FORMAT,
		    "%s: tensor %" PRIu64 " '%.*s' has %" PRIu32 " dimensions "
		    "(at most %d)", r->name, i, (int)t->name.len, t->name.p,
		    nd, GGUF_MAX_DIMS);
	t->n_dims = (int)nd;
	for (d = 0; d < GGUF_MAX_DIMS; d++)
		t->ne[d] = 1;
	for (d = 0; d < (int)nd; d++) {
		if ((st = rd_u64(r, &t->ne[d])) != KVX_OK)
			return st;
		if (t->ne[d] > INT64_MAX)
			return kvx__fail(KVX_ERR_FORMAT,
			    "%s: tensor '%.*s' ne[%d] = %" PRIu64 " is "
			    "negative", r->name, (int)t->name.len, t->name.p,
			    d, t->ne[d]);
	}
	if ((st = rd_u32(r, &type)) != KVX_OK ||
	    (st = rd_u64(r, &t->offset)) != KVX_OK)
		return st;
	if (ggml_type_block_bytes((int)type) == 0)
		return kvx__fail(KVX_ERR_FORMAT,
		    "%s: tensor '%.*s' has unknown ggml type %" PRIu32,
		    r->name, (int)t->name.len, t->name.p, type);
	t->type = (int)type;
	for (d = 0; d < GGUF_MAX_DIMS; d++) {
		if (t->ne[d] != 0 && nel > INT64_MAX / t->ne[d])
			return kvx__fail(KVX_ERR_FORMAT,
			    "%s: tensor '%.*s' element count overflows "
			    "(%" PRIu64 " x %" PRIu64 " x %" PRIu64 " x %"
			    PRIu64 ")", r->name, (int)t->name.len, t->name.p,
			    t->ne[0], t->ne[1], t->ne[2], t->ne[3]);
		nel *= t->ne[d];
	}
	if (t->ne[0] % (uint64_t)ggml_type_block_elems(t->type) != 0)
		return kvx__fail(KVX_ERR_FORMAT,
		    "%s: tensor '%.*s' row length %" PRIu64 " is not a "
		    "multiple of the %s block size %d", r->name,
		    (int)t->name.len, t->name.p, t->ne[0], ggml_type_name(t->type),
		    ggml_type_block_elems(t->type));
	nblk = nel / (uint64_t)ggml_type_block_elems(t->type);
	if (nblk > UINT64_MAX / ggml_type_block_bytes(t->type))
		return kvx__fail(KVX_ERR_FORMAT,
		    "%s: tensor '%.*s' size overflows", r->name,
		    (int)t->name.len, t->name.p);
	t->nbytes = nblk * ggml_type_block_bytes(t->type);
	return KVX_OK;
}

/* Reads general.alignment, if present, into f->alignment. */
static kvx_status
parse_alignment(struct gguf_priv *g)
{
	const gguf_kv *kv;
	uint64_t a;

	g->f.alignment = GGUF_DEFAULT_ALIGNMENT;
	if ((kv = gguf_find(&g->f, "general.alignment")) == NULL)
		return KVX_OK;
	switch (kv->type) {
	case GGUF_U8: case GGUF_U16: case GGUF_U32: case GGUF_U64:
		a = kv->v.u;
		break;
	case GGUF_I8: case GGUF_I16: case GGUF_I32: case GGUF_I64:
		a = kv->v.i < 0 ? 0 : (uint64_t)kv->v.i;
		break;
	default:
		return kvx__fail(KVX_ERR_FORMAT,
		    "%s: general.alignment is not an integer", g->name);
	}
	if (a == 0 || (a & (a - 1)) != 0 || a > (1u << 30))
		return kvx__fail(KVX_ERR_FORMAT,
		    "%s: general.alignment %" PRIu64 " is not a power of two "
		    "(up to 2^30)", g->name, a);
	g->f.alignment = a;
	return KVX_OK;
}

/* Parses the whole file held in g->f.map. */
static kvx_status
parse(struct gguf_priv *g)
{
	gguf_file *f = &g->f;
	struct rd r = { .p = f->map, .size = f->size, .name = g->name,
	    .elem = -1 };
	kvx_status st;
	uint64_t i, n_tensors, n_kv, dof;
	size_t dup;
	gguf_tensor *t;

	rd_what(&r, "the header");
	if ((st = rd_need(&r, 4)) != KVX_OK)
		return st;
	if (memcmp(f->map, "GGUF", 4) != 0)
		return kvx__fail(KVX_ERR_FORMAT,
		    "%s: not a GGUF file (bad magic %02x %02x %02x %02x)",
		    g->name, f->map[0], f->map[1], f->map[2], f->map[3]);
	r.off = 4;
	if ((st = rd_u32(&r, &f->version)) != KVX_OK)
		return st;
	if (f->version == 1)
		return kvx__fail(KVX_ERR_FORMAT,
		    "%s: GGUF version 1 is not supported (convert the file to "
		    "version 2 or 3)", g->name);
	if (f->version != 2 && f->version != 3)
		return kvx__fail(KVX_ERR_FORMAT,
		    "%s: unknown GGUF version %" PRIu32 " (expected 2 or 3)",
		    g->name, f->version);
	if ((st = rd_u64(&r, &n_tensors)) != KVX_OK ||
	    (st = rd_u64(&r, &n_kv)) != KVX_OK)
		return st;
	/*
	 * Smallest encodings: a metadata entry is a key length, a type and a
	 * one-byte value (13 bytes); a tensor info is a name length, n_dims,
	 * type and offset (24 bytes).
	 */
	if (n_kv > (r.size - r.off) / 13)
		return kvx__fail(KVX_ERR_FORMAT,
		    "%s: n_kv %" PRIu64 " cannot fit in a file of %zu bytes",
		    g->name, n_kv, r.size);
	if (n_tensors > (r.size - r.off) / 24)
		return kvx__fail(KVX_ERR_FORMAT,
		    "%s: n_tensors %" PRIu64 " cannot fit in a file of %zu "
		    "bytes", g->name, n_tensors, r.size);
	f->n_kv = n_kv;
	f->n_tensors = n_tensors;
	f->kv = kvx__calloc(n_kv, sizeof *f->kv);
	f->tensors = kvx__calloc(n_tensors, sizeof *f->tensors);
	g->kv_cap = table_cap(n_kv);
	g->t_cap = table_cap(n_tensors);
	g->kv_tab = kvx__calloc(g->kv_cap, sizeof *g->kv_tab);
	g->t_tab = kvx__calloc(g->t_cap, sizeof *g->t_tab);
	if (f->kv == NULL || f->tensors == NULL || g->kv_tab == NULL ||
	    g->t_tab == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "%s: out of memory", g->name);

	for (i = 0; i < n_kv; i++) {
		/* A partly parsed entry must still be freed by gguf_close. */
		f->n_kv = i + 1;
		if ((st = parse_kv(&r, &f->kv[i], i)) != KVX_OK)
			return st;
		dup = table_insert(g->kv_tab, g->kv_cap, f->kv[i].key, i,
		    kv_name, f);
		if (dup != SIZE_MAX)
			return kvx__fail(KVX_ERR_FORMAT,
			    "%s: duplicate metadata key '%.*s' (entries %zu "
			    "and %" PRIu64 ")", g->name,
			    (int)f->kv[i].key.len, f->kv[i].key.p, dup, i);
	}
	if ((st = parse_alignment(g)) != KVX_OK)
		return st;

	for (i = 0; i < n_tensors; i++) {
		t = &f->tensors[i];
		if ((st = parse_tensor(&r, t, i)) != KVX_OK)
			return st;
		dup = table_insert(g->t_tab, g->t_cap, t->name, i,
		    tensor_name, f);
		if (dup != SIZE_MAX)
			return kvx__fail(KVX_ERR_FORMAT,
			    "%s: duplicate tensor name '%.*s' (tensors %zu "
			    "and %" PRIu64 ")", g->name, (int)t->name.len,
			    t->name.p, dup, i);
		if (t->offset % f->alignment != 0)
			return kvx__fail(KVX_ERR_FORMAT,
			    "%s: tensor '%.*s' offset %" PRIu64 " is not a "
			    "multiple of the alignment %" PRIu64, g->name,
			    (int)t->name.len, t->name.p, t->offset,
			    f->alignment);
	}

	/* r.off <= size, alignment <= 2^30: no overflow in 64 bits. */
	dof = ((uint64_t)r.off + f->alignment - 1) & ~(f->alignment - 1);
	f->data_offset = dof;
	for (i = 0; i < n_tensors; i++) {
		t = &f->tensors[i];
		if (dof > f->size || t->offset > f->size - dof ||
		    t->nbytes > f->size - dof - t->offset)
			return kvx__fail(KVX_ERR_FORMAT,
			    "%s: tensor %" PRIu64 " '%.*s' (%s, %" PRIu64
			    " bytes at data offset %" PRIu64 ") extends past "
			    "the end of the file (data section at %" PRIu64
			    ", file size %zu)", g->name, i, (int)t->name.len,
			    t->name.p, ggml_type_name(t->type), t->nbytes,
			    t->offset, dof, f->size);
		t->data = f->map + dof + t->offset;
	}
	return KVX_OK;
}

/* Allocates a handle named name. */
static struct gguf_priv *
priv_new(const char *name)
{
	struct gguf_priv *g;

	if ((g = calloc(1, sizeof *g)) == NULL)
		return NULL;
	if ((g->name = strdup(name)) == NULL) {
		free(g);
		return NULL;
	}
	g->f.fd = -1;
	return g;
}

/* Parses g, or frees it on failure; the handle goes to *out. */
static kvx_status
finish_open(struct gguf_priv *g, gguf_file **out)
{
	kvx_status st;
	gguf_file *f;

	if ((st = parse(g)) != KVX_OK) {
		f = &g->f;
		gguf_close(&f);
		return st;
	}
	*out = &g->f;
	return KVX_OK;
}

/*
 * Maps len bytes of private anonymous memory of protection prot (PROT_NONE
 * to reserve addresses) starting at a HUGE_PAGE boundary; MAP_FAILED on
 * failure.
 */
static void *
reserve_aligned(size_t len, int prot)
{
	uint8_t *r, *a;
	size_t head, tail;

	if (len > SIZE_MAX - HUGE_PAGE)
		return MAP_FAILED;
	r = mmap(NULL, len + HUGE_PAGE, prot, MAP_PRIVATE | MAP_ANONYMOUS,
	    -1, 0);
	if (r == MAP_FAILED)
		return MAP_FAILED;
	a = (uint8_t *)(((uintptr_t)r + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1));
	head = (size_t)(a - r);
	tail = HUGE_PAGE - head;
	if (head > 0)
		munmap(r, head);
	munmap(a + len, tail);
	return a;
}

/* Maps size bytes of fd read-only at a HUGE_PAGE boundary. */
static void *
map_aligned(int fd, size_t size)
{
	void *a, *m;

	if ((a = reserve_aligned(size, PROT_NONE)) == MAP_FAILED)
		return mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
	m = mmap(a, size, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, 0);
	if (m == MAP_FAILED)
		munmap(a, size);
	return m;
}

/* 1 when transparent huge pages are not turned off ("never"). */
static int
thp_enabled(void)
{
	char buf[128];
	size_t n;
	FILE *fp;

	if ((fp = fopen("/sys/kernel/mm/transparent_hugepage/enabled",
	    "re")) == NULL)
		return 0;
	n = fread(buf, 1, sizeof buf - 1, fp);
	fclose(fp);
	buf[n] = '\0';
	return strstr(buf, "[never]") == NULL;
}

/* Reads len bytes of fd at off into p; 0, or -1 on error or short file. */
static int
read_full(int fd, uint8_t *p, size_t len, off_t off)
{
	size_t want;
	ssize_t n;

	while (len > 0) {
		want = len < READ_CHUNK ? len : READ_CHUNK;
		n = pread(fd, p, want, off);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		off += n;
		len -= (size_t)n;
	}
	return 0;
}

/*
 * The data section, from the HUGE_PAGE boundary at or before it to the end
 * of the mapping's last page, is read into private anonymous memory advised
 * MADV_HUGEPAGE, made read-only and moved over the file's pages with
 * mremap: the kernel swaps the pages under its mapping lock, so every
 * pointer into the file (tensor data, metadata strings) stays valid and
 * reads the same bytes at every moment, also from other threads.
 */
int
gguf_load_anon(gguf_file *f)
{
	struct gguf_priv *g = (struct gguf_priv *)f;
	uintptr_t start, end, pg = (uintptr_t)sysconf(_SC_PAGESIZE);
	size_t len, flen, i;
	uint8_t *tmp;

	if (g->anon)
		return 1;
#if defined(MADV_HUGEPAGE) && defined(MREMAP_FIXED)
	if (!g->mapped || f->fd == -1 || !thp_enabled())
		return 0;
	start = ((uintptr_t)f->map + f->data_offset) & ~(HUGE_PAGE - 1);
	if (start < (uintptr_t)f->map)
		start = (uintptr_t)f->map;
	end = ((uintptr_t)f->map + f->size + pg - 1) & ~(pg - 1);
	if (end <= start)
		return 0;
	len = end - start;
	if (gguf__fail_anon ||
	    (tmp = reserve_aligned(len, PROT_READ | PROT_WRITE)) == MAP_FAILED)
		return 0;
	flen = f->size - (start - (uintptr_t)f->map);
	if (madvise(tmp, len, MADV_HUGEPAGE) == -1)
		goto fallback;
	/* faulting the pages before the reads, not inside them, took
	 * 60-120 ms for 253 MB against 90-850 ms on a loaded machine */
	for (i = 0; i < len; i += pg)
		tmp[i] = 0;
	if (read_full(f->fd, tmp, flen,
	    (off_t)(start - (uintptr_t)f->map)) == -1 ||
	    mprotect(tmp, len, PROT_READ) == -1 ||
	    mremap(tmp, len, len, MREMAP_MAYMOVE | MREMAP_FIXED,
	    (void *)start) == MAP_FAILED)
		goto fallback;
	g->anon = 1;
	return 1;
fallback:
	munmap(tmp, len);
	return 0;
#else
	(void)start, (void)end, (void)pg, (void)len, (void)flen, (void)i,
	    (void)tmp;
	return 0;
#endif
}

/* Opens and maps a GGUF file read-only, then parses it. */
kvx_status
gguf_open(const char *path, gguf_file **out)
{
	struct gguf_priv *g;
	struct stat sb;
	gguf_file *f;
	void *m;
	int fd, e;

	if (path == NULL || out == NULL)
		return kvx__fail(KVX_ERR_ARG, "gguf_open: NULL argument");
	*out = NULL;
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1)
		return kvx__fail(KVX_ERR_IO, "%s: %s", path, strerror(errno));
	if (fstat(fd, &sb) == -1) {
		e = errno;
		close(fd);
		return kvx__fail(KVX_ERR_IO, "%s: %s", path, strerror(e));
	}
	if (!S_ISREG(sb.st_mode)) {
		close(fd);
		return kvx__fail(KVX_ERR_IO, "%s: not a regular file", path);
	}
	if ((g = priv_new(path)) == NULL) {
		close(fd);
		return kvx__fail(KVX_ERR_NOMEM, "%s: out of memory", path);
	}
	g->f.fd = fd;
	g->f.size = (size_t)sb.st_size;
	if (g->f.size == 0) {
		/* mmap refuses empty mappings; parse reports truncation. */
		g->f.map = (const uint8_t *)"";
		return finish_open(g, out);
	}
	m = map_aligned(fd, g->f.size);
	if (m == MAP_FAILED) {
		e = errno;
		g->f.map = NULL;
		f = &g->f;
		gguf_close(&f);
		return kvx__fail(KVX_ERR_IO, "%s: mmap: %s", path,
		    strerror(e));
	}
	g->f.map = m;
	g->mapped = 1;
	return finish_open(g, out);
}

/* Parses a GGUF image held in a caller-owned buffer. */
kvx_status
gguf_open_mem(const void *buf, size_t size, gguf_file **out)
{
	struct gguf_priv *g;

	if ((buf == NULL && size != 0) || out == NULL)
		return kvx__fail(KVX_ERR_ARG, "gguf_open_mem: NULL argument");
	*out = NULL;
	if ((g = priv_new("<memory>")) == NULL)
		return kvx__fail(KVX_ERR_NOMEM, "gguf_open_mem: out of memory");
	g->f.map = buf != NULL ? buf : (const uint8_t *)"";
	g->f.size = size;
	return finish_open(g, out);
}

/* Unmaps, frees and clears the handle. */
void
gguf_close(gguf_file **fp)
{
	struct gguf_priv *g;
	gguf_file *f;
	uint64_t i;

	if (fp == NULL || (f = *fp) == NULL)
		return;
	g = (struct gguf_priv *)f;
	if (f->kv != NULL)
		for (i = 0; i < f->n_kv; i++)
			free((void *)f->kv[i].strs);
	free(f->kv);
	free(f->tensors);
	free(g->kv_tab);
	free(g->t_tab);
	if (g->mapped)
		munmap((void *)f->map, f->size);
	if (f->fd != -1)
		close(f->fd);
	free(g->name);
	free(g);
	*fp = NULL;
}

/* Metadata entry with the given key, or NULL. */
const gguf_kv *
gguf_find(const gguf_file *f, const char *key)
{
	const struct gguf_priv *g = (const struct gguf_priv *)f;
	size_t i;

	if (f == NULL || key == NULL)
		return NULL;
	i = table_find(g->kv_tab, g->kv_cap, key, kv_name, f);
	return i == SIZE_MAX ? NULL : &f->kv[i];
}

/* Tensor with the given name, or NULL. */
const gguf_tensor *
gguf_tensor_find(const gguf_file *f, const char *name)
{
	const struct gguf_priv *g = (const struct gguf_priv *)f;
	size_t i;

	if (f == NULL || name == NULL)
		return NULL;
	i = table_find(g->t_tab, g->t_cap, name, tensor_name, f);
	return i == SIZE_MAX ? NULL : &f->tensors[i];
}

/* Name of a metadata value type, for messages. */
static const char *
vtype_name(int t)
{
	static const char *const names[GGUF_NVTYPE] = {
		"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool",
		"string", "array", "u64", "i64", "f64"
	};

	return t >= 0 && t < GGUF_NVTYPE ? names[t] : "unknown";
}

/* Finds key, failing with a message when it is absent. */
static kvx_status
find_or_fail(const gguf_file *f, const char *key, const gguf_kv **kv)
{
	if ((*kv = gguf_find(f, key)) == NULL)
		return kvx__fail(KVX_ERR_FORMAT, "%s: metadata key '%s' is "
		    "missing", ((const struct gguf_priv *)f)->name, key);
	return KVX_OK;
}

/* Fails naming the key, its type and the type wanted. */
static kvx_status
wrong_type(const gguf_file *f, const gguf_kv *kv, const char *key,
    const char *want)
{
	return kvx__fail(KVX_ERR_FORMAT, "%s: metadata '%s' is %s, expected %s",
	    ((const struct gguf_priv *)f)->name, key, vtype_name(kv->type),
	    want);
}

/* Integer metadata value that fits in a u32. */
kvx_status
gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out)
{
	const gguf_kv *kv;
	kvx_status st;

	if ((st = find_or_fail(f, key, &kv)) != KVX_OK)
		return st;
	switch (kv->type) {
	case GGUF_U8: case GGUF_U16: case GGUF_U32: case GGUF_U64:
		if (kv->v.u > UINT32_MAX)
			break;
		*out = (uint32_t)kv->v.u;
		return KVX_OK;
	case GGUF_I8: case GGUF_I16: case GGUF_I32: case GGUF_I64:
		if (kv->v.i < 0 || kv->v.i > (int64_t)UINT32_MAX)
			break;
		*out = (uint32_t)kv->v.i;
		return KVX_OK;
	default:
		return wrong_type(f, kv, key, "an integer");
	}
	return kvx__fail(KVX_ERR_FORMAT, "%s: metadata '%s' is out of range "
	    "for a 32-bit unsigned integer",
	    ((const struct gguf_priv *)f)->name, key);
}

/* Floating-point metadata value. */
kvx_status
gguf_get_f32(const gguf_file *f, const char *key, float *out)
{
	const gguf_kv *kv;
	kvx_status st;

	if ((st = find_or_fail(f, key, &kv)) != KVX_OK)
		return st;
	if (kv->type != GGUF_F32 && kv->type != GGUF_F64)
		return wrong_type(f, kv, key, "f32");
	*out = (float)kv->v.f;
	return KVX_OK;
}

/* Boolean metadata value as 0 or 1. */
kvx_status
gguf_get_bool(const gguf_file *f, const char *key, int *out)
{
	const gguf_kv *kv;
	kvx_status st;

	if ((st = find_or_fail(f, key, &kv)) != KVX_OK)
		return st;
	if (kv->type != GGUF_BOOL)
		return wrong_type(f, kv, key, "bool");
	*out = kv->v.u != 0;
	return KVX_OK;
}

/* String metadata value, copied and NUL-terminated. */
kvx_status
gguf_get_str(const gguf_file *f, const char *key, char *buf, size_t size)
{
	const gguf_kv *kv;
	kvx_status st;
	size_t n;

	if ((st = find_or_fail(f, key, &kv)) != KVX_OK)
		return st;
	if (kv->type != GGUF_STR)
		return wrong_type(f, kv, key, "string");
	if (size == 0)
		return KVX_OK;
	n = kv->v.s.len < size - 1 ? (size_t)kv->v.s.len : size - 1;
	memcpy(buf, kv->v.s.p, n);
	buf[n] = '\0';
	return KVX_OK;
}

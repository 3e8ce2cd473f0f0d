/*
 * test-gguf.c - GGUF reader: the real model, synthetic files, corruption.
 * SPDX-License-Identifier: MIT
 *
 * The synthetic files come from a small writer below that follows the
 * GGUF specification independently of the reader.  With arguments
 * "--write-seeds DIR" the program writes those files into DIR (the fuzz
 * seed corpus) and exits.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf.h"
#include "tap.h"
#include "util.h"

/* --- a minimal GGUF writer ----------------------------------------------- */

struct wb {
	uint8_t	*p;
	size_t	 n, cap;
};

/* Appends n bytes. */
static void
put(struct wb *b, const void *p, size_t n)
{
	if (b->n + n > b->cap) {
		b->cap = (b->n + n) * 2 + 64;
		if ((b->p = realloc(b->p, b->cap)) == NULL)
			abort();
	}
	memcpy(b->p + b->n, p, n);
	b->n += n;
}

/* Appends a little-endian u32 (the test host is little endian). */
static void
put_u32(struct wb *b, uint32_t v)
{
	put(b, &v, 4);
}

/* Appends a little-endian u64. */
static void
put_u64(struct wb *b, uint64_t v)
{
	put(b, &v, 8);
}

/* Appends a GGUF string. */
static void
put_str(struct wb *b, const char *s)
{
	put_u64(b, strlen(s));
	put(b, s, strlen(s));
}

/* Appends zero bytes up to a multiple of a. */
static void
pad_to(struct wb *b, size_t a)
{
	uint8_t z = 0;

	while (b->n % a != 0)
		put(b, &z, 1);
}

/* Offsets of fields in the synthetic file that the corruption cases patch. */
struct layout {
	size_t	 version, n_tensors, n_kv;
	size_t	 key0_len;		/* length of the first key */
	size_t	 u8_type;		/* type code of test.u8 */
	size_t	 arr_elem_type;	/* element type of test.strarr */
	size_t	 arr_str1_len;	/* length of its second string */
	size_t	 align_val;	/* general.alignment value */
	size_t	 i8_key;		/* first byte of "test.i8" */
	size_t	 t_name[3];		/* name bytes of each tensor */
	size_t	 t_ndims[3], t_ne[3], t_type[3], t_off[3];
	size_t	 data;
	size_t	 size;
};

/* Synthetic tensor table: name, type, ne, data byte pattern. */
static const struct {
	const char	*name;
	int		 type;
	int		 n_dims;
	uint64_t	 ne[2];
	size_t		 nbytes;
} stens[3] = {
	{ "a", GGML_F32, 2, { 4, 3 }, 48 },
	{ "b", GGML_Q8_0, 2, { 64, 2 }, 4 * 34 },
	{ "c", GGML_Q4_1, 1, { 32, 1 }, 20 },
};

/*
 * Builds a small valid GGUF image.  align 0 leaves general.alignment out
 * (the default 32 applies).
 */
static struct wb
build(uint32_t version, uint32_t align, struct layout *L)
{
	struct wb b = { 0 };
	uint64_t off, a = align ? align : 32;
	size_t i, j;
	int32_t i32;
	int16_t i16;
	uint16_t u16;
	float f32 = 1.5f;
	double f64 = 3.25;
	uint8_t u8;

	put(&b, "GGUF", 4);
	L->version = b.n;
	put_u32(&b, version);
	L->n_tensors = b.n;
	put_u64(&b, 3);
	L->n_kv = b.n;
	put_u64(&b, align ? 16 : 15);

	L->key0_len = b.n;
	put_str(&b, "general.architecture");
	put_u32(&b, GGUF_STR);
	put_str(&b, "llama");
	if (align) {
		put_str(&b, "general.alignment");
		put_u32(&b, GGUF_U32);
		L->align_val = b.n;
		put_u32(&b, align);
	}
	put_str(&b, "test.u8");
	L->u8_type = b.n;
	put_u32(&b, GGUF_U8);
	u8 = 200;
	put(&b, &u8, 1);
	L->i8_key = b.n + 8;
	put_str(&b, "test.i8");
	put_u32(&b, GGUF_I8);
	u8 = (uint8_t)-5;
	put(&b, &u8, 1);
	put_str(&b, "test.u16");
	put_u32(&b, GGUF_U16);
	u16 = 60000;
	put(&b, &u16, 2);
	put_str(&b, "test.i16");
	put_u32(&b, GGUF_I16);
	i16 = -30000;
	put(&b, &i16, 2);
	put_str(&b, "test.u32");
	put_u32(&b, GGUF_U32);
	put_u32(&b, 4000000000u);
	put_str(&b, "test.i32");
	put_u32(&b, GGUF_I32);
	i32 = -123456;
	put(&b, &i32, 4);
	put_str(&b, "test.f32");
	put_u32(&b, GGUF_F32);
	put(&b, &f32, 4);
	put_str(&b, "test.bool");
	put_u32(&b, GGUF_BOOL);
	u8 = 1;
	put(&b, &u8, 1);
	put_str(&b, "test.u64");
	put_u32(&b, GGUF_U64);
	put_u64(&b, 1ull << 40);
	put_str(&b, "test.i64");
	put_u32(&b, GGUF_I64);
	put_u64(&b, (uint64_t)-(INT64_C(1) << 40));
	put_str(&b, "test.f64");
	put_u32(&b, GGUF_F64);
	put(&b, &f64, 8);
	put_str(&b, "test.strarr");
	put_u32(&b, GGUF_ARR);
	L->arr_elem_type = b.n;
	put_u32(&b, GGUF_STR);
	put_u64(&b, 3);
	put_str(&b, "a");
	L->arr_str1_len = b.n;
	put_str(&b, "bc");
	put_str(&b, "");
	put_str(&b, "test.i32arr");
	put_u32(&b, GGUF_ARR);
	put_u32(&b, GGUF_I32);
	put_u64(&b, 3);
	for (i32 = 1; i32 <= 3; i32++) {
		int32_t v = i32 == 2 ? -2 : i32;
		put(&b, &v, 4);
	}
	put_str(&b, "test.empty");
	put_u32(&b, GGUF_ARR);
	put_u32(&b, GGUF_U8);
	put_u64(&b, 0);

	off = 0;
	for (i = 0; i < 3; i++) {
		L->t_name[i] = b.n + 8;
		put_str(&b, stens[i].name);
		L->t_ndims[i] = b.n;
		put_u32(&b, stens[i].n_dims);
		L->t_ne[i] = b.n;
		for (j = 0; j < (size_t)stens[i].n_dims; j++)
			put_u64(&b, stens[i].ne[j]);
		L->t_type[i] = b.n;
		put_u32(&b, stens[i].type);
		L->t_off[i] = b.n;
		put_u64(&b, off);
		off += stens[i].nbytes;
		off = (off + a - 1) / a * a;
	}
	pad_to(&b, a);
	L->data = b.n;
	for (i = 0; i < 3; i++) {
		for (j = 0; j < stens[i].nbytes; j++) {
			u8 = (uint8_t)(i * 64 + j);
			put(&b, &u8, 1);
		}
		/* No padding after the last tensor: every prefix is short. */
		if (i < 2)
			pad_to(&b, a);
	}
	L->size = b.n;
	return b;
}

/* Parses a private, exactly sized copy so that any over-read is caught. */
static kvx_status
open_copy(const uint8_t *p, size_t n, gguf_file **out)
{
	uint8_t *c = malloc(n ? n : 1);
	kvx_status st;
	gguf_file *f = NULL;

	memcpy(c, p, n);
	st = gguf_open_mem(c, n, &f);
	gguf_close(&f);
	free(c);
	if (out != NULL)
		*out = NULL;
	return st;
}

/* --- checks -------------------------------------------------------------- */

/* Checks everything the synthetic file holds. */
static void
check_synthetic(uint32_t version, uint32_t align)
{
	struct layout L;
	struct wb b = build(version, align, &L);
	gguf_file *f = NULL;
	const gguf_kv *kv;
	const gguf_tensor *t;
	uint32_t u32;
	float f32;
	int bv, i, good;
	size_t j;
	char s[8];
	uint64_t a = align ? align : 32;
	kvx_status st;

	st = gguf_open_mem(b.p, b.n, &f);
	if (!ok(st == KVX_OK, "v%u align %u: parses%s%s", version, align,
	    st == KVX_OK ? "" : ": ", st == KVX_OK ? "" : kvx_errmsg())) {
		free(b.p);
		return;
	}
	ok(f->version == version && f->n_kv == (align ? 16u : 15u) &&
	    f->n_tensors == 3, "v%u: version %u, n_kv %" PRIu64
	    ", n_tensors %" PRIu64, version, f->version, f->n_kv,
	    f->n_tensors);
	ok(f->alignment == a && f->data_offset == L.data &&
	    f->data_offset % a == 0, "v%u align %u: alignment %" PRIu64
	    ", data at %" PRIu64 " (writer: %zu)", version, align,
	    f->alignment, f->data_offset, L.data);
	ok(gguf_get_str(f, "general.architecture", s, sizeof s) == KVX_OK &&
	    strcmp(s, "llama") == 0, "string value");
	ok(gguf_get_str(f, "general.architecture", s, 3) == KVX_OK &&
	    strcmp(s, "ll") == 0, "string value truncated to buffer");
	kv = gguf_find(f, "test.u8");
	ok(kv && kv->type == GGUF_U8 && kv->v.u == 200 && kv->n == 1 &&
	    kv->data[0] == 200, "u8");
	kv = gguf_find(f, "test.i8");
	ok(kv && kv->type == GGUF_I8 && kv->v.i == -5, "i8");
	kv = gguf_find(f, "test.u16");
	ok(kv && kv->type == GGUF_U16 && kv->v.u == 60000, "u16");
	kv = gguf_find(f, "test.i16");
	ok(kv && kv->type == GGUF_I16 && kv->v.i == -30000, "i16");
	ok(gguf_get_u32(f, "test.u32", &u32) == KVX_OK && u32 == 4000000000u,
	    "u32 via getter");
	kv = gguf_find(f, "test.i32");
	ok(kv && kv->type == GGUF_I32 && kv->v.i == -123456, "i32");
	ok(gguf_get_u32(f, "test.i32", &u32) == KVX_ERR_FORMAT,
	    "negative i32 refused by u32 getter: %s", kvx_errmsg());
	ok(gguf_get_u32(f, "test.u64", &u32) == KVX_ERR_FORMAT,
	    "u64 2^40 out of u32 range: %s", kvx_errmsg());
	ok(gguf_get_u32(f, "test.u8", &u32) == KVX_OK && u32 == 200,
	    "u8 read by u32 getter");
	ok(gguf_get_f32(f, "test.f32", &f32) == KVX_OK && f32 == 1.5f, "f32");
	ok(gguf_get_f32(f, "test.f64", &f32) == KVX_OK && f32 == 3.25f,
	    "f64 via f32 getter");
	ok(gguf_get_f32(f, "test.u8", &f32) == KVX_ERR_FORMAT,
	    "f32 getter on u8 fails: %s", kvx_errmsg());
	ok(gguf_get_bool(f, "test.bool", &bv) == KVX_OK && bv == 1, "bool");
	kv = gguf_find(f, "test.u64");
	ok(kv && kv->type == GGUF_U64 && kv->v.u == (1ull << 40), "u64");
	kv = gguf_find(f, "test.i64");
	ok(kv && kv->type == GGUF_I64 && kv->v.i == -(INT64_C(1) << 40),
	    "i64");
	kv = gguf_find(f, "test.strarr");
	ok(kv && kv->type == GGUF_ARR && kv->arr_type == GGUF_STR &&
	    kv->n == 3 && kv->strs && gguf_str_eq(kv->strs[0], "a") &&
	    gguf_str_eq(kv->strs[1], "bc") && gguf_str_eq(kv->strs[2], ""),
	    "string array decoded");
	kv = gguf_find(f, "test.i32arr");
	good = kv && kv->type == GGUF_ARR && kv->arr_type == GGUF_I32 &&
	    kv->n == 3;
	if (good) {
		int32_t v[3];

		memcpy(v, kv->data, sizeof v);
		good = v[0] == 1 && v[1] == -2 && v[2] == 3;
	}
	ok(good, "i32 array data");
	kv = gguf_find(f, "test.empty");
	ok(kv && kv->type == GGUF_ARR && kv->n == 0, "empty array");
	ok(gguf_find(f, "test.nope") == NULL &&
	    gguf_get_u32(f, "test.nope", &u32) == KVX_ERR_FORMAT &&
	    strstr(kvx_errmsg(), "test.nope") != NULL,
	    "missing key: %s", kvx_errmsg());

	for (i = 0; i < 3; i++) {
		t = gguf_tensor_find(f, stens[i].name);
		good = t != NULL && t == &f->tensors[i] &&
		    t->type == stens[i].type &&
		    t->n_dims == stens[i].n_dims &&
		    t->ne[0] == stens[i].ne[0] && t->ne[1] == stens[i].ne[1] &&
		    t->ne[2] == 1 && t->ne[3] == 1 &&
		    t->nbytes == stens[i].nbytes && t->offset % a == 0 &&
		    (const uint8_t *)t->data == f->map + f->data_offset +
		    t->offset && ((uintptr_t)t->data -
		    (uintptr_t)f->map) % a == 0;
		for (j = 0; good && j < stens[i].nbytes; j++)
			good = ((const uint8_t *)t->data)[j] ==
			    (uint8_t)(i * 64 + j);
		ok(good, "v%u align %u: tensor '%s' %s, %" PRIu64
		    " bytes, offset %" PRIu64, version, align, stens[i].name,
		    t ? ggml_type_name(t->type) : "?", t ? t->nbytes : 0,
		    t ? t->offset : 0);
	}
	ok(gguf_tensor_find(f, "d") == NULL, "unknown tensor is NULL");
	gguf_close(&f);
	ok(f == NULL, "close clears the handle");
	free(b.p);
}

/* Every strict prefix of a valid file is refused with a format error. */
static void
check_truncation(uint32_t align)
{
	struct layout L;
	struct wb b = build(3, align, &L);
	size_t n, bad = SIZE_MAX;
	kvx_status st;

	for (n = 0; n < b.n; n++) {
		st = open_copy(b.p, n, NULL);
		if ((st != KVX_ERR_FORMAT || kvx_errmsg()[0] == '\0') &&
		    bad == SIZE_MAX)
			bad = n;
	}
	if (!ok(bad == SIZE_MAX, "align %u: all %zu truncations give "
	    "KVX_ERR_FORMAT", align, b.n))
		diag("first failure at length %zu", bad);
	open_copy(b.p, L.t_off[1] + 3, NULL);
	ok(strstr(kvx_errmsg(), "truncated at offset") != NULL &&
	    strstr(kvx_errmsg(), "tensor info 1") != NULL,
	    "message names the place: %s", kvx_errmsg());
	ok(open_copy(b.p, b.n, NULL) == KVX_OK, "the full copy parses");
	free(b.p);
}

/* Applies a patch to a fresh valid file and expects a format error. */
static void
corrupt(const char *what, size_t at, const void *bytes, size_t n,
    const char *expect)
{
	struct layout L;
	struct wb b = build(3, 64, &L);
	kvx_status st;

	memcpy(b.p + at, bytes, n);
	st = open_copy(b.p, b.n, NULL);
	ok(st == KVX_ERR_FORMAT && strstr(kvx_errmsg(), expect) != NULL,
	    "%s: %s", what, kvx_errmsg());
	free(b.p);
}

/* Each kind of corruption, one at a time. */
static void
check_corruption(void)
{
	struct layout L;
	struct wb b = build(3, 64, &L);
	uint32_t u32;
	uint64_t u64;

	free(b.p);
	corrupt("bad magic", 0, "GGUX", 4, "bad magic");
	u32 = 1;
	corrupt("version 1", L.version, &u32, 4, "version 1");
	u32 = 99;
	corrupt("version 99", L.version, &u32, 4, "version 99");
	u64 = UINT64_C(1) << 60;
	corrupt("huge n_kv", L.n_kv, &u64, 8, "n_kv");
	corrupt("huge n_tensors", L.n_tensors, &u64, 8, "n_tensors");
	u64 = UINT64_MAX;
	corrupt("n_kv 2^64-1", L.n_kv, &u64, 8, "n_kv");
	u64 = L.size;
	corrupt("key length past the end", L.key0_len, &u64, 8,
	    "past the end");
	u64 = UINT64_MAX - 4;
	corrupt("key length near 2^64", L.key0_len, &u64, 8, "past the end");
	u64 = L.size;
	corrupt("string array element past the end", L.arr_str1_len, &u64,
	    8, "string 1 of metadata");
	u32 = 13;
	corrupt("bad value type", L.u8_type, &u32, 4, "bad value type 13");
	u32 = 0xffffffffu;
	corrupt("bad value type 2^32-1", L.u8_type, &u32, 4,
	    "bad value type");
	u32 = 77;
	corrupt("bad array element type", L.arr_elem_type, &u32, 4,
	    "bad array element type");
	u32 = GGUF_ARR;
	corrupt("nested array", L.arr_elem_type, &u32, 4, "nested");
	corrupt("duplicate key", L.i8_key, "test.u8", 7,
	    "duplicate metadata key 'test.u8'");
	u32 = 48;
	corrupt("alignment 48", L.align_val, &u32, 4, "power of two");
	u32 = 0;
	corrupt("alignment 0", L.align_val, &u32, 4, "power of two");
	u32 = 5;
	corrupt("n_dims 5", L.t_ndims[1], &u32, 4, "5 dimensions");
	u64 = UINT64_C(1) << 32;
	{
		uint64_t ne[2] = { u64, u64 };

		corrupt("ne product overflow", L.t_ne[1], ne, 16, "overflow");
	}
	u64 = UINT64_MAX;
	corrupt("negative ne", L.t_ne[0], &u64, 8, "negative");
	u64 = 48;
	corrupt("row not a multiple of the block", L.t_ne[1], &u64, 8,
	    "multiple of the Q8_0 block");
	u32 = 4;
	corrupt("removed ggml type 4", L.t_type[0], &u32, 4,
	    "unknown ggml type 4");
	u32 = 1000;
	corrupt("ggml type 1000", L.t_type[0], &u32, 4,
	    "unknown ggml type 1000");
	u64 = 64 * 100;
	corrupt("tensor past the end", L.t_off[2], &u64, 8, "past the end");
	u64 = UINT64_MAX - 63;
	corrupt("tensor offset near 2^64", L.t_off[2], &u64, 8,
	    "past the end");
	u64 = 65;
	corrupt("misaligned offset", L.t_off[2], &u64, 8,
	    "not a multiple of the alignment 64");
	corrupt("duplicate tensor name", L.t_name[1], "a", 1,
	    "duplicate tensor name 'a'");
	{
		uint64_t ne[2] = { 1ull << 31, 1ull << 31 };

		/* 2^62 elements fit in int64 but not in the file. */
		corrupt("huge tensor", L.t_ne[1], ne, 16, "past the end");
	}
}

/* Random byte changes never crash the reader. */
static void
check_mutations(void)
{
	struct layout L;
	struct wb b = build(3, 0, &L);
	uint8_t *c = malloc(b.n);
	uint32_t seed = 12345;
	int i, k, nok = 0, nfmt = 0, nother = 0;
	kvx_status st;

	for (i = 0; i < 3000; i++) {
		memcpy(c, b.p, b.n);
		for (k = 0; k < 1 + i % 4; k++) {
			seed = seed * 1103515245u + 12345u;
			c[(seed >> 8) % b.n] ^= (uint8_t)(1u << (seed >> 28
			    & 7));
		}
		st = open_copy(c, b.n, NULL);
		if (st == KVX_OK)
			nok++;
		else if (st == KVX_ERR_FORMAT)
			nfmt++;
		else
			nother++;
	}
	ok(nother == 0 && nfmt > 0, "3000 mutated files: %d parse, %d format "
	    "errors, %d other", nok, nfmt, nother);
	free(c);
	free(b.p);
}

/* The file path entry point, on a synthetic file and a missing one. */
static void
check_paths(void)
{
	struct layout L;
	struct wb b = build(2, 0, &L);
	char path[] = "/tmp/test-gguf-XXXXXX";
	gguf_file *f = NULL;
	kvx_status st;
	int fd;

	st = gguf_open("/nonexistent/dir/model.gguf", &f);
	ok(st == KVX_ERR_IO && f == NULL &&
	    strstr(kvx_errmsg(), strerror(ENOENT)) != NULL,
	    "missing file: %s", kvx_errmsg());
	st = gguf_open("/tmp", &f);
	ok(st == KVX_ERR_IO, "directory: %s", kvx_errmsg());
	if ((fd = mkstemp(path)) == -1) {
		ok(0, "mkstemp: %s", strerror(errno));
		free(b.p);
		return;
	}
	if (write(fd, b.p, b.n) != (ssize_t)b.n)
		ok(0, "write: %s", strerror(errno));
	close(fd);
	st = gguf_open(path, &f);
	ok(st == KVX_OK && f->fd >= 0 && f->n_tensors == 3 &&
	    f->tensors[2].data != NULL && memcmp(f->tensors[2].data,
	    b.p + L.size - 20, 20) == 0, "mapped synthetic file");
	gguf_close(&f);
	if (truncate(path, (off_t)(L.size - 1)) == 0) {
		st = gguf_open(path, &f);
		ok(st == KVX_ERR_FORMAT && strstr(kvx_errmsg(), path) != NULL,
		    "truncated file names the path: %s", kvx_errmsg());
	}
	if (truncate(path, 0) == 0) {
		st = gguf_open(path, &f);
		ok(st == KVX_ERR_FORMAT, "empty file: %s", kvx_errmsg());
	}
	unlink(path);
	free(b.p);
}

/* Known facts about the default model. */
static void
check_model(const char *path)
{
	gguf_file *f = NULL;
	const gguf_kv *kv;
	const gguf_tensor *t;
	uint32_t u;
	float x;
	char arch[16];
	kvx_status st;
	double t0;

	t0 = kvx__now();
	st = gguf_open(path, &f);
	if (!ok(st == KVX_OK, "open model%s%s", st == KVX_OK ? "" : ": ",
	    st == KVX_OK ? "" : kvx_errmsg()))
		return;
	diag("parsed in %.1f ms", (kvx__now() - t0) * 1e3);
	ok(f->version == 3, "version %u", f->version);
	ok(f->n_tensors == 272, "%" PRIu64 " tensors", f->n_tensors);
	ok(f->n_kv == 33, "%" PRIu64 " kv", f->n_kv);
	ok(f->alignment == 32 && f->data_offset % 32 == 0,
	    "alignment %" PRIu64 ", data offset %" PRIu64, f->alignment,
	    f->data_offset);
	st = gguf_get_str(f, "general.architecture", arch, sizeof arch);
	ok(st == KVX_OK && strcmp(arch, "llama") == 0, "architecture %s",
	    arch);
	st = gguf_get_u32(f, "llama.block_count", &u);
	ok(st == KVX_OK && u == 30, "block_count %u", u);
	st = gguf_get_u32(f, "llama.embedding_length", &u);
	ok(st == KVX_OK && u == 576, "embedding_length %u", u);
	st = gguf_get_u32(f, "llama.attention.head_count", &u);
	ok(st == KVX_OK && u == 9, "head_count %u", u);
	st = gguf_get_u32(f, "llama.attention.head_count_kv", &u);
	ok(st == KVX_OK && u == 3, "head_count_kv %u", u);
	st = gguf_get_f32(f, "llama.rope.freq_base", &x);
	ok(st == KVX_OK && x == 100000.0f, "rope.freq_base %g", x);
	kv = gguf_find(f, "tokenizer.ggml.tokens");
	ok(kv && kv->type == GGUF_ARR && kv->arr_type == GGUF_STR &&
	    kv->n == 49152 && kv->strs != NULL &&
	    gguf_str_eq(kv->strs[0], "<|endoftext|>"),
	    "tokens: array of %" PRIu64 " strings", kv ? kv->n : 0);
	kv = gguf_find(f, "tokenizer.ggml.merges");
	ok(kv && kv->arr_type == GGUF_STR && kv->n == 48900,
	    "merges: %" PRIu64 " strings", kv ? kv->n : 0);
	t = gguf_tensor_find(f, "token_embd.weight");
	ok(t && t->type == GGML_Q8_0 && t->n_dims == 2 && t->ne[0] == 576 &&
	    t->ne[1] == 49152 && t->nbytes == 49152ull * 18 * 34,
	    "token_embd.weight %s {%" PRIu64 ", %" PRIu64 "}",
	    t ? ggml_type_name(t->type) : "?", t ? t->ne[0] : 0,
	    t ? t->ne[1] : 0);
	t = gguf_tensor_find(f, "blk.0.attn_k.weight");
	ok(t && t->type == GGML_Q4_1 && t->ne[0] == 576 && t->ne[1] == 192 &&
	    t->data == f->map + f->data_offset + t->offset,
	    "blk.0.attn_k.weight %s {%" PRIu64 ", %" PRIu64 "}",
	    t ? ggml_type_name(t->type) : "?", t ? t->ne[0] : 0,
	    t ? t->ne[1] : 0);
	t = gguf_tensor_find(f, "output_norm.weight");
	ok(t && t->type == GGML_F32 && t->n_dims == 1 && t->ne[0] == 576,
	    "output_norm.weight F32 {576}");
	gguf_close(&f);
}

/*
 * The inode of the mapping holding p, from /proc/self/maps: 0 for
 * anonymous memory, -1 when not found.  With hp, the mapping's
 * AnonHugePages in kB from /proc/self/smaps.
 */
static long
map_inode(const void *p, long *hp)
{
	char line[512];
	unsigned long lo, hi, ino;
	uintptr_t a = (uintptr_t)p;
	long r = -1;
	FILE *fp;
	int in = 0;

	if (hp != NULL)
		*hp = -1;
	if ((fp = fopen("/proc/self/smaps", "r")) == NULL)
		return -1;
	while (fgets(line, sizeof line, fp) != NULL) {
		if (sscanf(line, "%lx-%lx %*s %*s %*s %lu", &lo, &hi,
		    &ino) == 3 && strchr(line, '-') < strchr(line, ' ')) {
			in = a >= lo && a < hi;
			if (in)
				r = (long)ino;
		} else if (in && hp != NULL &&
		    sscanf(line, "AnonHugePages: %ld", hp) == 1)
			in = 0;
	}
	fclose(fp);
	return r;
}

/* 1 when every tensor of f holds the bytes at its offset in ref. */
static int
same_tensors(const gguf_file *f, const uint8_t *ref, size_t n)
{
	const gguf_tensor *t;
	uint64_t i;

	for (i = 0; i < f->n_tensors; i++) {
		t = &f->tensors[i];
		if (f->data_offset + t->offset + t->nbytes > n ||
		    t->data != f->map + f->data_offset + t->offset ||
		    memcmp(t->data, ref + f->data_offset + t->offset,
		    t->nbytes) != 0)
			return 0;
	}
	return 1;
}

/*
 * gguf_load_anon on the file at path, whose bytes are ref: the same
 * pointers read the same bytes after the move, the data section is in
 * anonymous memory (or stays in the file where the move falls back), the
 * metadata still reads, a second call is a no-op.
 */
static void
check_anon_file(const char *what, const char *path, const uint8_t *ref,
    size_t n, int fail)
{
	gguf_file *f = NULL;
	const gguf_tensor *big = NULL;
	uint64_t i;
	long ino, hp;
	double t0;
	int r, want = tap_thp_on() && !fail;
	char arch[16];

	if (gguf_open(path, &f) != KVX_OK) {
		ok(0, "%s: open: %s", what, kvx_errmsg());
		return;
	}
	for (i = 0; i < f->n_tensors; i++)
		if (big == NULL || f->tensors[i].nbytes > big->nbytes)
			big = &f->tensors[i];
	ok(same_tensors(f, ref, n), "%s: mapped tensors equal the file's "
	    "bytes", what);
	ok(((uintptr_t)f->map & ((2u << 20) - 1)) == 0,
	    "%s: mapped at a 2 MiB boundary", what);
	gguf__fail_anon = fail;
	t0 = kvx__now();
	r = gguf_load_anon(f);
	gguf__fail_anon = 0;
	diag("%s: gguf_load_anon %d in %.1f ms", what, r,
	    (kvx__now() - t0) * 1e3);
	ok(r == want, "%s: gguf_load_anon returns %d (huge pages %s%s)", what,
	    r, tap_thp_on() ? "on" : "off", fail ? ", allocation failing" : "");
	ok(same_tensors(f, ref, n), "%s: every tensor (%" PRIu64 ") at the "
	    "same address reads the file's bytes after the move", what,
	    f->n_tensors);
	ino = map_inode(big->data, &hp);
	ok(r ? ino == 0 : ino > 0, "%s: largest tensor in %s memory (inode "
	    "%ld)", what, r ? "anonymous" : "the file's", ino);
	if (r)
		diag("%s: its mapping holds %ld kB of AnonHugePages", what,
		    hp);
	ok(gguf_get_str(f, "general.architecture", arch, sizeof arch) ==
	    KVX_OK || gguf_find(f, "test.u8") != NULL,
	    "%s: metadata still reads", what);
	r = gguf_load_anon(f);
	ok(r == tap_thp_on() && same_tensors(f, ref, n), "%s: a second call "
	    "returns %d, the bytes unchanged", what, r);
	gguf_close(&f);
}

/* A reader summing a tensor's bytes over and over until told to stop. */
struct sum_reader {
	const uint8_t	*p;
	size_t		 n;
	uint64_t	 want;		/* the sum of the file's bytes */
	int		 stop;		/* set by the main thread */
	long		 passes, bad;	/* passes read with atomics */
};

/* A checksum of n bytes: the sum of their 8-byte words plus the tail. */
static uint64_t
byte_sum(const uint8_t *p, size_t n)
{
	uint64_t s = 0, w;
	size_t i;

	for (i = 0; i + 8 <= n; i += 8) {
		memcpy(&w, p + i, 8);
		s += w ^ (w >> 29);
	}
	for (; i < n; i++)
		s += p[i];
	return s;
}

static void *
sum_loop(void *arg)
{
	struct sum_reader *r = arg;

	do {
		if (byte_sum(r->p, r->n) != r->want)
			r->bad++;
		__atomic_add_fetch(&r->passes, 1, __ATOMIC_RELEASE);
	} while (!__atomic_load_n(&r->stop, __ATOMIC_ACQUIRE) ||
	    r->passes < 2);
	return NULL;
}

/*
 * Another thread reads the largest tensor of the model the whole time
 * gguf_load_anon moves it: every pass sees the file's bytes.
 */
static void
check_anon_concurrent(const char *path, const uint8_t *ref, size_t n)
{
	struct sum_reader r = { 0 };
	gguf_file *f = NULL;
	const gguf_tensor *big = NULL;
	pthread_t th;
	uint64_t i;
	long during;
	int moved;

	if (gguf_open(path, &f) != KVX_OK) {
		ok(0, "concurrent: open: %s", kvx_errmsg());
		return;
	}
	for (i = 0; i < f->n_tensors; i++)
		if (big == NULL || f->tensors[i].nbytes > big->nbytes)
			big = &f->tensors[i];
	r.p = big->data;
	r.n = big->nbytes;
	r.want = byte_sum(ref + f->data_offset + big->offset, big->nbytes);
	if (pthread_create(&th, NULL, sum_loop, &r) != 0) {
		ok(0, "concurrent: pthread_create");
		gguf_close(&f);
		return;
	}
	/* the reader is under way before the move starts */
	while (__atomic_load_n(&r.passes, __ATOMIC_ACQUIRE) < 1)
		;
	during = -__atomic_load_n(&r.passes, __ATOMIC_ACQUIRE);
	moved = gguf_load_anon(f);
	during += __atomic_load_n(&r.passes, __ATOMIC_ACQUIRE);
	__atomic_store_n(&r.stop, 1, __ATOMIC_RELEASE);
	pthread_join(th, NULL);
	ok(r.bad == 0 && moved == tap_thp_on(), "concurrent: %ld passes over "
	    "'%.*s' (%" PRIu64 " bytes), %ld of them ended while it moved "
	    "(%d): %ld wrong", r.passes, (int)big->name.len, big->name.p,
	    big->nbytes, during, moved, r.bad);
	gguf_close(&f);
}

/* gguf_load_anon on a synthetic file, a buffer and the model. */
static void
check_anon(const char *model)
{
	struct layout L;
	struct wb b = build(3, 0, &L);
	char tmp[] = "/tmp/kvx-test-gguf-XXXXXX";
	gguf_file *f = NULL;
	uint8_t *ref;
	size_t n;
	int fd;

	if ((fd = mkstemp(tmp)) == -1 || write(fd, b.p, b.n) != (ssize_t)b.n) {
		ok(0, "write %s: %s", tmp, strerror(errno));
		return;
	}
	close(fd);
	check_anon_file("synthetic", tmp, b.p, b.n, 0);
	check_anon_file("synthetic", tmp, b.p, b.n, 1);
	unlink(tmp);
	ok(gguf_open_mem(b.p, b.n, &f) == KVX_OK && gguf_load_anon(f) == 0 &&
	    same_tensors(f, b.p, b.n), "a buffer's tensors stay in the buffer");
	gguf_close(&f);
	free(b.p);
	if (model == NULL)
		return;
	if (kvx__read_file(model, 0, (char **)&ref, &n) != KVX_OK) {
		ok(0, "read %s: %s", model, kvx_errmsg());
		return;
	}
	check_anon_file("model", model, ref, n, 0);
	check_anon_file("model", model, ref, n, 1);
	check_anon_concurrent(model, ref, n);
	free(ref);
}

/* Writes the synthetic files as fuzz seeds into dir. */
static int
write_seeds(const char *dir)
{
	static const uint32_t cfg[][2] = { { 3, 0 }, { 2, 0 }, { 3, 64 } };
	struct layout L;
	struct wb b;
	char path[4096];
	FILE *fp;
	size_t i;

	for (i = 0; i < sizeof cfg / sizeof cfg[0]; i++) {
		b = build(cfg[i][0], cfg[i][1], &L);
		snprintf(path, sizeof path, "%s/v%u-align%u.gguf", dir,
		    cfg[i][0], cfg[i][1]);
		if ((fp = fopen(path, "wb")) == NULL ||
		    fwrite(b.p, 1, b.n, fp) != b.n || fclose(fp) != 0) {
			fprintf(stderr, "%s: %s\n", path, strerror(errno));
			return 1;
		}
		free(b.p);
	}
	return 0;
}

int
main(int argc, char **argv)
{
	const char *model;

	if (argc == 3 && strcmp(argv[1], "--write-seeds") == 0)
		return write_seeds(argv[2]);
	check_synthetic(3, 0);
	check_synthetic(2, 0);
	check_synthetic(3, 64);
	check_synthetic(3, 1);
	check_truncation(0);
	check_truncation(64);
	check_corruption();
	check_mutations();
	check_paths();
	check_anon(tap_model_path());
	if ((model = tap_model_path()) != NULL)
		check_model(model);
	else
		diag("KVX_MODEL not set or missing: model checks skipped");
	return tap_done();
}

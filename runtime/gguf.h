/*
 * gguf.h - GGUF (v2, v3) reader: mmap, metadata, tensor infos, and the
 * tensor data optionally on huge pages.
 * SPDX-License-Identifier: MIT
 *
 * Every offset and size read from the file is bounds-checked against the
 * mapping; a truncated or corrupt file yields KVX_ERR_FORMAT with a message
 * naming what is wrong, never a read past the end.
 */
#ifndef KVX_GGUF_H
#define KVX_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "kvx.h"

enum gguf_vtype {
	GGUF_U8 = 0, GGUF_I8, GGUF_U16, GGUF_I16, GGUF_U32, GGUF_I32,
	GGUF_F32, GGUF_BOOL, GGUF_STR, GGUF_ARR, GGUF_U64, GGUF_I64, GGUF_F64,
	GGUF_NVTYPE
};

/* ggml tensor types (numbering as in the GGUF spec). */
enum ggml_type {
	GGML_F32 = 0, GGML_F16 = 1, GGML_Q4_0 = 2, GGML_Q4_1 = 3,
	GGML_Q5_0 = 6, GGML_Q5_1 = 7, GGML_Q8_0 = 8, GGML_Q8_1 = 9,
	GGML_Q2_K = 10, GGML_Q3_K = 11, GGML_Q4_K = 12, GGML_Q5_K = 13,
	GGML_Q6_K = 14, GGML_Q8_K = 15, GGML_BF16 = 30
};

typedef struct gguf_str {
	const char	*p;	/* points into the mapping; not NUL-terminated */
	uint64_t	 len;
} gguf_str;

typedef struct gguf_kv {
	gguf_str	 key;
	int		 type;		/* enum gguf_vtype */
	int		 arr_type;	/* element type when type == GGUF_ARR */
	uint64_t	 n;		/* array length (1 for scalars) */
	const uint8_t	*data;		/* scalar value or first element */
	union {
		uint64_t u; int64_t i; double f; gguf_str s;
	} v;				/* scalar value, decoded */
	const gguf_str	*strs;		/* decoded string array, or NULL */
} gguf_kv;

typedef struct gguf_tensor {
	gguf_str	 name;
	int		 n_dims;
	uint64_t	 ne[4];		/* ne[0] is the contiguous dimension */
	int		 type;		/* enum ggml_type */
	uint64_t	 offset;	/* relative to the data section */
	uint64_t	 nbytes;
	const void	*data;		/* inside the mapping */
} gguf_tensor;

typedef struct gguf_file {
	int		 fd;
	const uint8_t	*map;
	size_t		 size;
	uint32_t	 version;
	uint64_t	 alignment;
	uint64_t	 n_kv;
	gguf_kv		*kv;
	uint64_t	 n_tensors;
	gguf_tensor	*tensors;
	uint64_t	 data_offset;
} gguf_file;

/* Open from a path (mmap) or parse a caller-owned buffer (map == buf,
 * fd == -1, not unmapped on close). */
kvx_status	 gguf_open(const char *path, gguf_file **out);
kvx_status	 gguf_open_mem(const void *buf, size_t size, gguf_file **out);
void		 gguf_close(gguf_file **);
/*
 * Moves the tensor data of a file opened by gguf_open from the file's pages
 * into private anonymous memory advised for transparent huge pages, at the
 * same addresses (pointers into the file stay valid), read with pread.
 * 1 when the data is there (now or from an earlier call), 0 when it stays
 * mapped: a buffer from gguf_open_mem, huge pages turned off ("never" in
 * /sys/kernel/mm/transparent_hugepage/enabled), or a failed allocation,
 * read or remapping.  Never an error: the bytes are the same either way.
 * Not thread-safe against itself: the caller serialises calls on a file.
 */
int		 gguf_load_anon(gguf_file *);
/* Test hook: nonzero makes gguf_load_anon's allocation fail. */
extern int	 gguf__fail_anon;

const gguf_kv	*gguf_find(const gguf_file *, const char *key);
const gguf_tensor *gguf_tensor_find(const gguf_file *, const char *name);
/* Typed getters; return KVX_ERR_FORMAT (with message) when absent or of
 * another type.  Integer getters accept any integer type in range. */
kvx_status	 gguf_get_u32(const gguf_file *, const char *key, uint32_t *);
kvx_status	 gguf_get_f32(const gguf_file *, const char *key, float *);
kvx_status	 gguf_get_bool(const gguf_file *, const char *key, int *);
/* Copies into buf, NUL-terminated, truncating to size. */
kvx_status	 gguf_get_str(const gguf_file *, const char *key, char *buf,
		     size_t size);
int		 gguf_str_eq(gguf_str, const char *);

/* Bytes per block and elements per block of a ggml type; 0 if unknown. */
size_t		 ggml_type_block_bytes(int type);
int		 ggml_type_block_elems(int type);
const char	*ggml_type_name(int type);

#endif

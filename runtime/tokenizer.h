/*
 * tokenizer.h - byte-level BPE tokenizer built from GGUF metadata
 * (tokenizer.ggml.*), with the model's pre-tokenizer and special tokens.
 * SPDX-License-Identifier: MIT
 */
#ifndef KVX_TOKENIZER_H
#define KVX_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "kvx.h"
#include "gguf.h"

typedef struct kvx_tokenizer kvx_tokenizer;

/* Build from tokenizer.ggml.{model,pre,tokens,token_type,merges,...}.
 * Supports model "gpt2" with the pre-tokenizers it names in its message. */
kvx_status	 tok_new(const gguf_file *, kvx_tokenizer **out);
void		 tok_free(kvx_tokenizer **);

int		 tok_n_vocab(const kvx_tokenizer *);
int32_t		 tok_bos(const kvx_tokenizer *);
int		 tok_add_bos(const kvx_tokenizer *);
int32_t		 tok_eos(const kvx_tokenizer *);
int		 tok_is_eog(const kvx_tokenizer *, int32_t);
/* Same contract as kvx_tokenize. */
kvx_status	 tok_encode(const kvx_tokenizer *, const char *text, size_t len,
		     int parse_special, int32_t *ids, int cap, int *n);
/* Same contract as kvx_token_piece. */
kvx_status	 tok_piece(const kvx_tokenizer *, int32_t id, char *buf,
		     size_t size, size_t *len);
/* Same contract as kvx_chat_format; template from tokenizer.chat_template
 * (ChatML-style and Gemma templates are recognised, and Gemma's turns
 * without a template in a vocabulary that has their tokens).  system may
 * be NULL for the template's default. */
kvx_status	 tok_chat_format(const kvx_tokenizer *, const char *system,
		     const char *user, char **out);

#endif

/*
 * nogpu.c - the GPU back end of a libkvx built without CUDA: none.
 * SPDX-License-Identifier: MIT
 */
#include "config.h"

#include <stddef.h>

#include "backend.h"

const ctx_ops *
gpu_ops_get(void)
{
	return NULL;
}

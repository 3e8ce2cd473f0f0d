/*
 * svg.h - kvx-plan's heatmap of a plan.
 * SPDX-License-Identifier: GPL-3.0-or-later
 */
#ifndef KVX_SVG_H
#define KVX_SVG_H

#include "kvx.h"

/* Write the plan's budgets as an SVG heatmap (layer x KV head, or one
 * column for a hybrid plan); KVX_ERR_IO if path exists and !overwrite. */
kvx_status	 svg_write(const kvx_plan *, const char *title,
		     const char *path, int overwrite);

#endif

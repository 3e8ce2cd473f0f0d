/*
 * worklist.h - the work lists of the split-K decode attention, built on
 * the host: which rows of which segment each block of the partial kernel
 * (kvx_cuda_attn_partial) reads.  Plain C, in every build; the kernels
 * take struct wl_item as it is laid out here.
 * SPDX-License-Identifier: MIT
 */
#ifndef KVX_WORKLIST_H
#define KVX_WORKLIST_H

#ifdef __cplusplus
extern "C" {
#endif

/* One work item: rows [r0, r1) of segment seg (pad keeps it 16 bytes). */
struct wl_item {
	int	seg, r0, r1, pad;
};

/* Rows per resident block from which balanced lists beat chunked ones
 * (H200, both forms of the partial kernel). */
#define WL_BALANCE_ROWS 768
/* Mean rows a segment below which chunked lists stay ahead however
 * many rows there are (H200, 8 K/V heads: chunked ahead at the skewed
 * 4K shapes, averaging 1,300 rows; balanced at 16 and 64 x 4K). */
#define WL_BALANCE_SEG 4096

/* One item a segment (no split, no merge) from segments a quarter of
 * the resident blocks of the DEEP variant, of WL_BALANCE_SEG rows or
 * more on average, the longest at most 9/8 of the mean (H200, d = 128,
 * on the DEEP variant: 16 x 4K equal lengths 95-99% of copy bandwidth
 * against 90-93% split, 64 x 4K 101-106% against 100-104%; on the WIDE
 * variant 88-90% and 93-97%.  Shorter segments lose: SmolLM2's decode
 * at 211 x 3 segments of about 820 rows, 2.44 ms a step against
 * 2.34-2.36 split). */
#define WL_ONE_DIV 4
#define WL_ONE_PAD_NUM 9
#define WL_ONE_PAD_DEN 8

/* 1 when one item a segment (wl_chunked with chunk = maxlen, on the
 * DEEP variant) is the list for nseg segments of rows rows in all, the
 * longest maxlen, with resident blocks of the DEEP variant: nseg >=
 * resident / WL_ONE_DIV, rows >= nseg WL_BALANCE_SEG and nseg maxlen
 * <= rows WL_ONE_PAD_NUM / WL_ONE_PAD_DEN.  Else the variant is
 * kvx_cuda_attn_variant's and the list wl_plan's on that variant's
 * resident blocks. */
int	 wl_one(long long rows, int nseg, int maxlen, int resident);

/* Rows per work item that fill resident blocks of the partial kernel
 * (kvx_cuda_attn_blocks; 396 when < 1) in whole waves for total_rows
 * rows. */
int	 wl_chunk(long long total_rows, int resident);
/*
 * Chunked form, one item a block: cuts each segment of len[s] rows into
 * round(len[s] / chunk) (at least one) items of equal size, in segment
 * order; a segment of no rows has none.  first[s] .. first[s + 1] are
 * segment s's items.  Returns the item count (at most cap, which
 * len / chunk + nseg + 1 always satisfies; -1 when too small).
 */
int	 wl_chunked(const int *len, int nseg, int chunk,
	    struct wl_item *items, int cap, int *first);
/*
 * Balanced form: cuts the rows of all segments, laid end to end, into
 * nblk equal ranges, one per block, each cut at segment borders into
 * items; block b's items are bfirst[b] .. bfirst[b + 1] - 1, and first[]
 * is as above.  cap = nblk + nseg always suffices.  Returns the item
 * count or -1.
 */
int	 wl_balanced(const int *len, int nseg, int nblk,
	    struct wl_item *items, int cap, int *first, int *bfirst);
/*
 * The split list the library prefers for these lengths on a device
 * with resident blocks of the partial kernel at once
 * (kvx_cuda_attn_blocks), when wl_one does not take one item a segment:
 * balanced over the resident blocks when the rows give each at least
 * WL_BALANCE_ROWS and the segments WL_BALANCE_SEG on average, else
 * chunked (wl_chunk(rows, resident)).  Sets
 * *nblocks (the grid) and *balanced (1: pass bfirst to the kernels, 0:
 * one item a block, pass NULL).  cap = max(resident
 * + nseg, rows / wl_chunk(rows, resident) + nseg + 1) suffices.  Returns
 * the item count or -1.
 */
int	 wl_plan(const int *len, int nseg, int resident,
	    struct wl_item *items, int cap, int *first, int *bfirst,
	    int *nblocks, int *balanced);
/*
 * 1 when each of the nseg segments of a list has exactly one item
 * (first[] as above): the partial kernel, given the output, then
 * writes every segment's result and the combine has nothing to do.
 */
int	 wl_solo(const int *first, int nseg);
/* The most items any of the nseg segments has (first[] as above; 0 for
 * none): kvx_cuda_attn_combine's hint. */
int	 wl_most(const int *first, int nseg);

#ifdef __cplusplus
}
#endif

#endif

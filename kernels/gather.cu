/*
 * gather.cu - compaction of the kept K/V rows into their segments.
 * SPDX-License-Identifier: MIT
 */
#include "device.cuh"

/* One warp a row; 16-byte copies when rows allow, else 2- or 4-byte ones. */
template <typename V>
static __global__ void
gather_k(const char *ksrc, const char *vsrc, char *kdst, char *vdst, int rowb,
    int lds, int ldd, int esz, const long long *src_off,
    const long long *dst_off, const int *idx, const long long *ioff,
    const int *count)
{
	int s = blockIdx.y, lane = threadIdx.x & 31;
	int i = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), e;
	size_t so, dof;

	if (i >= count[s])
		return;
	so = ((size_t)src_off[s] + (size_t)idx[ioff[s] + i] * lds) * esz;
	dof = ((size_t)dst_off[s] + (size_t)i * ldd) * esz;
	for (e = lane; e < rowb / (int)sizeof(V); e += 32) {
		((V *)(kdst + dof))[e] = ((const V *)(ksrc + so))[e];
		((V *)(vdst + dof))[e] = ((const V *)(vsrc + so))[e];
	}
}

/* Launches gather_k with the widest copies alignment allows. */
extern "C" int
kvx_cuda_gather(const void *ksrc, const void *vsrc, void *kdst, void *vdst,
    int dtype, int d, int ld_src, int ld_dst, const long long *src_off,
    const long long *dst_off, const int *idx, const long long *ioff,
    const int *count, int nseg, int max_count, cudaStream_t stream)
{
	int esz = dtype == KVX_CUDA_F32 ? 4 : 2, rowb = d * esz;
	uintptr_t al = (uintptr_t)ksrc | (uintptr_t)vsrc | (uintptr_t)kdst |
	    (uintptr_t)vdst;
	dim3 grid((max_count + 7) / 8, nseg);

	if (nseg <= 0 || max_count <= 0)
		return 0;
	if (dtype < KVX_CUDA_F32 || dtype > KVX_CUDA_BF16 || d < 1 ||
	    nseg > 65535)
		return KVX_CUDA_EINVAL;
	if (al % 16 == 0 && rowb % 16 == 0 && (ld_src * esz) % 16 == 0 &&
	    (ld_dst * esz) % 16 == 0)
		gather_k<uint4><<<grid, 256, 0, stream>>>((const char *)ksrc,
		    (const char *)vsrc, (char *)kdst, (char *)vdst, rowb, ld_src,
		    ld_dst, esz, src_off, dst_off, idx, ioff, count);
	else if (esz == 4)
		gather_k<float><<<grid, 256, 0, stream>>>((const char *)ksrc,
		    (const char *)vsrc, (char *)kdst, (char *)vdst, rowb, ld_src,
		    ld_dst, esz, src_off, dst_off, idx, ioff, count);
	else
		gather_k<unsigned short><<<grid, 256, 0, stream>>>(
		    (const char *)ksrc, (const char *)vsrc, (char *)kdst,
		    (char *)vdst, rowb, ld_src, ld_dst, esz, src_off, dst_off,
		    idx, ioff, count);
	return launched();
}

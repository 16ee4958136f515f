// CUDA kernel of the bidirectional nearest-neighbour search.
//
// One thread per query point; the target points are staged through shared memory in tiles of
// kTile points (structure of arrays, so the inner loop reads broadcast shared memory). The grid is
// (query blocks, target splits, batch): when the queries alone cannot fill the GPU (batch 1, a few
// thousand points), the target range is split across `splits` blocks that each write a partial
// minimum, and a second small kernel reduces them. Both directions run on the current stream under
// a device guard. float and double. Ties resolve to the smallest index.
// Only light headers: ATen/cuda/CUDAContext.h would pull cuBLAS/cuSPARSE headers that a bare
// CUDA toolkit may lack.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <vector>

namespace facerecon {
namespace {

constexpr int kThreads = 256;  // queries per block
constexpr int kTile = 256;     // targets staged in shared memory per step

// +infinity on the device (std::numeric_limits is host-only without --expt-relaxed-constexpr).
template <typename T>
__device__ __forceinline__ T device_inf() {
  return static_cast<T>(INFINITY);
}

template <typename T>
__device__ __forceinline__ T sqdist(T ax, T ay, T az, T bx, T by, T bz) {
  const T dx = ax - bx;
  const T dy = ay - by;
  const T dz = az - bz;
  return dx * dx + dy * dy + dz * dz;
}

// Partial nearest neighbour of every query among the targets [split * chunk, (split + 1) * chunk).
// Writes pdist/pidx of shape (B, splits, nq); a padded query (beyond its length) gets 0 / -1.
template <typename T>
__global__ void nn_partial_kernel(const T* __restrict__ queries, const T* __restrict__ targets,
                                  const int64_t* __restrict__ qlen, const int64_t* __restrict__ tlen, int64_t nq,
                                  int64_t nt, int64_t chunk, T* __restrict__ pdist, int64_t* __restrict__ pidx) {
  __shared__ T sx[kTile];
  __shared__ T sy[kTile];
  __shared__ T sz[kTile];
  const int64_t b = blockIdx.z;
  const int64_t split = blockIdx.y;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t qn = qlen[b];
  const int64_t tn = tlen[b];
  const int64_t t_begin = split * chunk;
  const int64_t t_end = min(tn, t_begin + chunk);
  const bool active = i < qn;
  T px = 0, py = 0, pz = 0;
  if (active) {
    const T* p = queries + (b * nq + i) * 3;
    px = p[0];
    py = p[1];
    pz = p[2];
  }
  T best = device_inf<T>();
  int64_t arg = -1;
  for (int64_t t0 = t_begin; t0 < t_end; t0 += kTile) {
    const int cnt = static_cast<int>(min(static_cast<int64_t>(kTile), t_end - t0));
    __syncthreads();
    for (int k = threadIdx.x; k < cnt; k += kThreads) {
      const T* p = targets + (b * nt + t0 + k) * 3;
      sx[k] = p[0];
      sy[k] = p[1];
      sz[k] = p[2];
    }
    __syncthreads();
    if (active) {
      T tile_best = device_inf<T>();
      int tile_arg = -1;
#pragma unroll 8
      for (int k = 0; k < cnt; ++k) {
        const T d = sqdist(px, py, pz, sx[k], sy[k], sz[k]);
        if (d < tile_best) {
          tile_best = d;
          tile_arg = k;
        }
      }
      if (tile_best < best) {
        best = tile_best;
        arg = t0 + tile_arg;
      }
    }
  }
  if (i < nq) {
    const int64_t o = (b * gridDim.y + split) * nq + i;
    pdist[o] = active ? best : T(0);
    pidx[o] = active ? arg : int64_t(-1);
  }
}

// Minimum over the splits (first split wins ties, i.e. the smallest index).
template <typename T>
__global__ void reduce_splits_kernel(const T* __restrict__ pdist, const int64_t* __restrict__ pidx,
                                     const int64_t* __restrict__ qlen, int64_t batch, int64_t nq, int64_t splits,
                                     T* __restrict__ dist, int64_t* __restrict__ idx) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= batch * nq) return;
  const int64_t b = k / nq;
  const int64_t i = k % nq;
  if (i >= qlen[b]) {
    dist[k] = T(0);
    idx[k] = -1;
    return;
  }
  T best = device_inf<T>();
  int64_t arg = -1;
  for (int64_t s = 0; s < splits; ++s) {
    const int64_t o = (b * splits + s) * nq + i;
    if (pidx[o] >= 0 && pdist[o] < best) {
      best = pdist[o];
      arg = pidx[o];
    }
  }
  dist[k] = best;
  idx[k] = arg;
}

// Nearest target for every query: (dist (B, nq), idx (B, nq) int64).
std::vector<at::Tensor> nearest_one_way(const at::Tensor& queries, const at::Tensor& targets, const at::Tensor& qlen,
                                        const at::Tensor& tlen) {
  const int64_t batch = queries.size(0), nq = queries.size(1), nt = targets.size(1);
  at::Tensor dist = at::empty({batch, nq}, queries.options());
  at::Tensor idx = at::empty({batch, nq}, queries.options().dtype(at::kLong));
  if (batch == 0 || nq == 0) return {dist, idx};
  const int64_t q_blocks = (nq + kThreads - 1) / kThreads;
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, queries.get_device()));
  const int64_t wanted = 4 * static_cast<int64_t>(sms);  // blocks that keep every SM busy
  const int64_t max_splits = std::max<int64_t>(1, (nt + kTile - 1) / kTile);
  const int64_t splits =
      std::min<int64_t>({max_splits, std::max<int64_t>(1, (wanted + q_blocks * batch - 1) / (q_blocks * batch)), 65535});
  const int64_t chunk = ((nt + splits - 1) / splits + kTile - 1) / kTile * kTile;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(queries.get_device()).stream();
  const dim3 grid(static_cast<unsigned>(q_blocks), static_cast<unsigned>(splits), static_cast<unsigned>(batch));
  AT_DISPATCH_FLOATING_TYPES(queries.scalar_type(), "facerecon_knn_cuda", [&] {
    if (splits == 1) {
      nn_partial_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
          queries.data_ptr<scalar_t>(), targets.data_ptr<scalar_t>(), qlen.data_ptr<int64_t>(),
          tlen.data_ptr<int64_t>(), nq, nt, chunk, dist.data_ptr<scalar_t>(), idx.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    } else {
      at::Tensor pdist = at::empty({batch, splits, nq}, queries.options());
      at::Tensor pidx = at::empty({batch, splits, nq}, queries.options().dtype(at::kLong));
      nn_partial_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
          queries.data_ptr<scalar_t>(), targets.data_ptr<scalar_t>(), qlen.data_ptr<int64_t>(),
          tlen.data_ptr<int64_t>(), nq, nt, chunk, pdist.data_ptr<scalar_t>(), pidx.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const int64_t total = batch * nq;
      const int reduce_threads = 256;
      const unsigned reduce_blocks = static_cast<unsigned>((total + reduce_threads - 1) / reduce_threads);
      reduce_splits_kernel<scalar_t><<<reduce_blocks, reduce_threads, 0, stream>>>(
          pdist.data_ptr<scalar_t>(), pidx.data_ptr<int64_t>(), qlen.data_ptr<int64_t>(), batch, nq, splits,
          dist.data_ptr<scalar_t>(), idx.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {dist, idx};
}

}  // namespace

// Both directions; inputs validated by the caller (check_knn_inputs and the Python front).
std::vector<at::Tensor> knn_bidirectional_cuda(const at::Tensor& x_in, const at::Tensor& y_in,
                                               const at::Tensor& x_lengths, const at::Tensor& y_lengths) {
  TORCH_CHECK(x_in.is_cuda() && y_in.is_cuda() && x_lengths.is_cuda() && y_lengths.is_cuda(),
              "knn_bidirectional_cuda needs CUDA tensors on one device");
  TORCH_CHECK(x_in.device() == y_in.device(), "x and y must be on the same device");
  TORCH_CHECK(x_in.scalar_type() == y_in.scalar_type(), "x and y must have the same dtype");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor y = y_in.contiguous();
  const at::Tensor xl = x_lengths.to(at::kLong).contiguous();
  const at::Tensor yl = y_lengths.to(at::kLong).contiguous();
  std::vector<at::Tensor> xy = nearest_one_way(x, y, xl, yl);
  std::vector<at::Tensor> yx = nearest_one_way(y, x, yl, xl);
  return {xy[0], xy[1], yx[0], yx[1]};
}

}  // namespace facerecon

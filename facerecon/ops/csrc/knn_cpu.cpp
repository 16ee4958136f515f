// CPU entry point: validates, converts each batch element to structure-of-arrays, and runs the
// tiled bidirectional kernel of knn_cpu_kernel.h with OpenMP.
#include "knn.h"

#include <algorithm>

#include "knn_cpu_kernel.h"

namespace facerecon {

void check_knn_inputs(const at::Tensor& x, const at::Tensor& y, const at::Tensor& x_lengths,
                      const at::Tensor& y_lengths) {
  TORCH_CHECK(x.dim() == 3 && x.size(2) == 3, "x must have shape (B, N, 3), got ", x.sizes());
  TORCH_CHECK(y.dim() == 3 && y.size(2) == 3, "y must have shape (B, M, 3), got ", y.sizes());
  TORCH_CHECK(x.size(0) == y.size(0), "x and y must have the same batch size, got ", x.size(0), " and ", y.size(0));
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), "x and y must have the same dtype");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "x and y must be float32 or float64");
  TORCH_CHECK(x.device() == y.device() && x.device() == x_lengths.device() && x.device() == y_lengths.device(),
              "x, y and the lengths must be on the same device");
  TORCH_CHECK(x_lengths.scalar_type() == at::kLong && y_lengths.scalar_type() == at::kLong,
              "lengths must be int64");
  TORCH_CHECK(x_lengths.dim() == 1 && x_lengths.size(0) == x.size(0), "x_lengths must have shape (B,)");
  TORCH_CHECK(y_lengths.dim() == 1 && y_lengths.size(0) == y.size(0), "y_lengths must have shape (B,)");
  TORCH_CHECK(x.size(1) < (int64_t(1) << 31) && y.size(1) < (int64_t(1) << 31), "clouds must have < 2^31 points");
}

namespace {

// Copies the first n points of an (N, 3) row-major array into 3 contiguous coordinate arrays.
template <typename T>
knn::SoACloud<T> to_soa(const T* aos, int64_t n, std::vector<T>& buffer) {
  buffer.resize(static_cast<size_t>(3 * n));
  T* px = buffer.data();
  T* py = px + n;
  T* pz = py + n;
  for (int64_t i = 0; i < n; ++i) {
    px[i] = aos[3 * i];
    py[i] = aos[3 * i + 1];
    pz[i] = aos[3 * i + 2];
  }
  return {px, py, pz, n};
}

template <typename T>
void solve_element(const T* x, int64_t n, const T* y, int64_t m, int threads, T* dxy, int64_t* ixy, T* dyx,
                   int64_t* iyx) {
  std::vector<T> bx, by;
  const knn::SoACloud<T> cx = to_soa(x, n, bx);
  const knn::SoACloud<T> cy = to_soa(y, m, by);
  // The larger cloud is split across threads (rows); the smaller one gets per-thread minima.
  if (n >= m) {
    knn::nearest_both(cx, cy, threads, dxy, ixy, dyx, iyx);
  } else {
    knn::nearest_both(cy, cx, threads, dyx, iyx, dxy, ixy);
  }
}

template <typename T>
void run_batch(const at::Tensor& x, const at::Tensor& y, const int64_t* xl, const int64_t* yl, int threads,
               at::Tensor& dxy, at::Tensor& ixy, at::Tensor& dyx, at::Tensor& iyx) {
  const int64_t batch = x.size(0), nmax = x.size(1), mmax = y.size(1);
  const T* px = x.data_ptr<T>();
  const T* py = y.data_ptr<T>();
  T* pdxy = dxy.data_ptr<T>();
  T* pdyx = dyx.data_ptr<T>();
  int64_t* pixy = ixy.data_ptr<int64_t>();
  int64_t* piyx = iyx.data_ptr<int64_t>();
  auto element = [&](int64_t b, int inner_threads) {
    solve_element<T>(px + b * nmax * 3, xl[b], py + b * mmax * 3, yl[b], inner_threads, pdxy + b * nmax,
                     pixy + b * nmax, pdyx + b * mmax, piyx + b * mmax);
  };
  // Small elements: one thread per element. Large ones: all threads inside each element.
  int64_t max_pairs = 0;
  for (int64_t b = 0; b < batch; ++b) max_pairs = std::max(max_pairs, xl[b] * yl[b]);
  if (threads > 1 && batch > 1 && max_pairs < (int64_t(1) << 22)) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int64_t b = 0; b < batch; ++b) element(b, 1);
  } else {
    for (int64_t b = 0; b < batch; ++b) element(b, threads);
  }
}

}  // namespace

std::vector<at::Tensor> knn_bidirectional_cpu(const at::Tensor& x_in, const at::Tensor& y_in,
                                              const at::Tensor& x_lengths, const at::Tensor& y_lengths,
                                              int64_t num_threads) {
  check_knn_inputs(x_in, y_in, x_lengths, y_lengths);
  TORCH_CHECK(x_in.device().is_cpu(), "knn_bidirectional_cpu needs CPU tensors");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor y = y_in.contiguous();
  const at::Tensor xl = x_lengths.contiguous();
  const at::Tensor yl = y_lengths.contiguous();
  const int64_t batch = x.size(0), nmax = x.size(1), mmax = y.size(1);
  const int64_t* pxl = xl.data_ptr<int64_t>();
  const int64_t* pyl = yl.data_ptr<int64_t>();
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(pxl[b] >= 1 && pxl[b] <= nmax, "x_lengths[", b, "] = ", pxl[b], " is outside [1, ", nmax, "]");
    TORCH_CHECK(pyl[b] >= 1 && pyl[b] <= mmax, "y_lengths[", b, "] = ", pyl[b], " is outside [1, ", mmax, "]");
  }
  // Padded rows keep distance 0 and index -1.
  at::Tensor dxy = at::zeros({batch, nmax}, x.options());
  at::Tensor dyx = at::zeros({batch, mmax}, x.options());
  at::Tensor ixy = at::full({batch, nmax}, -1, x.options().dtype(at::kLong));
  at::Tensor iyx = at::full({batch, mmax}, -1, x.options().dtype(at::kLong));
  const int threads = static_cast<int>(std::max<int64_t>(1, num_threads));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "knn_bidirectional_cpu",
                             [&] { run_batch<scalar_t>(x, y, pxl, pyl, threads, dxy, ixy, dyx, iyx); });
  return {dxy, ixy, dyx, iyx};
}

}  // namespace facerecon

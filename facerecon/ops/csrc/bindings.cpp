// Python bindings of the nearest-neighbour extension (CPU always; CUDA when built with nvcc).
#include "knn.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

std::vector<at::Tensor> knn_bidirectional(const at::Tensor& x, const at::Tensor& y, const at::Tensor& x_lengths,
                                          const at::Tensor& y_lengths, int64_t num_threads) {
  if (x.device().is_cuda()) {
#ifdef FACERECON_WITH_CUDA
    return facerecon::knn_bidirectional_cuda(x, y, x_lengths, y_lengths);
#else
    TORCH_CHECK(false, "this build of the extension has no CUDA kernel");
#endif
  }
  return facerecon::knn_bidirectional_cpu(x, y, x_lengths, y_lengths, num_threads);
}

bool has_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "facerecon exact bidirectional nearest neighbours (squared distances, int64 indices)";
  m.def("knn_bidirectional", &knn_bidirectional, "x (B,N,3), y (B,M,3), x_lengths (B,), y_lengths (B,), threads",
        pybind11::arg("x"), pybind11::arg("y"), pybind11::arg("x_lengths"), pybind11::arg("y_lengths"),
        pybind11::arg("num_threads"));
  m.def("has_openmp", &has_openmp);
#ifdef FACERECON_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}

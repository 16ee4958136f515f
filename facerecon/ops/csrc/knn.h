// Declarations shared by the bindings and the CPU / CUDA implementations of the bidirectional
// nearest-neighbour search. Conventions (pytorch3d's): x (B, N, 3), y (B, M, 3) of one floating
// dtype, lengths (B,) int64 giving the valid prefix of each padded cloud. Returns
// {dist_xy (B, N), idx_xy (B, N) int64, dist_yx (B, M), idx_yx (B, M) int64}: SQUARED distances;
// rows beyond a length get distance 0 and index -1.
#pragma once

#include <torch/extension.h>

#include <vector>

namespace facerecon {

std::vector<at::Tensor> knn_bidirectional_cpu(const at::Tensor& x, const at::Tensor& y, const at::Tensor& x_lengths,
                                              const at::Tensor& y_lengths, int64_t num_threads);

#ifdef FACERECON_WITH_CUDA
std::vector<at::Tensor> knn_bidirectional_cuda(const at::Tensor& x, const at::Tensor& y,
                                               const at::Tensor& x_lengths, const at::Tensor& y_lengths);
#endif

// Checks shared by both devices; throws c10::Error (a Python RuntimeError) with a message.
void check_knn_inputs(const at::Tensor& x, const at::Tensor& y, const at::Tensor& x_lengths,
                      const at::Tensor& y_lengths);

}  // namespace facerecon

// Exact nearest neighbours in both directions between two 3D point clouds, on the CPU.
//
// Pure C++ (no torch), so it can be unit-tuned on its own. The two clouds are called "rows" and
// "columns": every (row, column) squared distance is computed ONCE, in cache-sized tiles, and that
// one value updates both the row minimum (row -> nearest column) and the column minimum (column ->
// nearest row). That halves the work of running two one-directional searches.
//
// Finding an argmin costs a compare and two blends per pair in SIMD code, more than the distance
// itself. We avoid it: the hot loop keeps only minimum VALUES (one `min` per direction per pair)
// plus, per tile, which tile held the minimum; afterwards each point rescans only its winning tile
// (kTargetTile columns for a row, kQueryTile rows for a column) to find the index. The rescan is a
// few percent of the work. Ties resolve to the smallest index (the first tile with a strictly
// smaller value, then the first index in that tile).
//
// Coordinates are structure-of-arrays and differences are taken directly ((a-b)^2 summed), never
// through |a|^2 + |b|^2 - 2ab, which loses precision in float32.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace facerecon {
namespace knn {

constexpr int64_t kGroup = 4;        // rows held in registers while streaming a column tile
constexpr int64_t kQueryTile = 64;   // rows per tile (granularity of the column-argmin rescan)
constexpr int64_t kTargetTile = 512; // columns per tile (L1-resident; row-argmin rescan size)

// A point cloud as three coordinate arrays of length n.
template <typename T>
struct SoACloud {
  const T* x;
  const T* y;
  const T* z;
  int64_t n;
};

template <typename T>
inline T sqdist(T ax, T ay, T az, T bx, T by, T bz) {
  const T dx = ax - bx;
  const T dy = ay - by;
  const T dz = az - bz;
  return dx * dx + dy * dy + dz * dz;
}

// Streams rows [tile_begin * kQueryTile, tile_end * kQueryTile) against all columns. Writes each
// row's minimum and the column tile that holds it (row_best/row_tile, this thread's rows only), and
// folds column minima into this thread's col_best/col_tile (value, row tile).
template <typename T>
void scan_tiles(const SoACloud<T>& rows, const SoACloud<T>& cols, int64_t tile_begin, int64_t tile_end,
                T* row_best, int32_t* row_tile, T* col_best, int32_t* col_tile) {
  const T inf = std::numeric_limits<T>::infinity();
  alignas(64) T tmin[kTargetTile];
  const int64_t n = rows.n;
  const int64_t m = cols.n;
  for (int64_t qt = tile_begin; qt < tile_end; ++qt) {
    const int64_t q0 = qt * kQueryTile;
    const int64_t q1 = std::min(n, q0 + kQueryTile);
    for (int64_t i = q0; i < q1; ++i) row_best[i] = inf;
    int32_t tt = 0;
    for (int64_t t0 = 0; t0 < m; t0 += kTargetTile, ++tt) {
      const int64_t tn = std::min(kTargetTile, m - t0);
      const T* __restrict__ cx = cols.x + t0;
      const T* __restrict__ cy = cols.y + t0;
      const T* __restrict__ cz = cols.z + t0;
      for (int64_t j = 0; j < tn; ++j) tmin[j] = inf;
      for (int64_t g = q0; g < q1; g += kGroup) {
        // A partial last group repeats its last row: duplicates leave the column minima unchanged.
        const int64_t i0 = g;
        const int64_t i1 = std::min(g + 1, q1 - 1);
        const int64_t i2 = std::min(g + 2, q1 - 1);
        const int64_t i3 = std::min(g + 3, q1 - 1);
        const T ax0 = rows.x[i0], ay0 = rows.y[i0], az0 = rows.z[i0];
        const T ax1 = rows.x[i1], ay1 = rows.y[i1], az1 = rows.z[i1];
        const T ax2 = rows.x[i2], ay2 = rows.y[i2], az2 = rows.z[i2];
        const T ax3 = rows.x[i3], ay3 = rows.y[i3], az3 = rows.z[i3];
        T r0 = inf, r1 = inf, r2 = inf, r3 = inf;
#pragma omp simd reduction(min : r0, r1, r2, r3)
        for (int64_t j = 0; j < tn; ++j) {
          const T bx = cx[j], by = cy[j], bz = cz[j];
          const T d0 = sqdist(ax0, ay0, az0, bx, by, bz);
          const T d1 = sqdist(ax1, ay1, az1, bx, by, bz);
          const T d2 = sqdist(ax2, ay2, az2, bx, by, bz);
          const T d3 = sqdist(ax3, ay3, az3, bx, by, bz);
          r0 = d0 < r0 ? d0 : r0;
          r1 = d1 < r1 ? d1 : r1;
          r2 = d2 < r2 ? d2 : r2;
          r3 = d3 < r3 ? d3 : r3;
          const T c01 = d1 < d0 ? d1 : d0;
          const T c23 = d3 < d2 ? d3 : d2;
          const T c = c23 < c01 ? c23 : c01;
          tmin[j] = c < tmin[j] ? c : tmin[j];
        }
        const T r[kGroup] = {r0, r1, r2, r3};
        for (int64_t k = 0; k < kGroup && g + k < q1; ++k) {
          if (r[k] < row_best[g + k]) {
            row_best[g + k] = r[k];
            row_tile[g + k] = tt;
          }
        }
      }
      T* __restrict__ cb = col_best + t0;
      int32_t* __restrict__ ct = col_tile + t0;
      for (int64_t j = 0; j < tn; ++j) {
        if (tmin[j] < cb[j]) {
          cb[j] = tmin[j];
          ct[j] = static_cast<int32_t>(qt);
        }
      }
    }
  }
}

// The first index in [begin, end) of `cloud` nearest to point (px, py, pz), and its squared distance.
template <typename T>
inline void argmin_range(const SoACloud<T>& cloud, int64_t begin, int64_t end, T px, T py, T pz, T* dist,
                         int64_t* index) {
  T best = std::numeric_limits<T>::infinity();
  int64_t arg = begin;
  for (int64_t j = begin; j < end; ++j) {
    const T d = sqdist(px, py, pz, cloud.x[j], cloud.y[j], cloud.z[j]);
    if (d < best) {
      best = d;
      arg = j;
    }
  }
  *dist = best;
  *index = arg;
}

// Nearest column for every row and nearest row for every column (both clouds non-empty).
// Outputs: row_dist/row_idx (rows.n), col_dist/col_idx (cols.n). Uses up to `threads` OpenMP
// threads, splitting the rows in tiles (callers pass the larger cloud as rows).
template <typename T>
void nearest_both(const SoACloud<T>& rows, const SoACloud<T>& cols, int threads, T* row_dist, int64_t* row_idx,
                  T* col_dist, int64_t* col_idx) {
  const int64_t n = rows.n;
  const int64_t m = cols.n;
  const int64_t n_tiles = (n + kQueryTile - 1) / kQueryTile;
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, n_tiles)));
  std::vector<T> row_best(n);
  std::vector<int32_t> row_tile(n, 0);
  std::vector<T> col_best(static_cast<size_t>(nt) * m, std::numeric_limits<T>::infinity());
  std::vector<int32_t> col_tile(static_cast<size_t>(nt) * m, 0);

#pragma omp parallel num_threads(nt) if (nt > 1)
  {
#ifdef _OPENMP
    const int t = omp_get_thread_num();
#else
    const int t = 0;
#endif
    // Dynamic tiles: a thread descheduled on a busy machine does not hold the others back.
#pragma omp for schedule(dynamic, 1)
    for (int64_t qt = 0; qt < n_tiles; ++qt) {
      scan_tiles(rows, cols, qt, qt + 1, row_best.data(), row_tile.data(),
                 col_best.data() + static_cast<size_t>(t) * m, col_tile.data() + static_cast<size_t>(t) * m);
    }
#pragma omp for schedule(static)
    for (int64_t j = 0; j < m; ++j) {
      // Equal minima from several threads: the smallest row tile wins (smallest index overall).
      T best = col_best[j];
      int32_t tile = col_tile[j];
      for (int w = 1; w < nt; ++w) {
        const T v = col_best[static_cast<size_t>(w) * m + j];
        const int32_t vt = col_tile[static_cast<size_t>(w) * m + j];
        if (v < best || (v == best && vt < tile)) {
          best = v;
          tile = vt;
        }
      }
      const int64_t b = static_cast<int64_t>(tile) * kQueryTile;
      argmin_range(rows, b, std::min(n, b + kQueryTile), cols.x[j], cols.y[j], cols.z[j], col_dist + j,
                   col_idx + j);
    }
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const int64_t b = static_cast<int64_t>(row_tile[i]) * kTargetTile;
      argmin_range(cols, b, std::min(m, b + kTargetTile), rows.x[i], rows.y[i], rows.z[i], row_dist + i,
                   row_idx + i);
    }
  }
}

}  // namespace knn
}  // namespace facerecon

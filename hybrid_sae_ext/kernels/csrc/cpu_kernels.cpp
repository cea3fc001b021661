// CPU kernels of hybrid_sae_ext (built on first use by ../native.py): an exact top-k, a gathered dot and the
// residual dots of a refinement step.
//
// Top-k (sorted_topk_indices): exact top-k of each row of a score matrix, as ascending indices.
// Why: the halving top-k in topk.py needs about ten small PyTorch ops per level, and torch.topk costs
// ~5 ns per score; this is one pass per row. Split a row into `groups` strided groups (group g holds
// g, g + groups, g + 2 groups, ...). The k-th largest group maximum `tau` is a lower bound of the k-th
// largest score (k groups reach it), and every score >= tau lies in a group whose maximum is >= tau.
// So: one vectorisable pass for the group maxima, a selection among `groups` maxima, a scan of the
// few groups that reach tau, and a final selection among the candidates found there.
//
// Scores are compared through order-preserving integer keys: larger value -> larger key, and every
// NaN -> the largest key (torch.topk also counts NaN as the largest). Which of several equal scores at
// the k-th place is chosen is unspecified, as in torch.topk.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

template <typename RawT, typename KeyT, RawT kSignBit, RawT kInfBits>
struct FloatKeys {
  using Raw = RawT;
  using Key = KeyT;
  static inline Key key(Raw bits) {
    const Key as_signed = static_cast<Key>(bits);
    const Key magnitude_mask = static_cast<Key>(static_cast<RawT>(kSignBit - 1));
    const Key ordered = as_signed ^ (static_cast<Key>(as_signed >> (sizeof(Key) * 8 - 1)) & magnitude_mask);
    const bool is_nan = static_cast<RawT>(bits & static_cast<RawT>(kSignBit - 1)) > kInfBits;
    return is_nan ? magnitude_mask : ordered;
  }
};

using BFloat16Keys = FloatKeys<uint16_t, int16_t, 0x8000u, 0x7F80u>;
using Float16Keys = FloatKeys<uint16_t, int16_t, 0x8000u, 0x7C00u>;
using Float32Keys = FloatKeys<uint32_t, int32_t, 0x80000000u, 0x7F800000u>;
using Float64Keys = FloatKeys<uint64_t, int64_t, 0x8000000000000000ull, 0x7FF0000000000000ull>;

template <typename K>
struct RowWorkspace {
  std::vector<typename K::Key> group_max;
  std::vector<std::pair<typename K::Key, int32_t>> candidates;
  std::vector<uint64_t> chosen;  // a bitmap of the row's chosen columns, all zero between rows
  RowWorkspace(int64_t width, int64_t groups)
      : group_max(groups), candidates(width + 1), chosen((width + 63) / 64, 0) {}
};

// The k-th largest of v[0..n) (1 <= k <= n): the largest t with at least k values >= t, found by
// bisection over the key range. Each step is one vectorised count over v, so ~16 (bf16/fp16) to 64
// (fp64) short passes replace std::nth_element on a copy, which took a third of the kernel (1.0 of 2.95 ms
// for a 1024 x 8192 bf16 block, k 48, 256 group maxima on the 2-core Xeon).
template <typename Key>
Key kth_largest(const Key* v, int64_t n, int64_t k) {
  using Unsigned = std::make_unsigned_t<Key>;
  Key lo = v[0], hi = v[0];
  for (int64_t i = 1; i < n; ++i) {
    lo = v[i] < lo ? v[i] : lo;
    hi = v[i] > hi ? v[i] : hi;
  }
  // invariant: at least k values are >= lo, fewer than k are > hi
  while (lo < hi) {
    const Unsigned span = static_cast<Unsigned>(hi) - static_cast<Unsigned>(lo);
    const Key mid = static_cast<Key>(static_cast<Unsigned>(lo) + (span >> 1) + (span & 1));
    int64_t count = 0;
    for (int64_t i = 0; i < n; ++i) count += v[i] >= mid;
    if (count >= k) lo = mid; else hi = static_cast<Key>(mid - 1);
  }
  return lo;
}

template <typename K>
void row_topk(const typename K::Raw* row, int64_t width, int64_t k, int64_t groups, int64_t* out,
              RowWorkspace<K>& ws) {
  using Key = typename K::Key;
  auto& candidates = ws.candidates;
  int64_t n_candidates = 0;
  if (groups == 0) {  // narrow row: select among all scores
    for (int64_t j = 0; j < width; ++j) candidates[j] = {K::key(row[j]), static_cast<int32_t>(j)};
    n_candidates = width;
  } else {
    Key* group_max = ws.group_max.data();
    for (int64_t g = 0; g < groups; ++g) group_max[g] = K::key(row[g]);
    for (int64_t base = groups; base < width; base += groups) {
      const typename K::Raw* part = row + base;
      const int64_t count = std::min(groups, width - base);
      for (int64_t g = 0; g < count; ++g) {
        const Key v = K::key(part[g]);
        group_max[g] = v > group_max[g] ? v : group_max[g];
      }
    }
    const Key tau = kth_largest(group_max, groups, k);
    for (int64_t g = 0; g < groups; ++g) {
      if (group_max[g] < tau) continue;
      for (int64_t j = g; j < width; j += groups) {
        const Key v = K::key(row[j]);
        if (v >= tau) candidates[n_candidates++] = {v, static_cast<int32_t>(j)};
      }
    }
  }
  std::nth_element(candidates.begin(), candidates.begin() + (k - 1), candidates.begin() + n_candidates,
                   [](const auto& a, const auto& b) { return a.first > b.first; });
  // ascending order through the bitmap: set the k columns, then read (and clear) it word by word
  uint64_t* chosen = ws.chosen.data();
  for (int64_t i = 0; i < k; ++i) chosen[candidates[i].second >> 6] |= uint64_t{1} << (candidates[i].second & 63);
  int64_t written = 0;
  for (int64_t w = 0; written < k; ++w) {
    for (uint64_t bits = chosen[w]; bits != 0; bits &= bits - 1) out[written++] = w * 64 + __builtin_ctzll(bits);
    chosen[w] = 0;
  }
}

template <typename K>
void rows_topk(const torch::Tensor& scores, int64_t k, int64_t groups, torch::Tensor& out) {
  const int64_t n = scores.size(0), width = scores.size(1);
  const auto* data = reinterpret_cast<const typename K::Raw*>(scores.data_ptr());
  int64_t* out_data = out.data_ptr<int64_t>();
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
    RowWorkspace<K> ws(width, groups);
    for (int64_t r = begin; r < end; ++r) row_topk<K>(data + r * width, width, k, groups, out_data + r * k, ws);
  });
}

}  // namespace

// Ascending indices of the k largest scores of each row of a contiguous 2-D CPU tensor. `groups` is the
// number of strided groups (k <= groups <= width), or 0 to select among all scores of each row.
torch::Tensor sorted_topk_indices(const torch::Tensor& scores, int64_t k, int64_t groups) {
  TORCH_CHECK(scores.device().is_cpu() && scores.dim() == 2 && scores.is_contiguous(),
              "scores must be a contiguous 2-D CPU tensor");
  const int64_t width = scores.size(1);
  TORCH_CHECK(width < INT32_MAX, "rows wider than 2^31 - 1 are not supported");
  TORCH_CHECK(k >= 1 && k <= width, "k must be in [1, width]");
  TORCH_CHECK(groups == 0 || (groups >= k && groups <= width), "groups must be 0 or in [k, width]");
  auto out = torch::empty({scores.size(0), k}, scores.options().dtype(torch::kInt64));
  switch (scores.scalar_type()) {
    case torch::kBFloat16: rows_topk<BFloat16Keys>(scores, k, groups, out); break;
    case torch::kHalf: rows_topk<Float16Keys>(scores, k, groups, out); break;
    case torch::kFloat: rows_topk<Float32Keys>(scores, k, groups, out); break;
    case torch::kDouble: rows_topk<Float64Keys>(scores, k, groups, out); break;
    default: TORCH_CHECK(false, "scores must be bfloat16, float16, float32 or float64");
  }
  return out;
}

namespace {

// The (token, latent) picks of an [n, k] index matrix grouped by token block, then by latent: a counting
// sort of the flat positions p = i * k + j on the key (i / block_rows) * m + indices[p]. Kernels that
// visit the picks in this order read each weight row once per block and meet only the block's token
// rows, which stay in the core's L2 cache (the unblocked order reads a token row from L3 for every pick).
struct PickOrder {
  int64_t blocks = 0;
  std::vector<int64_t> start;  // the picks of block b and latent l are order[start[b * m + l] .. start[b * m + l + 1])
  std::vector<int64_t> order;
};

PickOrder order_picks(const torch::Tensor& indices, int64_t m, int64_t block_rows) {
  TORCH_CHECK(indices.dim() == 2 && indices.is_contiguous() && indices.scalar_type() == torch::kLong,
              "indices must be a contiguous [n, k] int64 tensor");
  TORCH_CHECK(block_rows >= 1, "block_rows must be at least 1");
  const int64_t n = indices.size(0), k = indices.size(1), picks = n * k;
  const int64_t* idx = indices.data_ptr<int64_t>();
  PickOrder result;
  result.blocks = (n + block_rows - 1) / block_rows;
  result.start.assign(result.blocks * m + 1, 0);
  auto key = [&](int64_t p) { return (p / k / block_rows) * m + idx[p]; };
  for (int64_t p = 0; p < picks; ++p) {
    TORCH_CHECK(idx[p] >= 0 && idx[p] < m, "an index is outside [0, m)");
    ++result.start[key(p) + 1];
  }
  for (size_t b = 1; b < result.start.size(); ++b) result.start[b] += result.start[b - 1];
  std::vector<int64_t> fill(result.start.begin(), result.start.end() - 1);
  result.order.resize(picks);
  for (int64_t p = 0; p < picks; ++p) result.order[fill[key(p)]++] = p;
  return result;
}

void check_float_matrix(const torch::Tensor& t, const char* message) {
  TORCH_CHECK(t.device().is_cpu() && t.dim() == 2 && t.is_contiguous() && t.scalar_type() == torch::kFloat, message);
}

// The data of an [n, k] int64 index tensor, every index checked to lie in [0, m) (one pass over the picks).
const int64_t* checked_indices(const torch::Tensor& indices, int64_t m, const char* message) {
  TORCH_CHECK(indices.dim() == 2 && indices.is_contiguous() && indices.scalar_type() == torch::kLong, message);
  const int64_t* idx = indices.data_ptr<int64_t>();
  for (int64_t p = 0; p < indices.numel(); ++p) TORCH_CHECK(idx[p] >= 0 && idx[p] < m, "an index is outside [0, m)");
  return idx;
}

constexpr int64_t kLanes = 16;

inline float dot(const float* a, const float* b, int64_t d) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= d; i += kLanes)
    for (int64_t lane = 0; lane < kLanes; ++lane) acc[lane] += a[i + lane] * b[i + lane];
  float total = 0.0f;
  for (; i < d; ++i) total += a[i] * b[i];
  for (int64_t lane = 0; lane < kLanes; ++lane) total += acc[lane];
  return total;
}

}  // namespace

// out[i, j] = rows[i] . table[indices[i, j]] in fp32. block_rows >= 1: visiting the picks by token block and
// latent (order_picks), so each weight row is read once per block; 0: token by token, in the picks' own order
// (no ordering pass; each pick reads its weight row, which is faster while the table stays in the last-level
// cache). rows: [n, d] float32, table: [m, d] float32, both contiguous; indices: [n, k] int64 in [0, m).
torch::Tensor gathered_dot(const torch::Tensor& rows, const torch::Tensor& table, const torch::Tensor& indices,
                           int64_t block_rows) {
  check_float_matrix(rows, "rows must be a contiguous 2-D float32 CPU tensor");
  check_float_matrix(table, "table must be a contiguous [m, d] float32 CPU tensor");
  TORCH_CHECK(table.size(1) == rows.size(1), "table must be a contiguous [m, d] float32 CPU tensor");
  TORCH_CHECK(indices.dim() == 2 && indices.size(0) == rows.size(0), "indices must be a contiguous [n, k] int64 tensor");
  TORCH_CHECK(block_rows >= 0, "block_rows must be 0 (token order) or at least 1");
  const int64_t n = indices.size(0), k = indices.size(1), m = table.size(0), d = rows.size(1);
  auto out = torch::empty({n, k}, rows.options());
  if (n * k == 0) return out;
  const float* x = rows.data_ptr<float>();
  const float* w = table.data_ptr<float>();
  float* o = out.data_ptr<float>();
  if (block_rows == 0) {
    const int64_t* idx = checked_indices(indices, m, "indices must be a contiguous [n, k] int64 tensor");
    at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin * k; p < end * k; ++p) o[p] = dot(x + (p / k) * d, w + idx[p] * d, d);
    });
    return out;
  }
  const PickOrder picks = order_picks(indices, m, block_rows);
  at::parallel_for(0, m, 64, [&](int64_t begin, int64_t end) {
    for (int64_t b = 0; b < picks.blocks; ++b) {
      const int64_t* bucket = picks.start.data() + b * m;
      for (int64_t l = begin; l < end; ++l)
        for (int64_t q = bucket[l]; q < bucket[l + 1]; ++q) {
          const int64_t p = picks.order[q];
          o[p] = dot(x + (p / k) * d, w + l * d, d);
        }
    }
  });
  return out;
}

// out[i, j] = (centered[i] - sum_l codes[i, l] * table[indices[i, l]]) . table[indices[i, j]] in fp32: a token's
// decode, its residual and the residual's dots with the same picked rows in one pass per token, so the rows
// the decode reads come back from the core's cache for the dots (the refinement step of the hybrid SAE, where
// a decode then a gathered dot read every picked row twice from memory). No gradient: the caller's is none.
// codes: [n, k] float32, indices: [n, k] int64 in [0, m), table: [m, d] float32, centered: [n, d] float32.
torch::Tensor residual_dots(const torch::Tensor& codes, const torch::Tensor& indices, const torch::Tensor& table,
                            const torch::Tensor& centered) {
  check_float_matrix(codes, "codes must be a contiguous [n, k] float32 CPU tensor");
  check_float_matrix(table, "table must be a contiguous [m, d] float32 CPU tensor");
  check_float_matrix(centered, "centered must be a contiguous [n, d] float32 CPU tensor");
  const char* index_message = "indices must be a contiguous int64 tensor shaped like codes";
  TORCH_CHECK(indices.sizes() == codes.sizes(), index_message);
  TORCH_CHECK(centered.size(0) == codes.size(0) && centered.size(1) == table.size(1),
              "centered must be [n, d] with n = codes.size(0) and d = table.size(1)");
  const int64_t n = codes.size(0), k = codes.size(1), d = table.size(1);
  const int64_t* idx = checked_indices(indices, table.size(0), index_message);
  auto out = torch::empty({n, k}, codes.options());
  const float* c = codes.data_ptr<float>();
  const float* w = table.data_ptr<float>();
  const float* x = centered.data_ptr<float>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> residual(d);
    for (int64_t i = begin; i < end; ++i) {
      std::copy(x + i * d, x + (i + 1) * d, residual.begin());
      for (int64_t j = 0; j < k; ++j) {
        const float code = c[i * k + j];
        const float* row = w + idx[i * k + j] * d;
        for (int64_t t = 0; t < d; ++t) residual[t] -= code * row[t];
      }
      for (int64_t j = 0; j < k; ++j) o[i * k + j] = dot(residual.data(), w + idx[i * k + j] * d, d);
    }
  });
  return out;
}

// The sparse [m, n] matrix S^T of an [n, k] pick matrix S (values at indices) in CSR form, rows by latent, each
// row's picks in token order: one counting sort (two passes over the picks), where a stable sort of the flat
// indices, a bincount, a cumulative sum and two gathers cost five passes and the sort's log factor.
// Returns (crow [m + 1], columns [n * k], values [n * k]): int64, int64 and the values' dtype.
std::vector<torch::Tensor> csr_by_latent(const torch::Tensor& values, const torch::Tensor& indices, int64_t m) {
  TORCH_CHECK(indices.dim() == 2 && indices.is_contiguous() && indices.scalar_type() == torch::kLong &&
                  indices.device().is_cpu(), "indices must be a contiguous [n, k] int64 CPU tensor");
  TORCH_CHECK(values.sizes() == indices.sizes() && values.is_contiguous() && values.scalar_type() == torch::kFloat,
              "values must be a contiguous float32 tensor shaped like indices");
  TORCH_CHECK(m >= 0, "m must be non-negative");
  const int64_t n = indices.size(0), k = indices.size(1), picks = n * k;
  const int64_t* idx = indices.data_ptr<int64_t>();
  const float* val = values.data_ptr<float>();
  auto crow = torch::zeros({m + 1}, indices.options());
  auto columns = torch::empty({picks}, indices.options());
  auto sorted = torch::empty({picks}, values.options());
  int64_t* start = crow.data_ptr<int64_t>();
  for (int64_t p = 0; p < picks; ++p) {
    TORCH_CHECK(idx[p] >= 0 && idx[p] < m, "an index is outside [0, m)");
    ++start[idx[p] + 1];
  }
  for (int64_t l = 0; l < m; ++l) start[l + 1] += start[l];
  std::vector<int64_t> fill(start, start + m);
  int64_t* col = columns.data_ptr<int64_t>();
  float* out = sorted.data_ptr<float>();
  for (int64_t p = 0; p < picks; ++p) {
    const int64_t q = fill[idx[p]]++;
    col[q] = p / k;
    out[q] = val[p];
  }
  return {crow, columns, sorted};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("sorted_topk_indices", &sorted_topk_indices, "Ascending indices of the k largest scores of each row");
  m.def("gathered_dot", &gathered_dot, "out[i, j] = rows[i] . table[indices[i, j]], by token block and latent or by token");
  m.def("csr_by_latent", &csr_by_latent, "S^T of an [n, k] pick matrix as CSR rows by latent (counting sort)");
  m.def("residual_dots", &residual_dots, "each token's residual after its decode, dotted with its picked rows");
}

// Attention over a paged KV cache on the CPU, reading the pages in place, called from jitted code
// through the XLA FFI.
//
// XLA:CPU can only gather a sequence's pages into rows before attending, and its gather copies
// element by element: for a batch of decoding sequences that copy costs more than the attention.
// This kernel walks each query's pages directly.
//
//   q      [N, H, D] float32       N queries (a decode batch's rows, or a packed prefill stream)
//   pages  [L, K, P, S, D] float32 keys and values: L layers, K kv heads, P pages of S slots
//   tables [R, W] int32            each sequence's pages (ids outside [0, P) are clamped)
//   row    [N] int32               the sequence of each query (outside [0, R): no keys)
//   slot   [N] int32               the query's own slot; it sees keys at slots 0 .. slot (and below
//                                  W * S); a negative slot sees none
//   out    [N, H, D] float32       softmax(q . k * scale) . v per query head; zeros without keys
// Query head h reads kv head h / (H / K). Softmax runs online (running max and sum per head) one
// page at a time, in float32: the result equals the gather-then-attend path up to the order of sums
// and exp's last bits.
// (query, kv head) pairs are cut into chunks that the calling thread and a small pool of helpers
// claim one at a time; the caller waits only for chunks a helper has claimed.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "helper_pool.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Attention {
  const float* q;
  const float* k;
  const float* v;
  const int32_t* tables;
  const int32_t* row;
  const int32_t* slot;
  float* out;
  int64_t N, H, D, L, K, P, S, R, W, layer;
  float scale;
};

struct Job {
  Attention A;
  int64_t items = 0, per_chunk = 1, chunks = 0;
  std::atomic<int64_t> next{0}, done{0};
  std::mutex mu;
  std::condition_variable finished;
};

// a . b over D floats: 16 partial sums the compiler turns into vector lanes (a plain running sum is a
// chain it may not reorder), then added up.
inline float dot(const float* a, const float* b, int64_t D) {
  float lanes[16] = {0.0f};
  int64_t d = 0;
  for (; d + 16 <= D; d += 16)
    for (int l = 0; l < 16; ++l) lanes[l] += a[d + l] * b[d + l];
  float s = 0.0f;
  for (; d < D; ++d) s += a[d] * b[d];
  for (int l = 0; l < 16; ++l) s += lanes[l];
  return s;
}

// exp(x) for x <= 0 in plain arithmetic, so that a loop of them vectorizes: x = n ln2 + r with
// |r| <= ln2 / 2, Cephes' degree-6 polynomial for exp(r) (relative error about 1e-7, as XLA's own
// CPU exp), times 2^n built in the exponent bits. Inputs below -87 give exp(-87) (about 1.6e-38),
// which a softmax sum cannot tell from 0.
inline float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const float n = (x * 1.44269504088896341f + shifter) - shifter;
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;  // ln2 split in two for exactness
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = ((int32_t)n + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// Item i = (query n, kv head kh): the G = H / K query heads of kv head kh over the query's keys.
void attend(const Attention& A, int64_t item, std::vector<float>& scratch) {
  const int64_t n = item / A.K, kh = item % A.K, G = A.H / A.K, D = A.D, S = A.S;
  float* out = A.out + (n * A.H + kh * G) * D;
  const int64_t r = A.row[n];
  const int64_t last = std::min<int64_t>(A.slot[n], A.W * S - 1);
  if (r < 0 || r >= A.R || last < 0) {
    std::memset(out, 0, sizeof(float) * G * D);
    return;
  }
  scratch.assign(G * (D + S + 2), 0.0f);
  float* acc = scratch.data();        // [G, D]
  float* score = acc + G * D;          // [G, S]
  float* mx = score + G * S;           // [G]
  float* sum = mx + G;                 // [G]
  for (int64_t g = 0; g < G; ++g) mx[g] = -INFINITY;
  const float* q = A.q + (n * A.H + kh * G) * D;
  const int32_t* table = A.tables + r * A.W;
  for (int64_t start = 0; start <= last; start += S) {
    const int64_t count = std::min<int64_t>(S, last - start + 1);
    const int64_t page = std::clamp<int64_t>(table[start / S], 0, A.P - 1);
    const int64_t base = (((A.layer * A.K + kh) * A.P + page) * S) * D;
    const float* kp = A.k + base;
    const float* vp = A.v + base;
    for (int64_t g = 0; g < G; ++g) {
      const float* qg = q + g * D;
      float* sc = score + g * S;
      float block_max = -INFINITY;
      for (int64_t j = 0; j < count; ++j) {
        sc[j] = dot(qg, kp + j * D, D) * A.scale;
        block_max = std::max(block_max, sc[j]);
      }
      const float new_max = std::max(mx[g], block_max);
      const float rescale = mx[g] == -INFINITY ? 0.0f : exp_nonpositive(mx[g] - new_max);  // 0 on the first page
      float* ag = acc + g * D;
      for (int64_t d = 0; d < D; ++d) ag[d] *= rescale;
      for (int64_t j = 0; j < count; ++j) sc[j] = exp_nonpositive(sc[j] - new_max);
      float block_sum = 0.0f;
      for (int64_t j = 0; j < count; ++j) {
        const float p = sc[j];
        block_sum += p;
        const float* vj = vp + j * D;
        for (int64_t d = 0; d < D; ++d) ag[d] += p * vj[d];
      }
      sum[g] = sum[g] * rescale + block_sum;
      mx[g] = new_max;
    }
  }
  for (int64_t g = 0; g < G; ++g)
    for (int64_t d = 0; d < D; ++d) out[g * D + d] = acc[g * D + d] / sum[g];
}

void work_on(Job& job) {
  std::vector<float> scratch;
  for (;;) {
    const int64_t c = job.next.fetch_add(1, std::memory_order_acq_rel);
    if (c >= job.chunks) return;
    const int64_t end = std::min(job.items, (c + 1) * job.per_chunk);
    for (int64_t i = c * job.per_chunk; i < end; ++i) attend(job.A, i, scratch);
    if (job.done.fetch_add(1, std::memory_order_acq_rel) + 1 == job.chunks) {
      std::lock_guard<std::mutex> lock(job.mu);
      job.finished.notify_all();
    }
  }
}

HelperPool<Job, work_on>& pool() { return HelperPool<Job, work_on>::instance(); }

void run(const std::shared_ptr<Job>& job) {
  job->items = job->A.N * job->A.K;
  job->per_chunk = std::max<int64_t>(1, job->items / 64);
  job->chunks = (job->items + job->per_chunk - 1) / job->per_chunk;
  const bool share = job->chunks > 1 && pool().helpers() > 0;
  if (share) pool().offer(job);
  work_on(*job);
  if (job->done.load(std::memory_order_acquire) < job->chunks) {
    std::unique_lock<std::mutex> lock(job->mu);
    job->finished.wait(lock, [&] { return job->done.load(std::memory_order_acquire) >= job->chunks; });
  }
  if (share) pool().withdraw();
}

std::string dims(const ffi::AnyBuffer& b) {
  std::string s = "[";
  auto d = b.dimensions();
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

ffi::Error PagedAttentionImpl(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v, ffi::AnyBuffer tables,
                              ffi::AnyBuffer row, ffi::AnyBuffer slot, ffi::Result<ffi::AnyBuffer> out,
                              int64_t layer, float scale) {
  if (q.element_type() != ffi::F32 || q.dimensions().size() != 3)
    return ffi::Error::InvalidArgument("q must be float32 [queries, heads, head_dim], got " + dims(q));
  if (k.element_type() != ffi::F32 || k.dimensions().size() != 5 || v.element_type() != ffi::F32 ||
      v.dimensions().size() != 5)
    return ffi::Error::InvalidArgument("pages must be float32 [layers, kv_heads, pages, page, head_dim], got " +
                                       dims(k) + " and " + dims(v));
  for (int i = 0; i < 5; ++i)
    if (k.dimensions()[i] != v.dimensions()[i])
      return ffi::Error::InvalidArgument("key pages " + dims(k) + " and value pages " + dims(v) + " differ");
  if (tables.element_type() != ffi::S32 || tables.dimensions().size() != 2)
    return ffi::Error::InvalidArgument("block tables must be int32 [rows, pages], got " + dims(tables));
  const int64_t N = q.dimensions()[0], H = q.dimensions()[1], D = q.dimensions()[2];
  const int64_t L = k.dimensions()[0], K = k.dimensions()[1];
  if (k.dimensions()[4] != D || K < 1 || H % K)
    return ffi::Error::InvalidArgument("q " + dims(q) + " does not fit pages " + dims(k));
  if (layer < 0 || layer >= L)
    return ffi::Error::InvalidArgument("layer " + std::to_string(layer) + " is outside 0.." + std::to_string(L - 1));
  for (const ffi::AnyBuffer* b : {&row, &slot})
    if (b->element_type() != ffi::S32 || b->dimensions().size() != 1 || b->dimensions()[0] != N)
      return ffi::Error::InvalidArgument("query rows and slots must be int32 [" + std::to_string(N) + "], got " +
                                         dims(*b));
  if (out->element_type() != ffi::F32 || out->element_count() != N * H * D)
    return ffi::Error::InvalidArgument("output must be float32 [queries, heads, head_dim]");
  auto job = std::make_shared<Job>();
  job->A = Attention{static_cast<const float*>(q.untyped_data()), static_cast<const float*>(k.untyped_data()),
                     static_cast<const float*>(v.untyped_data()), static_cast<const int32_t*>(tables.untyped_data()),
                     static_cast<const int32_t*>(row.untyped_data()), static_cast<const int32_t*>(slot.untyped_data()),
                     static_cast<float*>(out->untyped_data()), N, H, D, L, K, k.dimensions()[2], k.dimensions()[3],
                     tables.dimensions()[0], tables.dimensions()[1], layer, scale};
  if (N > 0) run(job);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(IjPagedAttention, PagedAttentionImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // q
                                  .Arg<ffi::AnyBuffer>()  // key pages
                                  .Arg<ffi::AnyBuffer>()  // value pages
                                  .Arg<ffi::AnyBuffer>()  // block tables
                                  .Arg<ffi::AnyBuffer>()  // query rows
                                  .Arg<ffi::AnyBuffer>()  // query slots
                                  .Ret<ffi::AnyBuffer>()  // out
                                  .Attr<int64_t>("layer")
                                  .Attr<float>("scale"));

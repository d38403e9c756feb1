// Group-quantized matrix-vector products on the CPU, called from jitted code through the XLA FFI.
//
// y [M, O] = x [M, I] @ w, with w held as PackedWeight's codes (intern_jax/model/quantized.py):
//   8-bit: q [I, O] int8,            w[i, o] = q[i, o] * scale[i / G, o] (+ min[i / G, o])
//   4-bit: q [I / 2, O] uint8,       row 2p in the low nibble of q[p, o], row 2p + 1 in the high one,
//                                    w[i, o] = code * scale[i / G, o] + min[i / G, o]
// scales and mins [I / G, O] in float32 or float16 (GGUF's blocks); mins may be empty (8-bit).
// Activations stay float32 (no activation rounding): each code becomes a float and meets x in
// an FMA; a group's sum is scaled once, so the result is the dequantize-then-dot product up to
// the order of float32 sums. The output columns are cut into 128-wide chunks that the calling
// thread and a small pool of helpers claim one at a time, so a helper that the (shared, loaded)
// machine has not scheduled yet delays nothing: the caller waits only for chunks already claimed. Meant for a few rows
// (decode); prefill's many rows are better served by dequantizing once and one dense dot.
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define GEMV_AVX512 1
#endif
#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

#include "helper_pool.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// float16 -> float32 without relying on a CPU feature (the portable path and scalar tails).
inline float half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu, bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: normalize
      exp = 127 - 15 + 1;
      while (!(man & 0x400u)) { man <<= 1; --exp; }
      bits = sign | (exp << 23) | ((man & 0x3FFu) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7F800000u | (man << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

struct Problem {
  const float* x;      // [M, I]
  const uint8_t* q;    // 8-bit: [I, O] (int8 bits); 4-bit: [I / 2, O]
  const void* scales;  // [I / G, O]
  const void* mins;    // [I / G, O] or null
  bool half;           // scales and mins are float16
  int bits;
  int64_t M, I, O, G;
  float* y;            // [M, O]
  std::vector<float> xsum;  // [M, I / G]: each row's sum over each group (for the mins)
};

inline float scalar_param(const void* p, bool half, int64_t k) {
  return half ? half_to_float(static_cast<const uint16_t*>(p)[k]) : static_cast<const float*>(p)[k];
}

// Portable path: columns [c0, c1) of every row.
void columns_scalar(const Problem& P, int64_t c0, int64_t c1) {
  const int64_t groups = P.I / P.G;
  std::vector<float> acc(c1 - c0), out(c1 - c0);
  for (int64_t m = 0; m < P.M; ++m) {
    const float* x = P.x + m * P.I;
    std::fill(out.begin(), out.end(), 0.0f);
    for (int64_t g = 0; g < groups; ++g) {
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t i = g * P.G; i < (g + 1) * P.G; ++i) {
        const float xi = x[i];
        if (P.bits == 8) {
          const int8_t* row = reinterpret_cast<const int8_t*>(P.q) + i * P.O;
          for (int64_t c = c0; c < c1; ++c) acc[c - c0] += xi * (float)row[c];
        } else {
          const uint8_t* row = P.q + (i / 2) * P.O;
          const int shift = (i & 1) ? 4 : 0;
          for (int64_t c = c0; c < c1; ++c) acc[c - c0] += xi * (float)((row[c] >> shift) & 0xF);
        }
      }
      const float xs = P.xsum.empty() ? 0.0f : P.xsum[m * groups + g];
      for (int64_t c = c0; c < c1; ++c) {
        out[c - c0] += acc[c - c0] * scalar_param(P.scales, P.half, g * P.O + c);
        if (P.mins) out[c - c0] += xs * scalar_param(P.mins, P.half, g * P.O + c);
      }
    }
    std::memcpy(P.y + m * P.O + c0, out.data(), (c1 - c0) * sizeof(float));
  }
}

#ifdef GEMV_AVX512
inline __m512 load_param(const void* p, bool half, int64_t k, __mmask16 mask) {
  if (half) {
    __m256i h = _mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(p) + k);
    return _mm512_cvtph_ps(h);
  }
  return _mm512_maskz_loadu_ps(mask, static_cast<const float*>(p) + k);
}

inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
}

// R rows [m0, m0 + R) times NV * 16 columns from c: the codes of each group are loaded and
// converted once and meet all R rows' activations.
template <int R, int NV, int BITS>
void block_avx512(const Problem& P, int64_t m0, int64_t c, int64_t c1) {
  const int64_t groups = P.I / P.G;
  __mmask16 mask[NV];
  for (int v = 0; v < NV; ++v) mask[v] = c + 16 * v < c1 ? tail_mask(c1 - c - 16 * v) : (__mmask16)0;
  __m512 out[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) out[r][v] = _mm512_setzero_ps();
  const __m512i nibble = _mm512_set1_epi32(0xF);
  for (int64_t g = 0; g < groups; ++g) {
    __m512 acc[R][NV];
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
    if (BITS == 8) {
      for (int64_t i = g * P.G; i < (g + 1) * P.G; ++i) {
        const uint8_t* row = P.q + i * P.O + c;
        __m512 w[NV];
        for (int v = 0; v < NV; ++v)
          w[v] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask[v], row + 16 * v)));
        for (int r = 0; r < R; ++r) {
          const __m512 xr = _mm512_set1_ps(P.x[(m0 + r) * P.I + i]);
          for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(xr, w[v], acc[r][v]);
        }
      }
    } else {
      for (int64_t p = g * P.G / 2; p < (g + 1) * P.G / 2; ++p) {
        const uint8_t* row = P.q + p * P.O + c;
        __m512 lo[NV], hi[NV];
        for (int v = 0; v < NV; ++v) {
          const __m512i b = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask[v], row + 16 * v));
          lo[v] = _mm512_cvtepi32_ps(_mm512_and_si512(b, nibble));
          hi[v] = _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4));
        }
        for (int r = 0; r < R; ++r) {
          const __m512 xe = _mm512_set1_ps(P.x[(m0 + r) * P.I + 2 * p]);
          const __m512 xo = _mm512_set1_ps(P.x[(m0 + r) * P.I + 2 * p + 1]);
          for (int v = 0; v < NV; ++v) {
            acc[r][v] = _mm512_fmadd_ps(xe, lo[v], acc[r][v]);
            acc[r][v] = _mm512_fmadd_ps(xo, hi[v], acc[r][v]);
          }
        }
      }
    }
    for (int v = 0; v < NV; ++v) {
      if (!mask[v]) continue;
      const __m512 s = load_param(P.scales, P.half, g * P.O + c + 16 * v, mask[v]);
      for (int r = 0; r < R; ++r) out[r][v] = _mm512_fmadd_ps(acc[r][v], s, out[r][v]);
      if (P.mins) {
        const __m512 mn = load_param(P.mins, P.half, g * P.O + c + 16 * v, mask[v]);
        for (int r = 0; r < R; ++r)
          out[r][v] = _mm512_fmadd_ps(_mm512_set1_ps(P.xsum[(m0 + r) * groups + g]), mn, out[r][v]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v)
      if (mask[v]) _mm512_mask_storeu_ps(P.y + (m0 + r) * P.O + c + 16 * v, mask[v], out[r][v]);
}

template <int BITS>
void columns_avx512(const Problem& P, int64_t c0, int64_t c1) {
  int64_t m = 0;
  for (; m + 2 <= P.M; m += 2)
    for (int64_t c = c0; c < c1; c += 64) block_avx512<2, 4, BITS>(P, m, c, c1);
  for (; m < P.M; ++m)
    for (int64_t c = c0; c < c1; c += 128) block_avx512<1, 8, BITS>(P, m, c, c1);
}
#endif

// One product in flight, shared by the caller and the helpers that joined it; a helper that wakes
// after the product is done finds no chunk left and touches only this (reference-counted) record.
struct Job {
  Problem P;
  int64_t chunks = 0;
  std::atomic<int64_t> next{0}, done{0};
  std::mutex mu;  // the caller sleeps on `finished` when a helper still holds the last chunks
  std::condition_variable finished;
};

void work_on(Job& job) {
  const Problem& P = job.P;
  for (int64_t k; (k = job.next.fetch_add(1)) < job.chunks;) {
    const int64_t c0 = k * 128, c1 = c0 + 128 < P.O ? c0 + 128 : P.O;
#ifdef GEMV_AVX512
    if (P.bits == 8) columns_avx512<8>(P, c0, c1); else columns_avx512<4>(P, c0, c1);
#else
    columns_scalar(P, c0, c1);
#endif
    if (job.done.fetch_add(1, std::memory_order_acq_rel) + 1 == job.chunks) {
      std::lock_guard<std::mutex> lock(job.mu);
      job.finished.notify_all();
    }
  }
}

HelperPool<Job, work_on>& pool() { return HelperPool<Job, work_on>::instance(); }

void run(std::shared_ptr<Job> job) {
  const Problem& P = job->P;
  job->chunks = (P.O + 127) / 128;
  const bool share = job->chunks > 1 && P.I * P.O * P.M >= ((int64_t)1 << 16) && pool().helpers() > 0;
  if (share) pool().offer(job);
  work_on(*job);
  // a short spin (the helper is usually mid-chunk), then sleep: on a loaded machine the helper may
  // have been descheduled, and spinning would only take the core it needs
  for (int spin = 0; spin < 4000 && job->done.load(std::memory_order_acquire) < job->chunks; ++spin) {
#ifdef GEMV_AVX512
    _mm_pause();
#endif
  }
  if (job->done.load(std::memory_order_acquire) < job->chunks) {
    std::unique_lock<std::mutex> lock(job->mu);
    job->finished.wait(lock, [&] { return job->done.load(std::memory_order_acquire) >= job->chunks; });
  }
  if (share) pool().withdraw();
}

std::string dims_str(const ffi::AnyBuffer& b) {
  std::string s = "[";
  auto d = b.dimensions();
  for (size_t k = 0; k < d.size(); ++k) s += (k ? ", " : "") + std::to_string(d[k]);
  return s + "]";
}

ffi::Error GroupGemvImpl(ffi::AnyBuffer x, ffi::AnyBuffer q, ffi::AnyBuffer scales, ffi::AnyBuffer mins,
                         ffi::Result<ffi::AnyBuffer> y, int64_t bits, int64_t group_size) {
  if (bits != 8 && bits != 4) return ffi::Error::InvalidArgument("bits must be 4 or 8, got " + std::to_string(bits));
  if (x.element_type() != ffi::F32 || x.dimensions().size() != 2)
    return ffi::Error::InvalidArgument("x must be float32 [rows, in], got " + dims_str(x));
  if (q.dimensions().size() != 2 || q.element_type() != (bits == 8 ? ffi::S8 : ffi::U8))
    return ffi::Error::InvalidArgument(std::string("codes must be 2-D ") + (bits == 8 ? "int8" : "uint8") +
                                       ", got " + dims_str(q));
  const int64_t M = x.dimensions()[0], I = x.dimensions()[1], O = q.dimensions()[1];
  const int64_t G = group_size;
  if (G < 2 || G % 2 || I % G)
    return ffi::Error::InvalidArgument("group_size " + std::to_string(G) + " must be even and divide in " +
                                       std::to_string(I));
  if (q.dimensions()[0] != (bits == 8 ? I : I / 2))
    return ffi::Error::InvalidArgument("codes " + dims_str(q) + " do not match x " + dims_str(x));
  const auto st = scales.element_type();
  if (st != ffi::F32 && st != ffi::F16) return ffi::Error::InvalidArgument("scales must be float32 or float16");
  if (scales.dimensions().size() != 2 || scales.dimensions()[0] != I / G || scales.dimensions()[1] != O)
    return ffi::Error::InvalidArgument("scales " + dims_str(scales) + " must be [in / group_size, out]");
  const bool has_mins = mins.element_count() > 0;
  if (has_mins && (mins.element_type() != st || mins.dimensions().size() != 2 || mins.dimensions()[0] != I / G ||
                   mins.dimensions()[1] != O))
    return ffi::Error::InvalidArgument("mins " + dims_str(mins) + " must match scales " + dims_str(scales));
  if (y->element_type() != ffi::F32 || y->dimensions().size() != 2 || y->dimensions()[0] != M ||
      y->dimensions()[1] != O)
    return ffi::Error::InvalidArgument("output must be float32 [rows, out]");
  auto job = std::make_shared<Job>();
  job->P = Problem{static_cast<const float*>(x.untyped_data()), static_cast<const uint8_t*>(q.untyped_data()),
            scales.untyped_data(), has_mins ? mins.untyped_data() : nullptr, st == ffi::F16, (int)bits,
            M, I, O, G, static_cast<float*>(y->untyped_data()), {}};
  Problem& P = job->P;
  if (has_mins) {
    const int64_t groups = I / G;
    P.xsum.assign(M * groups, 0.0f);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t g = 0; g < groups; ++g) {
        float s = 0.0f;
        for (int64_t i = g * G; i < (g + 1) * G; ++i) s += P.x[m * I + i];
        P.xsum[m * groups + g] = s;
      }
  }
  if (M > 0 && O > 0) run(job);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(IjGroupGemv, GroupGemvImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // x
                                  .Arg<ffi::AnyBuffer>()  // q
                                  .Arg<ffi::AnyBuffer>()  // scales
                                  .Arg<ffi::AnyBuffer>()  // mins (empty: none)
                                  .Ret<ffi::AnyBuffer>()  // y
                                  .Attr<int64_t>("bits")
                                  .Attr<int64_t>("group_size"));

// Which code path this library was built with (for reports): 1 AVX-512, 0 portable.
extern "C" int ij_gemv_isa() {
#ifdef GEMV_AVX512
  return 1;
#else
  return 0;
#endif
}

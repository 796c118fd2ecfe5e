// XLA:CPU FFI handler: C[M, N] (float32) = op(A) · op(B) with bfloat16 A and B, through oneDNN's matmul, which
// runs native AVX512-BF16 / AMX kernels where the CPU has them (XLA:CPU converts bf16 dots to float32).
// op(X) is X or its transpose (attributes trans_a, trans_b), so the backward pass needs no copies.
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using Key = std::tuple<int64_t, int64_t, int64_t, bool, bool>;

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// One primitive per (M, N, K, trans_a, trans_b): creating it is far costlier than running it.
const dnnl::matmul& Primitive(int64_t m, int64_t n, int64_t k, bool trans_a, bool trans_b) {
  static std::mutex mutex;
  static std::map<Key, dnnl::matmul> cache;
  std::lock_guard<std::mutex> lock(mutex);
  Key key{m, n, k, trans_a, trans_b};
  auto it = cache.find(key);
  if (it == cache.end()) {
    using tag = dnnl::memory::format_tag;
    using dt = dnnl::memory::data_type;
    dnnl::memory::desc a({m, k}, dt::bf16, trans_a ? tag::ba : tag::ab);
    dnnl::memory::desc b({k, n}, dt::bf16, trans_b ? tag::ba : tag::ab);
    dnnl::memory::desc c({m, n}, dt::f32, tag::ab);
    dnnl::matmul::primitive_desc pd(Engine(), a, b, c);
    it = cache.emplace(key, dnnl::matmul(pd)).first;
  }
  return it->second;
}

ffi::Error MatmulImpl(ffi::Buffer<ffi::BF16> a, ffi::Buffer<ffi::BF16> b, ffi::ResultBuffer<ffi::F32> c,
                      bool trans_a, bool trans_b) {
  auto ad = a.dimensions();
  auto bd = b.dimensions();
  if (ad.size() != 2 || bd.size() != 2) return ffi::Error::InvalidArgument("onednn_matmul takes 2-D operands");
  int64_t m = trans_a ? ad[1] : ad[0], k = trans_a ? ad[0] : ad[1];
  int64_t kb = trans_b ? bd[1] : bd[0], n = trans_b ? bd[0] : bd[1];
  if (k != kb) return ffi::Error::InvalidArgument("onednn_matmul: contracting dimensions differ");
  using tag = dnnl::memory::format_tag;
  using dt = dnnl::memory::data_type;
  // XLA:CPU may run independent thunks on several threads at once; concurrent executions through oneDNN's
  // shared scratchpad corrupted results (a test saw run-to-run loss differences), so calls are serialised.
  // Each call already uses every core through OpenMP.
  static std::mutex execute_mutex;
  std::lock_guard<std::mutex> lock(execute_mutex);
  try {
    const dnnl::matmul& prim = Primitive(m, n, k, trans_a, trans_b);
    dnnl::memory am({{m, k}, dt::bf16, trans_a ? tag::ba : tag::ab}, Engine(), a.untyped_data());
    dnnl::memory bm({{k, n}, dt::bf16, trans_b ? tag::ba : tag::ab}, Engine(), b.untyped_data());
    dnnl::memory cm({{m, n}, dt::f32, tag::ab}, Engine(), c->untyped_data());
    dnnl::stream stream(Engine());
    prim.execute(stream, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(e.what());
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnMatmulBf16, MatmulImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("trans_a")
                                  .Attr<bool>("trans_b"));

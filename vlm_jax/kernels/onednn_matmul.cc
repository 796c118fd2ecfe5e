// XLA:CPU FFI handler: C[M, N] = op(A) · op(B) (+ bias[N]) with bfloat16 A and B, through oneDNN's matmul, which
// runs native AVX512-BF16 / AMX kernels where the CPU has them (XLA:CPU converts bf16 dots to float32).
// op(X) is X or its transpose (attributes trans_a, trans_b), so the backward pass needs no copies. C is float32 or
// bfloat16 (accumulation is float32 either way); a float32 bias of N elements (empty: none) is added inside the
// kernel, so a bf16 layer output is written once instead of as float32, re-read, biased and converted.
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using Key = std::tuple<int64_t, int64_t, int64_t, bool, bool, bool, bool>;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// One primitive per shape and variant: creating it is far costlier than running it.
const dnnl::matmul& Primitive(int64_t m, int64_t n, int64_t k, bool trans_a, bool trans_b, bool bf16_out,
                              bool has_bias) {
  static std::mutex mutex;
  static std::map<Key, dnnl::matmul> cache;
  std::lock_guard<std::mutex> lock(mutex);
  Key key{m, n, k, trans_a, trans_b, bf16_out, has_bias};
  auto it = cache.find(key);
  if (it == cache.end()) {
    dnnl::memory::desc a({m, k}, dt::bf16, trans_a ? tag::ba : tag::ab);
    dnnl::memory::desc b({k, n}, dt::bf16, trans_b ? tag::ba : tag::ab);
    dnnl::memory::desc c({m, n}, bf16_out ? dt::bf16 : dt::f32, tag::ab);
    dnnl::matmul::primitive_desc pd =
        has_bias ? dnnl::matmul::primitive_desc(Engine(), a, b, dnnl::memory::desc({1, n}, dt::f32, tag::ab), c)
                 : dnnl::matmul::primitive_desc(Engine(), a, b, c);
    it = cache.emplace(key, dnnl::matmul(pd)).first;
  }
  return it->second;
}

ffi::Error MatmulImpl(ffi::Buffer<ffi::BF16> a, ffi::Buffer<ffi::BF16> b, ffi::Buffer<ffi::F32> bias,
                      ffi::Result<ffi::AnyBuffer> c, bool trans_a, bool trans_b) {
  auto ad = a.dimensions();
  auto bd = b.dimensions();
  if (ad.size() != 2 || bd.size() != 2) return ffi::Error::InvalidArgument("onednn_matmul takes 2-D operands");
  int64_t m = trans_a ? ad[1] : ad[0], k = trans_a ? ad[0] : ad[1];
  int64_t kb = trans_b ? bd[1] : bd[0], n = trans_b ? bd[0] : bd[1];
  if (k != kb) return ffi::Error::InvalidArgument("onednn_matmul: contracting dimensions differ");
  bool bf16_out = c->element_type() == ffi::DataType::BF16;
  if (!bf16_out && c->element_type() != ffi::DataType::F32)
    return ffi::Error::InvalidArgument("onednn_matmul: the result must be float32 or bfloat16");
  bool has_bias = bias.element_count() > 0;
  if (has_bias && static_cast<int64_t>(bias.element_count()) != n)
    return ffi::Error::InvalidArgument("onednn_matmul: the bias needs one value per output column");
  // XLA:CPU may run independent thunks on several threads at once; concurrent executions through oneDNN's
  // shared scratchpad corrupted results (a test saw run-to-run loss differences), so calls are serialised.
  // Each call already uses every core through OpenMP.
  static std::mutex execute_mutex;
  std::lock_guard<std::mutex> lock(execute_mutex);
  try {
    const dnnl::matmul& prim = Primitive(m, n, k, trans_a, trans_b, bf16_out, has_bias);
    dnnl::memory am({{m, k}, dt::bf16, trans_a ? tag::ba : tag::ab}, Engine(), a.untyped_data());
    dnnl::memory bm({{k, n}, dt::bf16, trans_b ? tag::ba : tag::ab}, Engine(), b.untyped_data());
    dnnl::memory cm({{m, n}, bf16_out ? dt::bf16 : dt::f32, tag::ab}, Engine(), c->untyped_data());
    std::unordered_map<int, dnnl::memory> args{{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}};
    if (has_bias) args.insert({DNNL_ARG_BIAS, dnnl::memory({{1, n}, dt::f32, tag::ab}, Engine(), bias.untyped_data())});
    dnnl::stream stream(Engine());
    prim.execute(stream, args);
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(e.what());
  }
  return ffi::Error::Success();
}

}  // namespace

// 1 when oneDNN can build a bf16 matmul on this CPU for every variant the handler uses, else 0 (oneDNN has no
// bf16 matmul on CPUs without AVX512-BF16/AMX/AVX2-VNNI-2 ISA support: creating the primitive throws).
extern "C" int OnednnBf16Supported() {
  try {
    for (bool bf16_out : {false, true})
      for (bool has_bias : {false, true})
        for (bool trans : {false, true}) Primitive(3, 5, 4, trans, !trans, bf16_out, has_bias);
    return 1;
  } catch (const dnnl::error&) {
    return 0;
  }
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnMatmulBf16, MatmulImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<bool>("trans_a")
                                  .Attr<bool>("trans_b"));

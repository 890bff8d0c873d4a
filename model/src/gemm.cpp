#include "ferry/model/gemm.hpp"

#include <cblas.h>

#include <mutex>

#include "ferry/core/env.hpp"

namespace ferry::model {

namespace {

CBLAS_TRANSPOSE op(bool trans) {
  return trans ? CblasTrans : CblasNoTrans;
}

// BLAS rejects leading dimensions below 1 even for empty operands.
int ld(int x) {
  return x < 1 ? 1 : x;
}

template <typename T>
bool handle_empty(int m, int n, int k, T beta, T* c, int ldc) {
  if (m <= 0 || n <= 0) return true;
  if (k > 0) return false;
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j)
      c[static_cast<long>(i) * ldc + j] = beta == T(0) ? T(0) : beta * c[static_cast<long>(i) * ldc + j];
  return true;
}

}  // namespace

template <>
void gemm<float>(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float* a, int lda,
                 const float* b, int ldb, float beta, float* c, int ldc) {
  if (handle_empty(m, n, k, beta, c, ldc)) return;
  cblas_sgemm(CblasRowMajor, op(trans_a), op(trans_b), m, n, k, alpha, a, ld(lda), b, ld(ldb), beta, c,
              ld(ldc));
}

template <>
void gemm<double>(bool trans_a, bool trans_b, int m, int n, int k, double alpha, const double* a, int lda,
                  const double* b, int ldb, double beta, double* c, int ldc) {
  if (handle_empty(m, n, k, beta, c, ldc)) return;
  cblas_dgemm(CblasRowMajor, op(trans_a), op(trans_b), m, n, k, alpha, a, ld(lda), b, ld(ldb), beta, c,
              ld(ldc));
}

void configure_blas_threads() {
  static std::once_flag once;
  std::call_once(once, [] {
#ifdef FERRY_MODEL_HAVE_OPENBLAS
    if (env::get("OPENBLAS_NUM_THREADS") || env::get("OMP_NUM_THREADS")) return;  // the user chose
    openblas_set_num_threads(1);
#endif
  });
}

}  // namespace ferry::model

// The one place the model calls BLAS: row-major C = alpha · op(A) · op(B) + beta · C for float and double.
#pragma once

namespace ferry::model {

// op(A) is m×k, op(B) is k×n, C is m×n; all row-major with leading dimensions lda, ldb, ldc (which lets a
// caller address one head's columns inside a wider matrix). Empty products only scale C by beta.
template <typename T>
void gemm(bool trans_a, bool trans_b, int m, int n, int k, T alpha, const T* a, int lda, const T* b, int ldb,
          T beta, T* c, int ldc);

// Pins OpenBLAS to one thread unless OPENBLAS_NUM_THREADS or OMP_NUM_THREADS chose otherwise: ranks share few
// cores, and a multi-threaded BLAS per rank thrashes them. Idempotent; the Model constructor calls it.
void configure_blas_threads();

}  // namespace ferry::model

// Every dense layer's backward pass against central finite differences in double. The objective is a random
// projection of the layer output, L = Σ out ⊙ R, so dout = R exercises every output element.
#include <catch2/catch.hpp>
#include <vector>

#include "ferry/model/attention.hpp"
#include "ferry/model/cross_entropy.hpp"
#include "ferry/model/embedding.hpp"
#include "ferry/model/linear.hpp"
#include "ferry/model/rmsnorm.hpp"
#include "ferry/model/swiglu.hpp"
#include "grad_check.hpp"

using namespace ferry::model;
using namespace ferry::model::testing;

namespace {

void require_close(const GradCheck& c, const char* what) {
  INFO(what << ": relative error " << c.relative_error << " over " << c.checked << " coordinates, |numeric| "
            << c.numeric_norm);
  REQUIRE(c.numeric_norm > 0);
  REQUIRE(c.relative_error < kGradTolerance);
}

}  // namespace

TEST_CASE("embedding backward matches finite differences", "[model][grad]") {
  const int B = 2, T = 3, C = 4, V = 5;
  Rng rng(1);
  auto wte = random_vector(V * C, rng), wpe = random_vector(T * C, rng), r = random_vector(B * T * C, rng);
  const std::vector<int> tokens = {0, 3, 3, 4, 1, 0};  // repeats: the scatter must accumulate
  std::vector<double> out(B * T * C);
  auto f = [&] {
    embedding_forward(out.data(), tokens.data(), wte.data(), wpe.data(), B, T, C);
    return dot(out, r);
  };
  std::vector<double> dwte(V * C, 0), dwpe(T * C, 0);
  embedding_backward(dwte.data(), dwpe.data(), r.data(), tokens.data(), B, T, C);
  require_close(check_gradient(wte, dwte, f), "wte");
  require_close(check_gradient(wpe, dwpe, f), "wpe");
}

TEST_CASE("rmsnorm backward matches finite differences", "[model][grad]") {
  const int N = 5, C = 7;
  Rng rng(2);
  auto x = random_vector(N * C, rng), w = random_vector(C, rng, 2.0), r = random_vector(N * C, rng);
  std::vector<double> out(N * C), rstd(N);
  auto f = [&] {
    rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, 1e-5);
    return dot(out, r);
  };
  f();
  std::vector<double> dx(N * C, 0), dw(C, 0);
  rmsnorm_backward(dx.data(), dw.data(), r.data(), x.data(), w.data(), rstd.data(), N, C);
  require_close(check_gradient(x, dx, f), "x");
  require_close(check_gradient(w, dw, f), "w");
}

TEST_CASE("linear backward matches finite differences", "[model][grad]") {
  const int N = 4, IN = 5, OUT = 3;
  Rng rng(3);
  auto x = random_vector(N * IN, rng), w = random_vector(IN * OUT, rng), r = random_vector(N * OUT, rng);
  std::vector<double> y(N * OUT);
  auto f = [&] {
    linear_forward(y.data(), x.data(), w.data(), N, IN, OUT);
    return dot(y, r);
  };
  std::vector<double> dx(N * IN, 0), dw(IN * OUT, 0);
  linear_backward(dx.data(), dw.data(), r.data(), x.data(), w.data(), N, IN, OUT);
  require_close(check_gradient(x, dx, f), "x");
  require_close(check_gradient(w, dw, f), "w");
}

TEST_CASE("causal attention backward matches finite differences", "[model][grad]") {
  const int B = 2, T = 5, C = 8, NH = 2;
  Rng rng(4);
  // Weights large enough that the softmax is far from uniform (a uniform softmax hides scale errors).
  auto x = random_vector(B * T * C, rng), wqkv = random_vector(C * 3 * C, rng, 0.8),
       wo = random_vector(C * C, rng, 0.5), r = random_vector(B * T * C, rng);
  std::vector<double> out(B * T * C);
  AttentionActs<double> acts;
  auto f = [&] {
    attention_forward(out.data(), acts, x.data(), wqkv.data(), wo.data(), B, T, C, NH);
    return dot(out, r);
  };
  f();
  std::vector<double> dx(B * T * C, 0), dwqkv(C * 3 * C, 0), dwo(C * C, 0);
  attention_backward(dx.data(), dwqkv.data(), dwo.data(), r.data(), acts, x.data(), wqkv.data(), wo.data(), B,
                     T, C, NH);
  require_close(check_gradient(x, dx, f), "x");
  require_close(check_gradient(wqkv, dwqkv, f), "wqkv");
  require_close(check_gradient(wo, dwo, f), "wo");
}

TEST_CASE("attention is causal: later tokens do not change earlier outputs", "[model]") {
  const int B = 1, T = 6, C = 8, NH = 2;
  Rng rng(5);
  auto x = random_vector(T * C, rng), wqkv = random_vector(C * 3 * C, rng), wo = random_vector(C * C, rng);
  std::vector<double> before(T * C), after(T * C);
  AttentionActs<double> acts;
  attention_forward(before.data(), acts, x.data(), wqkv.data(), wo.data(), B, T, C, NH);
  for (int c = 0; c < C; ++c) x[(T - 1) * C + c] += 1.0;  // change only the last position
  attention_forward(after.data(), acts, x.data(), wqkv.data(), wo.data(), B, T, C, NH);
  for (int i = 0; i < (T - 1) * C; ++i) REQUIRE(before[i] == after[i]);
  bool last_changed = false;
  for (int c = 0; c < C; ++c) last_changed |= before[(T - 1) * C + c] != after[(T - 1) * C + c];
  REQUIRE(last_changed);
}

TEST_CASE("swiglu backward matches finite differences", "[model][grad]") {
  const int N = 4, C = 6, H = 5;
  Rng rng(6);
  auto x = random_vector(N * C, rng), w13 = random_vector(C * 2 * H, rng), w2 = random_vector(H * C, rng),
       r = random_vector(N * C, rng);
  std::vector<double> y(N * C);
  SwiGLUActs<double> acts;
  auto f = [&] {
    swiglu_forward(y.data(), acts, x.data(), w13.data(), w2.data(), N, C, H);
    return dot(y, r);
  };
  f();
  std::vector<double> dx(N * C, 0), dw13(C * 2 * H, 0), dw2(H * C, 0);
  swiglu_backward(dx.data(), dw13.data(), dw2.data(), r.data(), acts, x.data(), w13.data(), w2.data(), N, C,
                  H);
  require_close(check_gradient(x, dx, f), "x");
  require_close(check_gradient(w13, dw13, f), "w13");
  require_close(check_gradient(w2, dw2, f), "w2");
}

TEST_CASE("swiglu accepts an empty batch (an expert without tokens)", "[model]") {
  std::vector<double> w13(4 * 6, 0.1), w2(3 * 4, 0.1), dw13(w13.size(), 0), dw2(w2.size(), 0);
  SwiGLUActs<double> acts;
  swiglu_forward<double>(nullptr, acts, nullptr, w13.data(), w2.data(), 0, 4, 3);
  swiglu_backward<double>(nullptr, dw13.data(), dw2.data(), nullptr, acts, nullptr, w13.data(), w2.data(), 0,
                          4, 3);
  for (double g : dw13) REQUIRE(g == 0);
}

TEST_CASE("cross-entropy backward matches finite differences and the loss is right", "[model][grad]") {
  const int N = 3, V = 6;
  Rng rng(7);
  auto logits = random_vector(N * V, rng, 3.0);
  const std::vector<int> targets = {2, 0, 5};
  std::vector<double> probs(N * V);
  const double dloss = 0.7;  // a weighted loss, as the MTP's λ
  auto f = [&] { return dloss * cross_entropy_forward(probs.data(), logits.data(), targets.data(), N, V); };
  const double loss = f() / dloss;
  double expected = 0;
  for (int i = 0; i < N; ++i) {
    double sum = 0;
    for (int v = 0; v < V; ++v) sum += std::exp(logits[i * V + v]);
    expected -= std::log(std::exp(logits[i * V + targets[i]]) / sum) / N;
  }
  REQUIRE(loss == Approx(expected).epsilon(1e-12));
  std::vector<double> dlogits(N * V, 0);
  cross_entropy_backward(dlogits.data(), probs.data(), targets.data(), N, V, dloss);
  require_close(check_gradient(logits, dlogits, f), "logits");
}

TEST_CASE("float layers agree with the double reference", "[model]") {
  // The float instantiation runs the same code through sgemm; it must track double to float precision.
  const int B = 2, T = 4, C = 8, NH = 2;
  Rng rng(8);
  auto x = random_vector(B * T * C, rng), wqkv = random_vector(C * 3 * C, rng),
       wo = random_vector(C * C, rng);
  std::vector<float> xf(x.begin(), x.end()), wqkvf(wqkv.begin(), wqkv.end()), wof(wo.begin(), wo.end());
  std::vector<double> out(B * T * C);
  std::vector<float> outf(B * T * C);
  AttentionActs<double> acts;
  AttentionActs<float> actsf;
  attention_forward(out.data(), acts, x.data(), wqkv.data(), wo.data(), B, T, C, NH);
  attention_forward(outf.data(), actsf, xf.data(), wqkvf.data(), wof.data(), B, T, C, NH);
  for (int i = 0; i < B * T * C; ++i) REQUIRE(outf[i] == Approx(out[i]).margin(1e-5));
}

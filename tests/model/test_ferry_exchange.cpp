// FerryExpertExchange in one process: an in-process 2 x 2 cluster, each rank a thread running the MoE layer
// on its quarter of the tokens with a quarter of the experts, against one MoE layer holding every expert
// (LocalExpertExchange) on all tokens. Forward outputs, input gradients and parameter gradients must agree.
#include <catch2/catch.hpp>
#include <cmath>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "ferry/buffer.hpp"
#include "ferry/model/expert_exchange.hpp"
#include "ferry/model/ferry_expert_exchange.hpp"
#include "ferry/model/moe_layer.hpp"

using namespace ferry::model;

namespace {

struct Params {
  std::vector<float> gate, shared_w13, shared_w2, experts_w13, experts_w2;

  MoEWeights<float> weights() const {
    return {gate.data(), shared_w13.data(), shared_w2.data(), experts_w13.data(), experts_w2.data()};
  }
  MoEGrads<float> grads() {
    return {gate.data(), shared_w13.data(), shared_w2.data(), experts_w13.data(), experts_w2.data()};
  }
};

Params make_params(const MoEShape& s, std::mt19937& rng, bool zero) {
  std::normal_distribution<float> normal(0.0f, 0.3f);
  const int C = s.dim, H = s.hidden, E = s.router.experts;
  auto fill = [&](std::size_t n) {
    std::vector<float> v(n, 0.0f);
    if (!zero)
      for (float& x : v) x = normal(rng);
    return v;
  };
  return {fill(static_cast<std::size_t>(C) * E), fill(static_cast<std::size_t>(C) * 2 * H),
          fill(static_cast<std::size_t>(H) * C), fill(static_cast<std::size_t>(E) * C * 2 * H),
          fill(static_cast<std::size_t>(E) * H * C)};
}

void require_close(const std::vector<float>& a, const std::vector<float>& b, const char* what) {
  REQUIRE(a.size() == b.size());
  double worst = 0, norm = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    worst = std::max(worst, static_cast<double>(std::abs(a[i] - b[i])));
    norm = std::max(norm, static_cast<double>(std::abs(b[i])));
  }
  INFO(what << ": largest difference " << worst << ", largest value " << norm);
  REQUIRE(norm > 0);
  REQUIRE(worst <= 1e-5 * norm);
}

}  // namespace

TEST_CASE("FerryExpertExchange on 2 nodes x 2 ranks matches LocalExpertExchange", "[unit]") {
  constexpr int kNodes = 2, kLocal = 2, kRanks = kNodes * kLocal, kBatch = 2, kSeq = 8;
  MoEShape shape;
  shape.dim = 16;
  shape.hidden = 12;
  shape.router = RouterShape{8, 2, 4, 2, 1.0};
  shape.balance_alpha = 0;  // its gradient is a per-rank mean: covered by the trainer's test, not here
  const int C = shape.dim, n = kRanks * kBatch * kSeq, per_rank = kBatch * kSeq;

  std::mt19937 rng(17);
  const Params params = make_params(shape, rng, false);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<std::size_t>(n) * C), dy(x.size());
  for (float& v : x) v = normal(rng);
  for (float& v : dy) v = normal(rng);

  // Reference: every expert local, all tokens at once.
  MoELayer<float> whole(shape, std::make_unique<LocalExpertExchange<float>>(8));
  std::vector<float> y_ref(x.size(), 0.0f), dx_ref(x.size(), 0.0f);
  Params g_ref = make_params(shape, rng, true);
  whole.forward(y_ref.data(), x.data(), kRanks * kBatch, kSeq, params.weights());
  whole.backward(dx_ref.data(), g_ref.grads(), dy.data(), x.data(), params.weights());

  ferry::LocalCluster cluster(kNodes, kLocal, expert_exchange_config(ModelConfig{}, kNodes));
  std::vector<std::shared_ptr<ferry::Buffer>> buffers;
  std::vector<std::unique_ptr<MoELayer<float>>> layers;
  for (int r = 0; r < kRanks; ++r) {
    buffers.push_back(std::make_shared<ferry::Buffer>(cluster, r));
    layers.push_back(
        std::make_unique<MoELayer<float>>(shape, std::make_unique<FerryExpertExchange>(buffers[r], 8)));
  }
  std::vector<float> y(x.size(), 0.0f), dx(x.size(), 0.0f);
  std::vector<Params> grads;
  for (int r = 0; r < kRanks; ++r) grads.push_back(make_params(shape, rng, true));
  std::vector<std::exception_ptr> errors(kRanks);
  std::vector<std::thread> threads;
  for (int r = 0; r < kRanks; ++r) {
    threads.emplace_back([&, r] {
      try {
        const std::size_t off = static_cast<std::size_t>(r) * per_rank * C;
        layers[r]->forward(y.data() + off, x.data() + off, kBatch, kSeq, params.weights());
        layers[r]->backward(dx.data() + off, grads[r].grads(), dy.data() + off, x.data() + off,
                            params.weights());
      } catch (...) {
        errors[r] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);

  require_close(y, y_ref, "y");
  require_close(dx, dx_ref, "dx");
  // Dense parameters: each rank has its tokens' share, the shares add up to the whole.
  std::vector<float> gate(g_ref.gate.size(), 0.0f), shared(g_ref.shared_w13.size(), 0.0f);
  for (const Params& g : grads)
    for (std::size_t i = 0; i < gate.size(); ++i) gate[i] += g.gate[i];
  for (const Params& g : grads)
    for (std::size_t i = 0; i < shared.size(); ++i) shared[i] += g.shared_w13[i];
  require_close(gate, g_ref.gate, "gate gradient");
  require_close(shared, g_ref.shared_w13, "shared expert gradient");
  // Experts: rank r alone holds experts 2r, 2r+1 and their whole gradient; the others' slices stay zero.
  std::vector<float> w13(g_ref.experts_w13.size(), 0.0f), w2(g_ref.experts_w2.size(), 0.0f);
  const std::size_t w13_size = w13.size() / 8, w2_size = w2.size() / 8;
  for (int r = 0; r < kRanks; ++r) {
    for (std::size_t i = 0; i < w13.size(); ++i) {
      const bool mine = static_cast<int>(i / w13_size) / 2 == r;
      if (mine)
        w13[i] = grads[r].experts_w13[i];
      else
        REQUIRE(grads[r].experts_w13[i] == 0.0f);
    }
    for (std::size_t i = 0; i < w2.size(); ++i)
      if (static_cast<int>(i / w2_size) / 2 == r) w2[i] = grads[r].experts_w2[i];
  }
  require_close(w13, g_ref.experts_w13, "experts w13 gradient");
  require_close(w2, g_ref.experts_w2, "experts w2 gradient");
}

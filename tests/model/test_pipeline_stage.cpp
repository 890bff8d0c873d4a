// Pipeline stages cut from the model compute what the whole model computes (the MTP module on the last stage
// included), and the zero-bubble split of backward (B now, W later) gives the gradients of a plain backward.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include "ferry/core/error.hpp"
#include "ferry/model/data.hpp"
#include "ferry/model/model.hpp"
#include "ferry/model/pipeline/stage.hpp"
#include "ferry/model/pipeline/weight_grad.hpp"
#include "ferry/model/rng.hpp"
#include "model_fixtures.hpp"

using namespace ferry::model;
using namespace ferry::model::pipeline;
using namespace ferry::model::testing;

namespace {

double relative_l2(std::span<const float> a, std::span<const float> b) {
  double diff = 0, norm = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    norm += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(diff / norm);
}

}  // namespace

TEST_CASE("stage_range splits the blocks evenly and refuses empty stages", "[pipeline]") {
  ModelConfig c = four_block_model(false);
  c.layers = 5;
  CHECK(stage_range(c, 0, 2).first_layer == 0);
  CHECK(stage_range(c, 0, 2).end_layer == 3);
  CHECK(stage_range(c, 1, 2).first_layer == 3);
  CHECK(stage_range(c, 1, 2).end_layer == 5);
  CHECK(stage_range(c, 0, 2).embeds());
  CHECK(stage_range(c, 1, 2).has_head());
  CHECK_THROWS_WITH(stage_range(c, 0, 6), Catch::Contains("at least 6 layers"));
  CHECK_THROWS_WITH(stage_range(c, 2, 2), Catch::Contains("does not exist"));
}

TEST_CASE("stages chained over micro-batches equal the whole model on the whole batch", "[pipeline]") {
  ModelConfig c = four_block_model(false);
  c.mtp = GENERATE(false, true);
  const int rows = 4, stages = GENERATE(2, 4), micro = 2;
  INFO("mtp " << c.mtp << ", " << stages << " stages");
  const auto tokens = random_tokens(c, rows, 17);

  Model<float> whole(c);
  whole.zero_grad();
  whole.forward(tokens.data(), rows);
  whole.backward();
  const std::vector<float> want(whole.params().grads().begin(), whole.params().grads().end());

  Model<float> piped(c);
  piped.zero_grad();
  std::vector<std::vector<std::unique_ptr<StageSlot>>> slots(micro);
  double main = 0, mtp = 0, balance = 0;
  const int micro_rows = rows / micro;
  for (int m = 0; m < micro; ++m) {
    const std::uint8_t* mb = tokens.data() + static_cast<std::size_t>(m) * micro_rows * (c.seq + 2);
    const float* x = nullptr;
    for (int s = 0; s < stages; ++s) {
      slots[m].push_back(std::make_unique<StageSlot>(piped, stage_range(c, s, stages), local_exchanges()));
      x = slots[m][s]->forward(piped, mb, micro_rows, x);
      balance += slots[m][s]->losses().balance;
    }
    REQUIRE(x == nullptr);  // the last stage ends in the loss
    main += slots[m].back()->losses().main;
    mtp += slots[m].back()->losses().mtp;
    // Backward as B (weight gradients deferred) then W, stage by stage.
    const float* d = nullptr;
    for (int s = stages - 1; s >= 0; --s) {
      WeightGradQueue queue;
      {
        DeferWeightGrads defer(queue);
        d = slots[m][s]->backward(piped, d);
      }
      CHECK_FALSE(queue.empty());
      queue.run();
      CHECK(queue.empty());
    }
    CHECK(d == nullptr);  // the first stage ends in the embedding
  }
  // Micro-batch losses are means: their mean is the whole batch's, their gradients sum to micro × its.
  CHECK(main / micro == Approx(whole.losses().main).epsilon(1e-6));
  CHECK(mtp / micro == Approx(whole.losses().mtp).epsilon(1e-6));
  CHECK((mtp > 0) == c.mtp);
  CHECK(balance / micro == Approx(whole.losses().balance).epsilon(1e-5));
  auto got = piped.params().grads();
  for (float& g : got) g /= micro;
  const double diff = relative_l2(got, want);
  INFO("stages " << stages << ": gradients differ by " << diff << " (relative L2)");
  CHECK(diff <= 1e-6);
}

TEST_CASE("B then W equals a plain backward, and deferral is per thread", "[pipeline]") {
  const ModelConfig c = four_block_model(false);
  const auto tokens = random_tokens(c, 2, 5);
  Model<float> plain(c), split(c);
  StageSlot a(plain, stage_range(c, 0, 1), local_exchanges());
  StageSlot b(split, stage_range(c, 0, 1), local_exchanges());
  plain.zero_grad();
  split.zero_grad();
  a.forward(plain, tokens.data(), 2, nullptr);
  b.forward(split, tokens.data(), 2, nullptr);
  a.backward(plain, nullptr);
  WeightGradQueue queue;
  {
    DeferWeightGrads defer(queue);
    b.backward(split, nullptr);
  }
  REQUIRE(deferred_weight_grads() == nullptr);
  // Before W only vectors (norms), the embedding and nothing else carry gradient; after it, everything.
  const auto& head = split.params().find("head");
  const auto grads = split.params().grads();
  double head_before = 0;
  for (std::size_t i = head.offset; i < head.offset + head.size; ++i) head_before += std::abs(grads[i]);
  CHECK(head_before == 0);
  queue.run();
  CHECK(relative_l2(split.params().grads(), plain.params().grads()) == 0);
}

TEST_CASE("the last stage holds the MTP: its MoE layer is the model's last, its wte gradient the model's",
          "[pipeline]") {
  ModelConfig c = four_block_model(false);
  c.mtp = true;
  Model<float> model(c);
  StageSlot first(model, stage_range(c, 0, 2), local_exchanges());
  StageSlot last(model, stage_range(c, 1, 2), local_exchanges());
  CHECK(first.moe_indices() == std::vector<int>{0});       // block 1 (block 0 is dense)
  CHECK(last.moe_indices() == std::vector<int>{1, 2, 3});  // blocks 2, 3 and the MTP block
  REQUIRE(last.moe_layers().size() == 3);

  // The last stage alone writes wte's gradient (through the MTP's next-token embedding), into the model's one
  // gradient array: no second copy to synchronise.
  const auto tokens = random_tokens(c, 2, 9);
  std::vector<float> input(static_cast<std::size_t>(2) * c.seq * c.dim, 0.5f);
  model.zero_grad();
  last.forward(model, tokens.data(), 2, input.data());
  CHECK(last.losses().mtp > 0);
  last.backward(model, nullptr);
  const ParamInfo& wte = model.params().find("wte");
  double norm = 0;
  for (std::size_t i = wte.offset; i < wte.offset + wte.size; ++i)
    norm += std::abs(model.params().grads()[i]);
  CHECK(norm > 0);
}

// RMSNorm recomputation (DeepSeek-V3's memory saving): with it every norm's output is dropped after forward
// and recomputed in backward. Gradients must be bit-identical to the stored path, in the whole model, in
// pipeline stages with the B/W split, and over a few training steps; and the activation peak must shrink by
// exactly the norm outputs no longer kept, less the one buffer backward recomputes into at a time.
#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <vector>

#include "ferry/model/data.hpp"
#include "ferry/model/model.hpp"
#include "ferry/model/pipeline/stage.hpp"
#include "ferry/model/pipeline/weight_grad.hpp"
#include "ferry/model/rng.hpp"
#include "ferry/model/trainer.hpp"
#include "model_fixtures.hpp"

using namespace ferry::model;
using namespace ferry::model::pipeline;
using namespace ferry::model::testing;

namespace {

// Dense and MoE blocks, MTP with an MoE block: every kind of RMSNorm the model has.
ModelConfig config_with_every_norm() {
  return four_block_model(true);
}

bool same_bits(std::span<const float> a, std::span<const float> b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size_bytes()) == 0;
}

}  // namespace

TEST_CASE("recomputed RMSNorms give the stored path's gradients bit for bit and a smaller peak",
          "[model][recompute]") {
  const ModelConfig c = config_with_every_norm();
  const int rows = 3;
  const auto tokens = random_tokens(c, rows, 11);
  Model<float> stored(c), recomputed(c);
  recomputed.set_recompute_norms(true);
  for (Model<float>* m : {&stored, &recomputed}) {
    m->zero_grad();
    m->forward(tokens.data(), rows);
    m->backward();
  }
  CHECK(std::memcmp(&stored.losses(), &recomputed.losses(), sizeof(LossParts)) == 0);
  CHECK(same_bits(stored.params().grads(), recomputed.params().grads()));

  // Dropped: ln1 and ln2 of the 4 blocks and of the MTP block, the final norm, the MTP's features and its
  // normalised inputs [n, 2C]; recomputed at once at most: those inputs.
  const std::size_t n_c_bytes = static_cast<std::size_t>(rows) * c.seq * c.dim * sizeof(float);
  const std::size_t dropped = (2 * (c.layers + 1) + 1 + 1 + 2) * n_c_bytes, transient = 2 * n_c_bytes;
  INFO("peak " << stored.peak_activation_bytes() << " bytes stored, " << recomputed.peak_activation_bytes()
               << " recomputed");
  CHECK(stored.peak_activation_bytes() - recomputed.peak_activation_bytes() == dropped - transient);
}

TEST_CASE("recompute under the B/W split of pipeline stages: the same gradients bit for bit",
          "[model][recompute][pipeline]") {
  const ModelConfig c = config_with_every_norm();
  const auto tokens = random_tokens(c, 2, 13);
  const ExchangeFactory<float> local = local_exchanges();
  Model<float> stored(c), recomputed(c);
  recomputed.set_recompute_norms(true);
  std::vector<std::size_t> peaks;
  for (Model<float>* m : {&stored, &recomputed}) {
    m->zero_grad();
    StageSlot first(*m, stage_range(c, 0, 2), local), last(*m, stage_range(c, 1, 2), local);
    const float* x = first.forward(*m, tokens.data(), 2, nullptr);
    last.forward(*m, tokens.data(), 2, x);
    WeightGradQueue queue;
    {
      DeferWeightGrads defer(queue);
      const float* d = last.backward(*m, nullptr);
      first.backward(*m, d);
    }
    queue.run();
    peaks.push_back(last.peak_activation_bytes());
  }
  CHECK(same_bits(stored.params().grads(), recomputed.params().grads()));
  CHECK(peaks[1] < peaks[0]);
}

TEST_CASE("training with recompute takes the same steps and reports a smaller activation peak",
          "[model][recompute][train]") {
  const ModelConfig c = config_with_every_norm();
  TrainConfig t;
  t.batch = 2;
  t.steps = 3;
  t.warmup_steps = 1;
  const auto data = std::make_shared<const DataSource>(DataSource::synthetic(7, 1 << 16));
  Trainer stored(c, t, data);
  t.recompute_norms = true;
  Trainer recomputed(c, t, data);
  for (int s = 0; s < 3; ++s) {
    const StepStats a = stored.step(), b = recomputed.step();
    CHECK(std::memcmp(&a.loss, &b.loss, sizeof a.loss) == 0);
    CHECK(std::memcmp(&a.grad_norm, &b.grad_norm, sizeof a.grad_norm) == 0);
    CHECK(b.activation_peak_bytes > 0);
    CHECK(b.activation_peak_bytes < a.activation_peak_bytes);
  }
  CHECK(same_bits(stored.model().params().values(), recomputed.model().params().values()));
}

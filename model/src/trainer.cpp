#include "ferry/model/trainer.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <string>

#include "ferry/core/error.hpp"
#include "ferry/model/checkpoint.hpp"
#include "ferry/model/json.hpp"

namespace ferry::model {

namespace {

// Collective: what keeps the ranks from resuming together, as rank `collective.rank()` sees it: the
// problems other ranks had with their files, or files that disagree on run or step (a crash between two
// ranks' saves); "" when every rank may go on. This rank's own problem is its own to report.
std::string disagreement(Collective& collective, const std::string& path, const std::string& problem,
                         std::int64_t step, std::uint64_t run_id) {
  const nlohmann::json mine{{"path", path}, {"problem", problem}, {"step", step}, {"run_id", run_id}};
  std::vector<nlohmann::json> all;
  for (const std::string& text : collective.all_gather(mine.dump()))
    all.push_back(nlohmann::json::parse(text));
  std::string others;
  // Every rank's problems, its own included: whichever rank's message a launcher prints first (it may stop
  // the others once one has failed) names the rank and the file.
  for (std::size_t r = 0; r < all.size(); ++r) {
    const auto theirs = all[r]["problem"].get<std::string>();
    if (!theirs.empty()) others += (others.empty() ? "rank " : "; rank ") + std::to_string(r) + ": " + theirs;
  }
  if (!others.empty() || !problem.empty()) return others;
  bool agree = true;
  for (const auto& file : all)
    agree = agree && file["step"] == all[0]["step"] && file["run_id"] == all[0]["run_id"];
  if (agree) return "";
  std::string list;
  for (std::size_t r = 0; r < all.size(); ++r)
    list += (r ? ", rank " : "rank ") + std::to_string(r) + " (" + all[r]["path"].get<std::string>() +
            ") at step " + std::to_string(all[r]["step"].get<std::int64_t>()) + " of run " +
            std::to_string(all[r]["run_id"].get<std::uint64_t>());
  return "the ranks' checkpoints do not agree: " + list +
         ". A crash between two ranks' saves, or files of different runs: resume from a set saved at one "
         "step "
         "of one run";
}

}  // namespace

Trainer::Trainer(const ModelConfig& model_config, const TrainConfig& train_config,
                 std::shared_ptr<const DataSource> data, Parallelism parallel)
    : train_(train_config),
      parallel_(std::move(parallel)),
      data_(std::move(data)),
      model_(model_config, parallel_.exchange_factory),
      adam_(model_.params().size()),
      ema_(model_.params().values().begin(), model_.params().values().end()),
      data_rng_(train_config.data_seed) {
  train_.validate();
  if (!data_) fail(Errc::invalid_argument, "Trainer needs a data source");
  model_.set_recompute_norms(train_.recompute_norms);
  // Every rank's checkpoints carry rank 0's draw: a resume can tell files of two runs apart.
  std::random_device device;
  run_id_ = (static_cast<std::uint64_t>(device()) << 32) | device();
  if (parallel_.collective)
    run_id_ = std::stoull(parallel_.collective->all_gather(std::to_string(run_id_)).at(0));
  batch_.resize(static_cast<std::size_t>(ranks()) * train_.batch * (model_config.seq + 2));
}

StepStats Trainer::step() {
  // Every rank draws the whole global batch and keeps its own rows: the ranks together see exactly the
  // batch one process with ranks · batch rows would, and every rank's data RNG stays in the same state.
  const int seq = model_.config().seq;
  data_->sample(batch_.data(), data_rng_, ranks() * train_.batch, seq);
  if (parallel_.step_gradients) {
    const auto start = std::chrono::steady_clock::now();
    const ReducedStep reduced = parallel_.step_gradients(model_, batch_.data(), ranks() * train_.batch);
    return finish_step(start, reduced, true);
  }
  return step(batch_.data() + static_cast<std::size_t>(rank()) * train_.batch * (seq + 2));
}

StepStats Trainer::step(const std::uint8_t* tokens) {
  const auto start = std::chrono::steady_clock::now();
  model_.zero_grad();
  model_.forward(tokens, train_.batch);
  model_.backward();
  if (ranks() > 1) {
    const ReducedStep reduced = reduce_step(*parallel_.collective, model_.params(), model_.losses(),
                                            model_.expert_loads(), model_.peak_activation_bytes());
    return finish_step(start, reduced, true);
  }
  ReducedStep local;
  local.losses = model_.losses();
  local.loads = model_.expert_loads();
  local.activation_peak_bytes = model_.peak_activation_bytes();
  return finish_step(start, local, false);
}

StepStats Trainer::finish_step(std::chrono::steady_clock::time_point start, const ReducedStep& reduced,
                               bool norm_known) {
  auto& params = model_.params();
  const LossParts& losses = reduced.losses;
  const std::vector<ExpertLoad>& loads = reduced.loads;
  StepStats stats;
  stats.step = step_;
  stats.activation_peak_bytes = static_cast<std::int64_t>(reduced.activation_peak_bytes);
  if (norm_known) {
    stats.grad_norm = reduced.grad_norm;
    // clip_grad_norm()'s scaling, with the norm of the whole run's gradients.
    if (train_.grad_clip > 0 && stats.grad_norm > train_.grad_clip) {
      const float scale = static_cast<float>(train_.grad_clip / stats.grad_norm);
      for (float& g : params.grads()) g *= scale;
    }
  } else {
    stats.grad_norm = clip_grad_norm(params.grads(), train_.grad_clip);
  }
  stats.lr = learning_rate(step_, train_);
  adam_.step(params.values(), params.grads(), params.info(), stats.lr, train_);
  ema_update(ema_, params.values(), train_.ema_decay);

  stats.loss = losses.total;
  stats.main_loss = losses.main;
  stats.mtp_loss = losses.mtp;
  stats.balance_loss = losses.balance;
  stats.tokens = static_cast<std::int64_t>(ranks()) * train_.batch * model_.config().seq;
  for (const ExpertLoad& load : loads) {
    stats.expert_load.push_back(load.counts);
    stats.load_max_over_mean = std::max(stats.load_max_over_mean, load.max_over_mean());
  }
  // Balancing reacts to the load this step saw (the whole run's), after the optimizer step, as DeepSeek-V3
  // describes.
  const auto layers = model_.moe_layers();
  for (std::size_t l = 0; l < layers.size(); ++l)
    update_balance_bias(layers[l]->bias().data(), loads[l], train_.bias_update_rate);
  ++step_;
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  stats.tokens_per_s = stats.seconds > 0 ? static_cast<double>(stats.tokens) / stats.seconds : 0;
  return stats;
}

void Trainer::save(const std::string& path) const {
  TrainerState state;
  state.model = model_.config();
  state.train = train_;
  state.job = JobFingerprint{run_id_, ranks(), rank(), parallel_.pipeline_ranks};
  state.step = step_;
  state.adam_steps = adam_.steps();
  state.data_rng = data_rng_.state();
  const auto values = model_.params().values();
  state.params.assign(values.begin(), values.end());
  state.adam_m = adam_.m();
  state.adam_v = adam_.v();
  state.ema = ema_;
  for (const MoELayer<float>* layer : model_.moe_layers()) state.balance_bias.push_back(layer->bias());
  save_checkpoint(path, state);
}

std::string Trainer::resume_problem(const TrainerState& state, const std::string& path) const {
  const std::string difference = config_difference(state.model, model_.config());
  if (!difference.empty())
    return "checkpoint " + path + " was written for another model (" + difference + ")";
  const JobFingerprint& job = state.job;
  if (job.world_size != ranks())
    return "checkpoint " + path + " was written by a run of " + std::to_string(job.world_size) +
           " rank(s), this run has " + std::to_string(ranks());
  if (job.rank != rank())
    return "checkpoint " + path + " is rank " + std::to_string(job.rank) + "'s, read by rank " +
           std::to_string(rank());
  if (job.pipeline_ranks != parallel_.pipeline_ranks)
    return "checkpoint " + path + " was written with " + std::to_string(job.pipeline_ranks) +
           " pipeline rank(s) per replica, this run has " + std::to_string(parallel_.pipeline_ranks) +
           " (experts are trained where the layout puts them)";
  const std::size_t n = model_.params().size();
  if (state.params.size() != n || state.ema.size() != n || state.adam_m.size() != n ||
      state.adam_v.size() != n || state.balance_bias.size() != model_.moe_layers().size())
    return "checkpoint " + path + " does not match the model's parameter layout";
  // A resume at or past the end would train nothing and save over the file as if it had.
  if (state.step >= train_.steps)
    return "checkpoint " + path + " is at step " + std::to_string(state.step) + ", not below the run's " +
           std::to_string(train_.steps) + " steps (--steps): nothing is left to train";
  return "";
}

std::uint64_t Trainer::checkpoint_bytes_bound() const {
  // Four float arrays of the parameters, the balancing biases, three config JSONs and the fixed fields;
  // 1 MiB covers the JSON and the header many times over.
  std::uint64_t floats = 4 * static_cast<std::uint64_t>(model_.params().size());
  for (const MoELayer<float>* layer : model_.moe_layers()) floats += layer->bias().size() + 2;
  return floats * sizeof(float) + (std::uint64_t{1} << 20);
}

void Trainer::load(const std::string& path) {
  // Every rank reads and checks its own file, then (with several ranks) the ranks compare what they found,
  // all of them, even after a failure here: a rank that gave up alone would leave the others waiting.
  TrainerState state;
  std::string problem;
  std::optional<ferry::Error> error;
  try {
    state = load_checkpoint(path, checkpoint_bytes_bound());
    problem = resume_problem(state, path);
  } catch (const ferry::Error& e) {
    problem = e.what();
    error = e;
  }
  const std::string elsewhere =
      ranks() > 1 ? disagreement(*parallel_.collective, path, problem, state.step, state.job.run_id) : "";
  if (!elsewhere.empty())
    fail(error ? error->code() : Errc::invalid_argument, "cannot resume: " + elsewhere);
  if (error) throw *error;
  if (!problem.empty()) fail(Errc::invalid_argument, problem);
  restore(std::move(state), path);
}

void Trainer::restore(TrainerState state, const std::string& path) {
  auto values = model_.params().values();
  auto layers = model_.moe_layers();
  std::copy(state.params.begin(), state.params.end(), values.begin());
  adam_.m() = std::move(state.adam_m);
  adam_.v() = std::move(state.adam_v);
  adam_.set_steps(state.adam_steps);
  ema_ = std::move(state.ema);
  for (std::size_t l = 0; l < layers.size(); ++l) {
    if (state.balance_bias[l].size() != layers[l]->bias().size())
      fail(Errc::invalid_argument, "checkpoint " + path + ": MoE layer " + std::to_string(l) + " has " +
                                       std::to_string(state.balance_bias[l].size()) + " biases, the model " +
                                       std::to_string(layers[l]->bias().size()));
    layers[l]->bias() = std::move(state.balance_bias[l]);
  }
  data_rng_.set_state(state.data_rng);
  step_ = state.step;
  run_id_ = state.job.run_id;
}

std::vector<StepStats> run_training(const RunOptions& options,
                                    const std::function<void(const StepStats&)>& on_step) {
  if (options.save_every < 0 || options.stop_after < 0)
    fail(Errc::invalid_argument, "run_training: save_every (" + std::to_string(options.save_every) +
                                     ") and stop_after (" + std::to_string(options.stop_after) +
                                     ") must be >= 0");
  auto data = options.data_source ? options.data_source
                                  : std::make_shared<const DataSource>(DataSource::from_config(options.data));
  Trainer trainer(options.model, options.train, data, options.parallel);
  if (!options.resume_from.empty()) trainer.load(options.resume_from);
  std::vector<StepStats> history;
  std::int64_t ran = 0;
  while (trainer.steps_done() < options.train.steps &&
         (options.stop_after <= 0 || ran < options.stop_after)) {
    ++ran;
    history.push_back(trainer.step());
    if (on_step) on_step(history.back());
    if (!options.save_to.empty() && options.save_every > 0 && trainer.steps_done() % options.save_every == 0)
      trainer.save(options.save_to);
  }
  if (!options.save_to.empty()) trainer.save(options.save_to);
  return history;
}

std::string format_step(const StepStats& s) {
  char line[320];
  std::snprintf(
      line, sizeof line,
      "step %5lld | loss %.4f (main %.4f mtp %.4f bal %.2e) | lr %.2e | grad %.3f | load max/mean %.2f | "
      "act %.1f KiB | %.0f tok/s",
      static_cast<long long>(s.step), s.loss, s.main_loss, s.mtp_loss, s.balance_loss, s.lr, s.grad_norm,
      s.load_max_over_mean, static_cast<double>(s.activation_peak_bytes) / 1024, s.tokens_per_s);
  return line;
}

}  // namespace ferry::model

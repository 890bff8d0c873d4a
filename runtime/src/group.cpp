#include "ferry/group.hpp"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "ferry/core/error.hpp"
#include "ferry/transport/store.hpp"
#include "secret_handoff.hpp"

namespace ferry {

struct Group::Impl {
  JobEnv job;
  std::unique_ptr<transport::StoreServer> server;  // rank 0 of a whole job only; sub-groups use their root's
  std::unique_ptr<transport::Store> store;
  std::string key_prefix;        // on every key of `store`: empty for a whole job, see split()
  std::uint16_t store_port = 0;  // where `store` connected (job.store_port may be 0 on the rank hosting it)
  std::vector<RankInfo> ranks;
  Duration timeout{};
  std::map<std::string, std::uint64_t> split_rounds;  // split name -> rounds this rank has taken part in

  // Rank 0 of a whole job hosts the store: it must outlive every other rank's last reply. Every rank checks
  // out on leaving, and rank 0 waits (bounded) until all have, so a rank finishing first never cuts the
  // others' final collective. A sub-group's rank 0 waits for its members the same way (under the sub-group's
  // prefix), so leaving a sub-group is as orderly as leaving the job.
  //
  // A rank that died never checks out. On rank 0's own node (where ranks share a pid namespace, as the
  // fabric's liveness check assumes too) a rank whose process is gone and that has not checked out is counted
  // as departed, so a job that lost a rank ends promptly instead of after the whole timeout.
  ~Impl() {
    if (!store) return;
    try {
      store->set(exit_key(job.rank), {});
      store->add("ferry/group/exit", 1);
      if (job.rank != 0) return;
      Deadline deadline(std::min<Duration>(timeout, std::chrono::seconds(30)));
      std::vector<bool> departed(ranks.size(), false);
      int departed_count = 0;
      auto next_liveness_check = Clock::now() + std::chrono::milliseconds(50);
      auto everyone_left = [&] {
        return store->add("ferry/group/exit", 0) + departed_count >= job.world_size;
      };
      while (!everyone_left() && !deadline.expired()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
        if (ranks.empty() || Clock::now() < next_liveness_check) continue;
        next_liveness_check = Clock::now() + std::chrono::milliseconds(50);
        for (std::size_t r = 0; r < ranks.size(); ++r) {
          const RankInfo& info = ranks[r];
          if (departed[r] || info.node != ranks[0].node || info.pid <= 0) continue;
          if (::kill(info.pid, 0) == 0 || errno != ESRCH) continue;
          // Gone: departed unless it checked out first (its key is set before its count is added, so a
          // rank found here either never counted itself or set the key and the count is on its way).
          if (store->check(exit_key(static_cast<int>(r)))) continue;
          departed[r] = true;
          ++departed_count;
        }
      }
      // A sub-group's keys live in its root's store, which outlives it: everyone has left, so nothing of
      // this sub-group will be read again.
      if (!key_prefix.empty() && everyone_left()) store->erase_prefix("");
    } catch (const std::exception&) {
      // Leaving anyway: a peer that is gone cannot be waited for.
    }
  }

  static std::string exit_key(int rank) { return "ferry/group/exit/" + std::to_string(rank); }
};

namespace {

std::string local_hostname() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) return "unknown";
  return name;
}

std::vector<std::uint8_t> encode(const RankInfo& info, int local_size, const std::string& refusal) {
  nlohmann::json j = {
      {"rank", info.rank},        {"node", info.node},         {"local_rank", info.local_rank},
      {"local_size", local_size}, {"hostname", info.hostname}, {"address", info.address},
      {"pid", info.pid}};
  if (!refusal.empty()) j["refusal"] = refusal;
  auto text = j.dump();
  return {text.begin(), text.end()};
}

// Checks every rank's report against ours: one local size everywhere, ranks in order, one host per node.
// `refused`: rank 0's refusal of the whole group, if it sent one.
std::vector<RankInfo> decode_and_validate(const std::vector<transport::Bytes>& blobs, const JobEnv& job,
                                          std::string* refused) {
  std::vector<RankInfo> ranks;
  std::map<int, std::pair<int, std::string>> host_of_node;  // node -> (first rank, hostname)
  for (std::size_t r = 0; r < blobs.size(); ++r) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(blobs[r].begin(), blobs[r].end());
    } catch (const nlohmann::json::exception& e) {
      fail(Errc::protocol, "rank " + std::to_string(r) + " sent a malformed bootstrap record: " + e.what());
    }
    RankInfo info;
    int local_size = 0;
    try {
      info.rank = j.at("rank");
      info.node = j.at("node");
      info.local_rank = j.at("local_rank");
      info.hostname = j.at("hostname");
      info.address = j.at("address");
      info.pid = j.at("pid");
      local_size = j.at("local_size");
      if (r == 0 && j.contains("refusal")) *refused = j.at("refusal");
    } catch (const nlohmann::json::exception& e) {
      fail(Errc::protocol, "rank " + std::to_string(r) + " sent an incomplete bootstrap record: " + e.what());
    }
    if (info.rank != static_cast<int>(r)) {
      fail(Errc::protocol,
           "bootstrap slot " + std::to_string(r) + " holds rank " + std::to_string(info.rank));
    }
    if (local_size != job.local_size) {
      fail(Errc::invalid_argument, "rank " + std::to_string(r) + " runs with " + std::to_string(local_size) +
                                       " ranks per node but rank " + std::to_string(job.rank) + " with " +
                                       std::to_string(job.local_size) +
                                       ": ferry needs the same number of ranks on every node");
    }
    auto [it, fresh] = host_of_node.try_emplace(info.node, info.rank, info.hostname);
    if (!fresh && it->second.second != info.hostname) {
      fail(Errc::invalid_argument, "ranks " + std::to_string(it->second.first) + " and " +
                                       std::to_string(info.rank) + " both claim node " +
                                       std::to_string(info.node) + " but run on hosts '" + it->second.second +
                                       "' and '" + info.hostname + "'");
    }
    ranks.push_back(std::move(info));
  }
  return ranks;
}

}  // namespace

Group::Group(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Group::Group(Group&&) noexcept = default;
Group& Group::operator=(Group&&) noexcept = default;
Group::~Group() = default;

Group Group::from_env(const GroupOptions& options) {
  return from_job(resolve_job_env(), options);
}

Group Group::from_job(const JobEnv& job, const GroupOptions& options) {
  return join(job, options, job.rank == 0, "", "");
}

Group Group::join(const JobEnv& job, const GroupOptions& options, bool host_store,
                  const std::string& key_prefix, const std::string& refusal) {
  auto impl = std::make_unique<Impl>();
  impl->job = job;
  impl->timeout = options.timeout;
  impl->key_prefix = key_prefix;
  const bool handoff = job.secret_source == SecretSource::local_handoff && job.secret.empty();
  // A one-rank job without a secret (a default JobEnv) talks only to itself: any random secret will do.
  if (job.secret.empty() && job.world_size == 1 && host_store) impl->job.secret = detail::make_secret();
  if (impl->job.secret.empty() && !handoff) {
    fail(Errc::invalid_argument,
         "rank " + std::to_string(job.rank) +
             " has an empty store secret (JobEnv::secret): the store never runs without one");
  }

  transport::StoreOptions store_options;
  store_options.host = job.store_host;
  store_options.port = job.store_port;
  store_options.listen_fd = host_store ? job.store_fd : -1;
  store_options.secret = impl->job.secret;
  store_options.timeout = options.timeout;
  store_options.key_prefix = key_prefix;
  std::unique_ptr<detail::SecretHandoff> published;  // rank 0 of a hand-over: removed once all have joined
  if (host_store) {
    if (handoff) store_options.secret = impl->job.secret = detail::make_secret();
    impl->server = std::make_unique<transport::StoreServer>(store_options);
    store_options.port = impl->server->port();
    if (handoff) published = std::make_unique<detail::SecretHandoff>(impl->job, store_options.secret);
    impl->store = std::make_unique<transport::Store>(store_options);
  } else if (job.store_port == 0) {
    fail(Errc::invalid_argument, "rank " + std::to_string(job.rank) + " has no store port to connect to");
  } else if (handoff) {
    // A secret left behind by a crashed job of the same name is refused by the store: read again.
    Deadline deadline(options.timeout);
    std::string rejected;
    while (!impl->store) {
      store_options.secret = detail::await_secret(job, deadline, rejected);
      try {
        impl->store = std::make_unique<transport::Store>(store_options);
      } catch (const transport::SecretRejected&) {
        if (deadline.expired()) throw;
        rejected = store_options.secret;
      }
    }
    impl->job.secret = store_options.secret;
  } else {
    impl->store = std::make_unique<transport::Store>(store_options);
  }
  impl->store_port = store_options.port;

  RankInfo mine;
  mine.rank = job.rank;
  mine.node = job.node();
  mine.local_rank = job.local_rank;
  mine.hostname = local_hostname();
  mine.address = job.node_address.empty() ? impl->store->local_address() : job.node_address;
  mine.pid = static_cast<int>(getpid());
  auto blobs = impl->store->all_gather("ferry/group/ranks", job.rank, job.world_size,
                                       encode(mine, job.local_size, job.rank == 0 ? refusal : ""));
  // Everyone has read every record before anyone may fail validation and (on rank 0) take the store down.
  impl->store->barrier("ferry/group/gathered", job.rank, job.world_size);
  if (published) published->withdraw();  // every rank is in: nobody needs the file any more
  std::string refused;
  impl->ranks = decode_and_validate(blobs, job, &refused);
  if (!refused.empty()) fail(Errc::invalid_argument, refused);
  return Group(std::move(impl));
}

int Group::rank() const {
  return impl_->job.rank;
}
int Group::world_size() const {
  return impl_->job.world_size;
}
int Group::node() const {
  return impl_->job.node();
}
int Group::num_nodes() const {
  return impl_->job.num_nodes();
}
int Group::local_rank() const {
  return impl_->job.local_rank;
}
int Group::local_size() const {
  return impl_->job.local_size;
}
const JobEnv& Group::job() const {
  return impl_->job;
}
const std::vector<RankInfo>& Group::ranks() const {
  return impl_->ranks;
}
transport::Store& Group::store() {
  return *impl_->store;
}
const std::string& Group::key_prefix() const {
  return impl_->key_prefix;
}
std::uint16_t Group::store_port() const {
  return impl_->store_port;
}
std::uint64_t Group::next_split_round(const std::string& name) {
  return impl_->split_rounds[name]++;
}

void Group::barrier(const std::string& name) {
  impl_->store->barrier(name, rank(), world_size());
}

std::vector<std::vector<std::uint8_t>> Group::all_gather(const std::string& name,
                                                         std::span<const std::uint8_t> mine) {
  return impl_->store->all_gather(name, rank(), world_size(), transport::Bytes(mine.begin(), mine.end()));
}

}  // namespace ferry

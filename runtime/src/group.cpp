#include "ferry/group.hpp"

#include <unistd.h>

#include <algorithm>
#include <exception>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

#include "ferry/core/error.hpp"
#include "ferry/transport/store.hpp"
#include "secret_handoff.hpp"

namespace ferry {

struct Group::Impl {
  JobEnv job;
  std::unique_ptr<transport::StoreServer> server;  // rank 0 of a whole job only; sub-groups use their root's
  std::unique_ptr<transport::Store> store;
  std::shared_ptr<transport::StoreWatch> watch;  // the job's; shared with sub-groups; null for one rank
  std::string key_prefix;        // on every key of `store`, and the group's name in the store's membership
  std::uint16_t store_port = 0;  // where `store` connected (job.store_port may be 0 on the rank hosting it)
  std::vector<RankInfo> ranks;
  Duration timeout{};
  std::map<std::string, std::uint64_t> split_rounds;   // split name -> rounds this rank has taken part in
  std::vector<int> job_ranks;                          // this group's ranks as the job's
  transport::StoreOptions client_options;              // how to reach the store as a client, with key_prefix
  int uncaught_at_start = std::uncaught_exceptions();  // more at destruction: destroyed by a failure
  // A sub-group's member_watch() (made on the first call); declared last, so it stops before the rest goes.
  std::mutex member_watch_mutex;
  std::shared_ptr<transport::StoreWatch> member_watch;

  // Makes `text` the job's failure (unless it has one), so that no rank waits for this one in vain.
  void report(const std::string& text) noexcept {
    try {
      if (store && !(watch && !watch->failure().empty())) store->report_failure(text);
    } catch (const std::exception&) {
      // The store is gone: the others learn that from their own connections.
    }
  }

  // Rank 0 of a whole job hosts the store: it must outlive every other rank's last reply. Every rank checks
  // out (LEAVE) on leaving, and rank 0 waits (bounded by the timeout) until the store counts nobody present,
  // so a rank finishing first never cuts the others' final collective. A sub-group's rank 0 waits for its
  // members the same way, so leaving a sub-group is as orderly as leaving the job.
  //
  // A rank that died never checks out, but its connection to the store closed: the store counts it lost, not
  // present, and the job failed. Once the job has failed, rank 0 waits only a short grace for the ranks
  // still there, not for one that may be frozen: the store told every rank's watch of the failure when it
  // happened, so what the others still ask of it (their LEAVE) no longer matters.
  ~Impl() {
    if (!store) return;
    // The job's Group destroyed while an exception unwinds the stack: this rank is failing and will not take
    // part in what its peers wait for. (Errors that name their cause were reported where they were caught.)
    // A sub-group's is not: its members may catch what ended it (a refused name) and go on in the job.
    if (key_prefix.empty() && std::uncaught_exceptions() > uncaught_at_start) {
      report("rank " + std::to_string(job.rank) +
             " left the job with an error (its Group was destroyed while an exception unwound the stack)");
    }
    // Our watch's thread stops here (sub-groups that share it are gone: they must not outlive this group).
    std::string failure = watch ? watch->failure() : std::string();
    watch.reset();
    try {
      store->leave(key_prefix);
      if (job.rank != 0) return;
      constexpr auto kFailureGrace = std::chrono::milliseconds(500);
      Deadline deadline(std::min<Duration>(timeout, std::chrono::seconds(30)));
      std::optional<Deadline> grace;
      std::size_t present = 0;
      for (;;) {
        bool failed = false;
        present = store->members_present(key_prefix, &failed);
        if (present == 0) break;
        if ((failed || !failure.empty()) && !grace) grace.emplace(kFailureGrace);
        if (deadline.expired() || (grace && grace->expired())) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
      // A sub-group's keys live in its root's store, which outlives it: everyone has left, so nothing of
      // this sub-group will be read again.
      if (!key_prefix.empty() && present == 0) store->erase_prefix("");
    } catch (const std::exception&) {
      // Leaving anyway: a store that is gone cannot be told.
    }
  }
};

namespace {

std::string local_hostname() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) return "unknown";
  return name;
}

std::string who_am_i() {
  return "pid " + std::to_string(::getpid()) + " on " + local_hostname();
}

// Rank 0 could not bind the store's port. When this job's store already listens there, this process is a
// second rank 0: it claims rank 0 at that store, which fails the job on every rank naming rank 0, and fails
// here the same way. Otherwise the port belongs to something else, and the bind error says so.
[[noreturn]] void refuse_second_rank0(const JobEnv& job, transport::StoreOptions options, bool handoff,
                                      const Error& bind_error) {
  try {
    options.timeout = std::min<Duration>(options.timeout, std::chrono::seconds(5));
    // Without FERRY_SECRET the other rank 0 handed its secret over in a file while its job starts.
    if (handoff) options.secret = detail::await_secret(job, Deadline(std::chrono::seconds(2)));
    transport::Store existing(options);
    existing.join("", 0, job.world_size, who_am_i());  // throws when the other rank 0 has joined already
    // It had not yet: this claim came first, so the other one will be refused; the job fails either way.
    const std::string text = "rank 0 is claimed twice: by " + who_am_i() +
                             " and by the process hosting the store at " + existing.endpoint() +
                             "; every rank must be started exactly once";
    existing.report_failure(text);
    fail(Errc::peer_failure, text);
  } catch (const Error& error) {
    if (error.code() == Errc::peer_failure) throw;
  }
  fail(bind_error.code(), bind_error.message() +
                              " (another program holds the port, or another process is rank 0 of this job "
                              "but could not be reached)");
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
  return join(job, options, job.rank == 0, "", "", nullptr);
}

Group Group::join(const JobEnv& job, const GroupOptions& options, bool host_store,
                  const std::string& key_prefix, const std::string& refusal,
                  std::shared_ptr<transport::StoreWatch> watch) {
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
  // Rank 0 of a hand-over (of the secret, the port or both): the file is removed once all have joined.
  std::unique_ptr<detail::SecretHandoff> published;
  if (host_store) {
    if (handoff) store_options.secret = impl->job.secret = detail::make_secret();
    try {
      impl->server = std::make_unique<transport::StoreServer>(store_options);
    } catch (const Error& error) {
      if (error.code() != Errc::system || job.store_fd >= 0 || job.store_port == 0) throw;
      // The port is taken: maybe by this job's rank 0, which makes this process a second rank 0.
      refuse_second_rank0(job, store_options, handoff, error);
    }
    store_options.port = impl->server->port();
    if (handoff || job.port_handoff) {
      published = std::make_unique<detail::SecretHandoff>(job, store_options.secret, store_options.port);
    }
    impl->store = std::make_unique<transport::Store>(store_options);
  } else if (job.store_port == 0 && !job.port_handoff) {
    fail(Errc::invalid_argument, "rank " + std::to_string(job.rank) + " has no store port to connect to");
  } else if (handoff || job.port_handoff) {
    // A secret left behind by a crashed job of the same name is refused by the store: read again.
    Deadline deadline(options.timeout);
    std::string rejected;
    while (!impl->store) {
      const detail::Handoff handed = detail::await_handoff(job, deadline, rejected);
      if (job.port_handoff) store_options.port = handed.port;
      if (handoff) store_options.secret = handed.secret;
      try {
        impl->store = std::make_unique<transport::Store>(store_options);
      } catch (const transport::SecretRejected&) {
        if (deadline.expired() || !handoff) throw;
        rejected = store_options.secret;
      }
    }
    impl->job.secret = store_options.secret;
  } else {
    impl->store = std::make_unique<transport::Store>(store_options);
  }
  impl->store_port = store_options.port;
  impl->client_options = store_options;
  impl->client_options.listen_fd = -1;
  impl->job_ranks.resize(static_cast<std::size_t>(job.world_size));
  for (int r = 0; r < job.world_size; ++r) impl->job_ranks[static_cast<std::size_t>(r)] = r;

  RankInfo mine;
  mine.rank = job.rank;
  mine.node = job.node();
  mine.local_rank = job.local_rank;
  mine.hostname = local_hostname();
  mine.address = job.node_address.empty() ? impl->store->local_address() : job.node_address;
  mine.pid = static_cast<int>(getpid());
  // Claims the rank: a second claim, or a world size other than the first rank's, fails every rank of the
  // job at once, naming it; so does this process's death from now until it leaves.
  impl->store->join(key_prefix, job.rank, job.world_size, who_am_i());
  try {
    if (watch) {
      impl->watch = std::move(watch);
    } else if (job.world_size > 1) {
      impl->watch = std::make_shared<transport::StoreWatch>(store_options, job.world_size);
    }
    auto blobs = impl->store->all_gather("ferry/group/ranks", job.rank, job.world_size,
                                         encode(mine, job.local_size, job.rank == 0 ? refusal : ""));
    // Everyone has read every record before anyone may fail validation and (on rank 0) take the store down.
    impl->store->barrier("ferry/group/gathered", job.rank, job.world_size);
    if (job.port_handoff) impl->job.store_port = store_options.port;  // for whoever asks the job where it is
    if (published) published->withdraw();  // every rank is in: nobody needs the file any more
    std::string refused;
    impl->ranks = decode_and_validate(blobs, job, &refused);
    if (!refused.empty()) fail(Errc::invalid_argument, refused);
  } catch (const Error& error) {
    // The others wait for this rank in the collectives above: tell them why it will not come. (A sub-group's
    // members meet their refusal or timeout together, and may go on in the job.)
    if (key_prefix.empty())
      impl->report("rank " + std::to_string(job.rank) +
                   " could not join the job: " + std::string(without_ferry_prefix(error.what())));
    throw;
  }
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
std::shared_ptr<transport::StoreWatch> Group::failure_watch() const {
  return impl_->watch;
}
std::shared_ptr<transport::StoreWatch> Group::member_watch() {
  Impl& impl = *impl_;
  // The job's own numbering (the job, or a sub-group of every rank: members ascend): the job's watch.
  bool numbered_as_job = impl.watch && impl.watch->world_size() == impl.job.world_size;
  for (std::size_t i = 0; numbered_as_job && i < impl.job_ranks.size(); ++i)
    numbered_as_job = impl.job_ranks[i] == static_cast<int>(i);
  if (impl.key_prefix.empty() || numbered_as_job) return impl.watch;
  std::lock_guard lock(impl.member_watch_mutex);
  if (!impl.member_watch && impl.job.world_size > 1) {
    // The store lives in the job's rank 0: the watch marks that rank when it loses the store, if it is ours.
    const auto host = std::find(impl.job_ranks.begin(), impl.job_ranks.end(), 0);
    const int store_host =
        host == impl.job_ranks.end() ? -1 : static_cast<int>(host - impl.job_ranks.begin());
    // A store that is gone fails this at once (the job has failed: the caller hears why) instead of waiting.
    transport::StoreOptions options = impl.client_options;
    options.wait_for_server = false;
    impl.member_watch = std::make_shared<transport::StoreWatch>(options, impl.job.world_size, store_host);
  }
  return impl.member_watch;
}
const std::vector<int>& Group::job_ranks() const {
  return impl_->job_ranks;
}
void Group::set_job_ranks(std::vector<int> job_ranks) {
  impl_->job_ranks = std::move(job_ranks);
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

// Reading the job's identity from whichever launcher started us.
#include <charconv>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>

#include "ferry/core/error.hpp"
#include "ferry/group.hpp"

namespace ferry {
namespace {

class Reader {
 public:
  explicit Reader(const EnvLookup& lookup) : lookup_(lookup) {}

  bool has(const char* name) const { return lookup_(name).has_value(); }
  std::optional<std::string> text(const char* name) const { return lookup_(name); }

  // A whole number from 0 to `max`; anything else (junk, a sign, a value too large to hold) names the
  // variable.
  std::optional<int> number(const char* name, long long max = std::numeric_limits<int>::max()) const {
    auto value = lookup_(name);
    if (!value) return std::nullopt;
    long long out = 0;
    const char* first = value->data();
    const char* last = first + value->size();
    auto [ptr, ec] = std::from_chars(first, last, out);
    if (value->empty() || ec != std::errc() || ptr != last || out < 0 || out > max) {
      const std::string shown = value->size() > 40 ? value->substr(0, 40) + "..." : *value;
      fail(Errc::invalid_argument, std::string("environment variable ") + name + "='" + shown +
                                       "' is not a whole number from 0 to " + std::to_string(max));
    }
    return static_cast<int>(out);
  }

  // A rank, a world size or a count of ranks per node: bounded by kMaxWorldSize.
  std::optional<int> rank_count(const char* name) const { return number(name, kMaxWorldSize); }

  int required(const char* name, const char* launcher) const {
    auto value = rank_count(name);
    if (!value) {
      fail(Errc::invalid_argument, std::string(launcher) + " environment found but " + name + " is not set");
    }
    return *value;
  }

 private:
  const EnvLookup& lookup_;
};

// "host:port" with a numeric port in [1, 65535]; IPv6 hosts may be bracketed ("[::1]:29500").
void parse_endpoint(const std::string& text, const char* variable, JobEnv& job) {
  auto colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == text.size()) {
    fail(Errc::invalid_argument, std::string(variable) + "='" + text + "' is not host:port");
  }
  std::string host = text.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  unsigned port = 0;
  const char* first = text.data() + colon + 1;
  const char* last = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(first, last, port);
  if (ec != std::errc() || ptr != last || port == 0 || port > 65535) {
    fail(Errc::invalid_argument, std::string(variable) + "='" + text + "' has no valid port (1-65535)");
  }
  job.store_host = host;
  job.store_port = static_cast<std::uint16_t>(port);
}

// Slurm writes tasks per node as "4", "4(x2)" or "4(x2),3": we need the (uniform) count.
std::optional<int> slurm_tasks_per_node(const Reader& env) {
  if (auto n = env.rank_count("SLURM_NTASKS_PER_NODE")) return n;
  auto text = env.text("SLURM_TASKS_PER_NODE");
  if (!text) return std::nullopt;
  int value = 0;
  auto [ptr, ec] = std::from_chars(text->data(), text->data() + text->size(), value);
  if (ec != std::errc() || value <= 0 || value > kMaxWorldSize) {
    fail(Errc::invalid_argument, "SLURM_TASKS_PER_NODE='" + *text + "' is not understood");
  }
  std::string rest(ptr, static_cast<std::size_t>(text->data() + text->size() - ptr));
  // Anything after "N(xM)" means nodes with different task counts: ferry needs one count everywhere.
  auto close = rest.find(')');
  if (!rest.empty() && (rest[0] != '(' || close == std::string::npos || close + 1 != rest.size())) {
    fail(Errc::invalid_argument,
         "SLURM_TASKS_PER_NODE='" + *text +
             "' gives nodes different task counts; ferry needs the same number of ranks "
             "on every node");
  }
  return value;
}

// Where the store lives when the launcher is not ferry's: FERRY_STORE, else MASTER_ADDR:(MASTER_PORT+1) so
// that we do not collide with the launcher's own store on MASTER_PORT. False when neither is set: the caller
// decides, once the layout is known, whether rank 0 may pick the port and hand it over.
bool resolve_store(const Reader& env, JobEnv& job) {
  if (auto store = env.text("FERRY_STORE")) {
    parse_endpoint(*store, "FERRY_STORE", job);
    return true;
  }
  auto addr = env.text("MASTER_ADDR");
  auto port = env.number("MASTER_PORT");
  if (!addr || !port) return false;
  if (*port < 1 || *port > 65534) {
    fail(Errc::invalid_argument, "MASTER_PORT=" + std::to_string(*port) + " is out of range 1-65534");
  }
  job.store_host = *addr;
  job.store_port = static_cast<std::uint16_t>(*port + 1);
  return true;
}

// No endpoint named: a one-node job whose launcher names the job (Open MPI's PMIX_NAMESPACE, Slurm's job and
// step) gets its port from rank 0 like its secret; anything else is refused with the variables to set.
void resolve_missing_store(JobEnv& job, bool launcher_names_job) {
  if (job.world_size == 1) return;
  if (job.num_nodes() == 1 && launcher_names_job) {
    job.port_handoff = true;
    job.store_host = "127.0.0.1";
    job.store_port = 0;
    return;
  }
  fail(Errc::invalid_argument,
       std::string(to_string(job.launcher)) +
           " job: set FERRY_STORE=host:port (or MASTER_ADDR and MASTER_PORT) so rank 0 "
           "can host the bootstrap store" +
           (job.num_nodes() == 1 ? ""
                                 : " (on one node rank 0 picks a port itself; this job spans " +
                                       std::to_string(job.num_nodes()) + " nodes)"));
}

std::string random_hex(std::size_t chars) {
  std::random_device device;
  static const char digits[] = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < chars; ++i) out += digits[device() % 16];
  return out;
}

// Never derived from anything a stranger could know (a job id, a port): from FERRY_SECRET, or made by rank 0.
void resolve_secret(const Reader& env, JobEnv& job) {
  const std::string how_to_set =
      "set FERRY_SECRET to the same random value on every rank before starting the job, e.g.\n"
      "  export FERRY_SECRET=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \\n')\n"
      "(torchrun and srun pass the environment on to every rank; mpirun needs -x FERRY_SECRET)";
  if (auto secret = env.text("FERRY_SECRET")) {
    if (secret->empty()) {
      fail(Errc::invalid_argument,
           "FERRY_SECRET is set but empty, which would leave the bootstrap store open to anyone who finds "
           "its port; unset it (ferry makes a secret of its own for one-node jobs) or " +
               how_to_set);
    }
    job.secret = *secret;
    job.secret_source = SecretSource::environment;
  } else if (job.world_size == 1) {
    job.secret = random_hex(32);
    job.secret_source = SecretSource::private_random;
  } else if (job.num_nodes() == 1) {
    // Every rank is on this host: rank 0 makes the secret and hands it over in a private file, and the store
    // is not reachable from other hosts at all.
    job.secret.clear();
    job.secret_source = SecretSource::local_handoff;
    job.store_host = "127.0.0.1";
  } else {
    fail(Errc::invalid_argument,
         std::string(to_string(job.launcher)) + " job on " + std::to_string(job.num_nodes()) +
             " nodes without FERRY_SECRET: rank 0's bootstrap store would be reachable from other hosts and "
             "ferry has no channel private to the job to hand a secret to them; " +
             how_to_set);
  }
}

void validate_layout(const JobEnv& job) {
  auto where = std::string(" (from ") + to_string(job.launcher) + " environment)";
  if (job.world_size < 1) fail(Errc::invalid_argument, "world size must be at least 1" + where);
  if (job.rank >= job.world_size) {
    fail(Errc::invalid_argument, "rank " + std::to_string(job.rank) + " is not below world size " +
                                     std::to_string(job.world_size) + where);
  }
  if (job.local_size < 1 || job.local_size > job.world_size) {
    fail(Errc::invalid_argument, "local world size " + std::to_string(job.local_size) +
                                     " must be between 1 and the world size " +
                                     std::to_string(job.world_size) + where);
  }
  if (job.world_size % job.local_size != 0) {
    fail(Errc::invalid_argument,
         "world size " + std::to_string(job.world_size) + " is not a multiple of the local world size " +
             std::to_string(job.local_size) + ": ferry needs the same number of ranks on every node" + where);
  }
  if (job.local_rank != job.rank % job.local_size) {
    fail(Errc::invalid_argument, "rank " + std::to_string(job.rank) + " has local rank " +
                                     std::to_string(job.local_rank) + ", expected " +
                                     std::to_string(job.rank % job.local_size) +
                                     ": ferry needs ranks numbered node by node (rank = node * " +
                                     std::to_string(job.local_size) + " + local rank)" + where);
  }
}

}  // namespace

const char* to_string(Launcher launcher) {
  switch (launcher) {
    case Launcher::single:
      return "single-process";
    case Launcher::ferry:
      return "ferry launch";
    case Launcher::torchrun:
      return "torchrun";
    case Launcher::openmpi:
      return "Open MPI";
    case Launcher::slurm:
      return "Slurm";
  }
  return "unknown";
}

JobEnv resolve_job_env(const EnvLookup& lookup) {
  Reader env(lookup);
  JobEnv job;
  bool have_store = true;           // an endpoint was named (or none is needed)
  bool launcher_names_job = false;  // the launcher gave a job id unique to this run
  if (env.has("FERRY_RANK")) {
    job.launcher = Launcher::ferry;
    job.rank = env.required("FERRY_RANK", "FERRY");
    job.world_size = env.required("FERRY_WORLD_SIZE", "FERRY");
    job.local_rank = env.rank_count("FERRY_LOCAL_RANK").value_or(job.rank);
    job.local_size = env.rank_count("FERRY_LOCAL_WORLD_SIZE").value_or(job.world_size);
    if (auto store = env.text("FERRY_STORE")) {
      parse_endpoint(*store, "FERRY_STORE", job);
    } else if (job.world_size > 1) {
      fail(Errc::invalid_argument,
           "FERRY_RANK is set but FERRY_STORE (host:port of the bootstrap store) is not");
    }
  } else if (env.has("RANK") && env.has("WORLD_SIZE")) {
    job.launcher = Launcher::torchrun;
    job.rank = env.required("RANK", "torchrun");
    job.world_size = env.required("WORLD_SIZE", "torchrun");
    job.local_rank = env.required("LOCAL_RANK", "torchrun");
    job.local_size = env.required("LOCAL_WORLD_SIZE", "torchrun");
    have_store = resolve_store(env, job);
    job.job_id = env.text("TORCHELASTIC_RUN_ID").value_or("");
    // torchrun names every job started without --rdzv-id "none": two of them on one host would share
    // shared-memory names. Their stores' ports differ, which tells them apart.
    if ((job.job_id.empty() || job.job_id == "none") && have_store)
      job.job_id = "torchrun-" + std::to_string(job.store_port);
  } else if (env.has("OMPI_COMM_WORLD_RANK")) {
    job.launcher = Launcher::openmpi;
    job.rank = env.required("OMPI_COMM_WORLD_RANK", "Open MPI");
    job.world_size = env.required("OMPI_COMM_WORLD_SIZE", "Open MPI");
    job.local_rank = env.required("OMPI_COMM_WORLD_LOCAL_RANK", "Open MPI");
    job.local_size = env.required("OMPI_COMM_WORLD_LOCAL_SIZE", "Open MPI");
    have_store = resolve_store(env, job);
    job.job_id = env.text("OMPI_MCA_orte_ess_jobid").value_or(env.text("PMIX_NAMESPACE").value_or(""));
    launcher_names_job = !job.job_id.empty();
  } else if (env.has("SLURM_PROCID")) {
    job.launcher = Launcher::slurm;
    job.rank = env.required("SLURM_PROCID", "Slurm");
    job.world_size = env.required("SLURM_NTASKS", "Slurm");
    job.local_rank = env.required("SLURM_LOCALID", "Slurm");
    auto per_node = slurm_tasks_per_node(env);
    if (!per_node)
      fail(Errc::invalid_argument, "Slurm environment found but SLURM_NTASKS_PER_NODE is not set");
    job.local_size = *per_node;
    have_store = resolve_store(env, job);
    job.job_id = env.text("SLURM_JOB_ID").value_or("") + "." + env.text("SLURM_STEP_ID").value_or("0");
    launcher_names_job = env.has("SLURM_JOB_ID");
  }
  validate_layout(job);
  if (!have_store) resolve_missing_store(job, launcher_names_job);

  if (auto id = env.text("FERRY_JOB_ID")) job.job_id = *id;
  if (job.job_id.empty()) job.job_id = job.world_size == 1 ? "single-" + random_hex(8) : "job";
  resolve_secret(env, job);
  if (job.rank == 0) {
    if (auto fd = env.number("FERRY_STORE_FD")) job.store_fd = *fd;
  }
  job.node_address = env.text("FERRY_NODE_ADDR").value_or("");
  return job;
}

JobEnv resolve_job_env() {
  return resolve_job_env([](const char* name) -> std::optional<std::string> {
    const char* value = std::getenv(name);
    if (value == nullptr) return std::nullopt;
    return std::string(value);
  });
}

}  // namespace ferry

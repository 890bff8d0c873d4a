// Reading the job from each launcher's environment, and refusing inconsistent layouts with named errors.
#include <catch2/catch.hpp>
#include <map>
#include <string>
#include <vector>

#include "ferry/core/error.hpp"
#include "ferry/group.hpp"

using ferry::Errc;
using ferry::JobEnv;
using ferry::Launcher;
using ferry::SecretSource;

namespace {

using Vars = std::map<std::string, std::string>;

JobEnv resolve(const Vars& vars) {
  return ferry::resolve_job_env([&](const char* name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  });
}

// The message of the ferry::Error that resolving `vars` throws (fails the test if none is thrown).
std::string error_of(const Vars& vars) {
  try {
    resolve(vars);
  } catch (const ferry::Error& e) {
    CHECK(e.code() == Errc::invalid_argument);
    return e.what();
  }
  FAIL("expected a ferry::Error");
  return {};
}

}  // namespace

TEST_CASE("no launcher variables means a single-rank job with a private secret", "[job_env]") {
  auto job = resolve({});
  CHECK(job.launcher == Launcher::single);
  CHECK(job.rank == 0);
  CHECK(job.world_size == 1);
  CHECK(job.num_nodes() == 1);
  CHECK(job.store_port == 0);
  CHECK(job.secret.size() == 32);
  CHECK(job.secret_source == SecretSource::private_random);
  CHECK(resolve({}).secret != job.secret);
}

TEST_CASE("ferry launch variables", "[job_env]") {
  auto job = resolve({{"FERRY_RANK", "5"},
                      {"FERRY_WORLD_SIZE", "8"},
                      {"FERRY_LOCAL_RANK", "1"},
                      {"FERRY_LOCAL_WORLD_SIZE", "4"},
                      {"FERRY_STORE", "10.1.2.3:29500"},
                      {"FERRY_SECRET", "s3cret"},
                      {"FERRY_JOB_ID", "job-7"},
                      {"FERRY_NODE_ADDR", "10.1.2.4"}});
  CHECK(job.launcher == Launcher::ferry);
  CHECK(job.rank == 5);
  CHECK(job.node() == 1);
  CHECK(job.num_nodes() == 2);
  CHECK(job.local_rank == 1);
  CHECK(job.store_host == "10.1.2.3");
  CHECK(job.store_port == 29500);
  CHECK(job.secret == "s3cret");
  CHECK(job.job_id == "job-7");
  CHECK(job.node_address == "10.1.2.4");
}

TEST_CASE("torchrun variables put the store beside MASTER_PORT", "[job_env]") {
  auto job = resolve({{"RANK", "3"},
                      {"WORLD_SIZE", "4"},
                      {"LOCAL_RANK", "1"},
                      {"LOCAL_WORLD_SIZE", "2"},
                      {"MASTER_ADDR", "head"},
                      {"MASTER_PORT", "29500"},
                      {"TORCHELASTIC_RUN_ID", "abc"},
                      {"FERRY_SECRET", "0123456789abcdef"}});
  CHECK(job.launcher == Launcher::torchrun);
  CHECK(job.node() == 1);
  CHECK(job.store_host == "head");
  CHECK(job.store_port == 29501);
  CHECK(job.job_id == "abc");
  CHECK(job.secret == "0123456789abcdef");
  CHECK(job.secret_source == SecretSource::environment);
}

// torchrun's default run id is the same for every job: two jobs on one host (ctest -j2 runs them) would
// claim the same shared-memory segments. The store port tells them apart.
TEST_CASE("torchrun jobs without a run id are told apart by their store port", "[job_env]") {
  auto vars = [](const std::string& port, const std::string& run_id) {
    Vars v{{"RANK", "0"},
           {"WORLD_SIZE", "2"},
           {"LOCAL_RANK", "0"},
           {"LOCAL_WORLD_SIZE", "2"},
           {"MASTER_ADDR", "localhost"},
           {"MASTER_PORT", port},
           {"FERRY_SECRET", "0123456789abcdef"}};
    if (!run_id.empty()) v["TORCHELASTIC_RUN_ID"] = run_id;
    return v;
  };
  CHECK(resolve(vars("29500", "none")).job_id == "torchrun-29501");
  CHECK(resolve(vars("29600", "none")).job_id == "torchrun-29601");
  CHECK(resolve(vars("29500", "")).job_id == "torchrun-29501");
  CHECK(resolve(vars("29500", "run7")).job_id == "run7");
}

TEST_CASE("Open MPI variables", "[job_env]") {
  auto job = resolve({{"OMPI_COMM_WORLD_RANK", "2"},
                      {"OMPI_COMM_WORLD_SIZE", "6"},
                      {"OMPI_COMM_WORLD_LOCAL_RANK", "2"},
                      {"OMPI_COMM_WORLD_LOCAL_SIZE", "3"},
                      {"FERRY_STORE", "[::1]:4000"},
                      {"FERRY_SECRET", "s"}});
  CHECK(job.launcher == Launcher::openmpi);
  CHECK(job.node() == 0);
  CHECK(job.num_nodes() == 2);
  CHECK(job.store_host == "::1");
  CHECK(job.store_port == 4000);
}

TEST_CASE("Slurm variables, including the compressed tasks-per-node form", "[job_env]") {
  Vars vars{{"SLURM_PROCID", "7"},  {"SLURM_NTASKS", "8"},
            {"SLURM_LOCALID", "3"}, {"SLURM_TASKS_PER_NODE", "4(x2)"},
            {"MASTER_ADDR", "n0"},  {"MASTER_PORT", "1234"},
            {"SLURM_JOB_ID", "99"}, {"FERRY_SECRET", "s"}};
  auto job = resolve(vars);
  CHECK(job.launcher == Launcher::slurm);
  CHECK(job.local_size == 4);
  CHECK(job.node() == 1);
  CHECK(job.job_id == "99.0");

  vars["SLURM_TASKS_PER_NODE"] = "4(x1),3";
  CHECK_THAT(error_of(vars), Catch::Contains("different task counts"));
}

TEST_CASE("FERRY variables win over torchrun's", "[job_env]") {
  auto job = resolve({{"FERRY_RANK", "0"},
                      {"FERRY_WORLD_SIZE", "1"},
                      {"RANK", "3"},
                      {"WORLD_SIZE", "4"},
                      {"LOCAL_RANK", "1"},
                      {"LOCAL_WORLD_SIZE", "2"}});
  CHECK(job.launcher == Launcher::ferry);
  CHECK(job.world_size == 1);
}

TEST_CASE("inconsistent layouts are refused with the offending numbers named", "[job_env]") {
  Vars base{{"FERRY_RANK", "1"},
            {"FERRY_WORLD_SIZE", "6"},
            {"FERRY_LOCAL_RANK", "1"},
            {"FERRY_LOCAL_WORLD_SIZE", "3"},
            {"FERRY_STORE", "127.0.0.1:1"},
            {"FERRY_SECRET", "s"}};
  REQUIRE_NOTHROW(resolve(base));

  auto uneven = base;
  uneven["FERRY_LOCAL_WORLD_SIZE"] = "4";
  CHECK_THAT(error_of(uneven), Catch::Contains("not a multiple of the local world size 4"));

  auto wrong_local = base;
  wrong_local["FERRY_LOCAL_RANK"] = "2";
  CHECK_THAT(error_of(wrong_local), Catch::Contains("rank 1 has local rank 2, expected 1"));

  auto rank_too_big = base;
  rank_too_big["FERRY_RANK"] = "6";
  CHECK_THAT(error_of(rank_too_big), Catch::Contains("rank 6 is not below world size 6"));

  auto garbage = base;
  garbage["FERRY_WORLD_SIZE"] = "six";
  CHECK_THAT(error_of(garbage), Catch::Contains("FERRY_WORLD_SIZE='six'"));

  auto no_store = base;
  no_store.erase("FERRY_STORE");
  CHECK_THAT(error_of(no_store), Catch::Contains("FERRY_STORE"));

  auto bad_port = base;
  bad_port["FERRY_STORE"] = "host:70000";
  CHECK_THAT(error_of(bad_port), Catch::Contains("no valid port"));

  CHECK_THAT(error_of({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "0"}}),
             Catch::Contains("LOCAL_WORLD_SIZE is not set"));
  CHECK_THAT(error_of({{"OMPI_COMM_WORLD_RANK", "0"},
                       {"OMPI_COMM_WORLD_SIZE", "2"},
                       {"OMPI_COMM_WORLD_LOCAL_RANK", "0"},
                       {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}}),
             Catch::Contains("set FERRY_STORE"));
}

TEST_CASE("without FERRY_SECRET a one-node job gets its secret from rank 0, over loopback only",
          "[job_env]") {
  const std::vector<Vars> one_node_jobs = {
      {{"RANK", "1"},
       {"WORLD_SIZE", "2"},
       {"LOCAL_RANK", "1"},
       {"LOCAL_WORLD_SIZE", "2"},
       {"MASTER_ADDR", "head"},
       {"MASTER_PORT", "29500"},
       {"TORCHELASTIC_RUN_ID", "none"}},
      {{"OMPI_COMM_WORLD_RANK", "0"},
       {"OMPI_COMM_WORLD_SIZE", "4"},
       {"OMPI_COMM_WORLD_LOCAL_RANK", "0"},
       {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"},
       {"FERRY_STORE", "10.0.0.7:4000"}},
      {{"SLURM_PROCID", "2"},
       {"SLURM_NTASKS", "3"},
       {"SLURM_LOCALID", "2"},
       {"SLURM_NTASKS_PER_NODE", "3"},
       {"MASTER_ADDR", "n0"},
       {"MASTER_PORT", "1234"},
       {"SLURM_JOB_ID", "99"}},
      {{"FERRY_RANK", "1"}, {"FERRY_WORLD_SIZE", "2"}, {"FERRY_STORE", "127.0.0.1:5000"}}};
  for (const auto& vars : one_node_jobs) {
    auto job = resolve(vars);
    INFO(ferry::to_string(job.launcher));
    CHECK(job.secret_source == SecretSource::local_handoff);
    CHECK(job.secret.empty());             // rank 0 makes it at start-up; nothing here derives it
    CHECK(job.store_host == "127.0.0.1");  // not reachable from other hosts, whatever MASTER_ADDR says
    CHECK(job.store_port != 0);
  }
}

TEST_CASE("without FERRY_SECRET a job on several nodes is refused, saying how to set one", "[job_env]") {
  const std::vector<Vars> multi_node_jobs = {{{"RANK", "0"},
                                              {"WORLD_SIZE", "4"},
                                              {"LOCAL_RANK", "0"},
                                              {"LOCAL_WORLD_SIZE", "2"},
                                              {"MASTER_ADDR", "head"},
                                              {"MASTER_PORT", "29500"}},
                                             {{"OMPI_COMM_WORLD_RANK", "3"},
                                              {"OMPI_COMM_WORLD_SIZE", "4"},
                                              {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                                              {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"},
                                              {"FERRY_STORE", "10.0.0.7:4000"}},
                                             {{"SLURM_PROCID", "0"},
                                              {"SLURM_NTASKS", "2"},
                                              {"SLURM_LOCALID", "0"},
                                              {"SLURM_NTASKS_PER_NODE", "1"},
                                              {"MASTER_ADDR", "n0"},
                                              {"MASTER_PORT", "1234"},
                                              {"SLURM_JOB_ID", "99"}}};
  for (const auto& vars : multi_node_jobs) {
    const std::string message = error_of(vars);
    CHECK_THAT(message, Catch::Contains("nodes without FERRY_SECRET"));
    CHECK_THAT(message, Catch::Contains("export FERRY_SECRET=$(od -An -N16 -tx1 /dev/urandom"));
    CHECK_THAT(message, Catch::Contains("mpirun needs -x FERRY_SECRET"));
  }
}

TEST_CASE("an empty FERRY_SECRET never switches authentication off", "[job_env]") {
  CHECK_THAT(error_of({{"FERRY_SECRET", ""}}), Catch::Contains("FERRY_SECRET is set but empty"));
  CHECK_THAT(error_of({{"RANK", "0"},
                       {"WORLD_SIZE", "2"},
                       {"LOCAL_RANK", "0"},
                       {"LOCAL_WORLD_SIZE", "2"},
                       {"MASTER_ADDR", "127.0.0.1"},
                       {"MASTER_PORT", "29500"},
                       {"FERRY_SECRET", ""}}),
             Catch::Contains("FERRY_SECRET is set but empty"));
}

TEST_CASE("FERRY_STORE_FD hands rank 0 its listening socket, and only rank 0", "[job_env]") {
  Vars vars{{"FERRY_RANK", "0"},
            {"FERRY_WORLD_SIZE", "2"},
            {"FERRY_STORE", "127.0.0.1:5000"},
            {"FERRY_SECRET", "s"},
            {"FERRY_STORE_FD", "3"}};
  CHECK(resolve(vars).store_fd == 3);
  vars["FERRY_RANK"] = "1";
  CHECK(resolve(vars).store_fd == -1);
  vars["FERRY_RANK"] = "0";
  vars["FERRY_STORE_FD"] = "three";
  CHECK_THAT(error_of(vars), Catch::Contains("FERRY_STORE_FD='three'"));
}

// A huge WORLD_SIZE once reached the bootstrap, which sized its tables by it (std::bad_alloc, or gigabytes
// of memory for nothing): every rank count is bounded here, by name.
TEST_CASE("rank counts are bounded and overflow-checked, naming the variable", "[job_env]") {
  const Vars torchrun{{"RANK", "0"},        {"WORLD_SIZE", "2"},
                      {"LOCAL_RANK", "0"},  {"LOCAL_WORLD_SIZE", "2"},
                      {"MASTER_ADDR", "x"}, {"MASTER_PORT", "29500"}};
  REQUIRE_NOTHROW(resolve(torchrun));
  for (const std::string huge :
       {"2147483647", "65537", "99999999999999999999999999", "18446744073709551617"}) {
    INFO(huge);
    for (const char* variable : {"WORLD_SIZE", "LOCAL_WORLD_SIZE", "RANK", "LOCAL_RANK"}) {
      auto vars = torchrun;
      vars[variable] = huge;
      CHECK_THAT(error_of(vars), Catch::Contains(std::string(variable) + "='") &&
                                     Catch::Contains("is not a whole number from 0 to 65536"));
    }
  }
  auto negative = torchrun;
  negative["WORLD_SIZE"] = "-2";
  CHECK_THAT(error_of(negative), Catch::Contains("WORLD_SIZE='-2'"));
  // The largest world ferry can address passes the bound (and fails later only if the layout is wrong).
  auto largest = torchrun;
  largest["WORLD_SIZE"] = "65536";
  largest["LOCAL_WORLD_SIZE"] = "8";
  largest["FERRY_SECRET"] = "s";
  CHECK(resolve(largest).world_size == 65536);
  // A long junk value is quoted in part, not whole.
  auto junk = torchrun;
  junk["WORLD_SIZE"] = std::string(100000, '9');
  const std::string message = error_of(junk);
  CHECK(message.size() < 300);
  CHECK_THAT(error_of({{"SLURM_PROCID", "0"},
                       {"SLURM_NTASKS", "2"},
                       {"SLURM_LOCALID", "0"},
                       {"SLURM_TASKS_PER_NODE", "4294967297(x2)"}}),
             Catch::Contains("SLURM_TASKS_PER_NODE"));
}

// `mpirun -np 4 ferry ...` on one box: no MASTER_ADDR/MASTER_PORT needed, rank 0 hands its port over.
TEST_CASE("Open MPI on one node without a store endpoint gets its port from rank 0", "[job_env]") {
  Vars vars{{"OMPI_COMM_WORLD_RANK", "2"},
            {"OMPI_COMM_WORLD_SIZE", "4"},
            {"OMPI_COMM_WORLD_LOCAL_RANK", "2"},
            {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"},
            {"PMIX_NAMESPACE", "1858076673"}};
  auto job = resolve(vars);
  CHECK(job.port_handoff);
  CHECK(job.store_port == 0);
  CHECK(job.store_host == "127.0.0.1");
  CHECK(job.job_id == "1858076673");
  CHECK(job.secret_source == SecretSource::local_handoff);
  // With an endpoint, or a secret of its own, nothing changes but what is handed over.
  vars["FERRY_SECRET"] = "s";
  CHECK(resolve(vars).port_handoff);
  CHECK(resolve(vars).secret_source == SecretSource::environment);
  vars["FERRY_STORE"] = "127.0.0.1:4000";
  CHECK_FALSE(resolve(vars).port_handoff);
  // Several nodes: no private channel reaches the other hosts; the endpoint must be named.
  Vars two_nodes{{"OMPI_COMM_WORLD_RANK", "0"},       {"OMPI_COMM_WORLD_SIZE", "4"},
                 {"OMPI_COMM_WORLD_LOCAL_RANK", "0"}, {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"},
                 {"PMIX_NAMESPACE", "1858076673"},    {"FERRY_SECRET", "s"}};
  CHECK_THAT(error_of(two_nodes), Catch::Contains("set FERRY_STORE=host:port") && Catch::Contains("2 nodes"));
}

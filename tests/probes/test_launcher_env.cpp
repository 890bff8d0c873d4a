// The environments the README's cluster lines ("Real launchers") give each rank resolve to the job the README
// promises: rank, node, store address and secret, for mpirun, srun and torchrun on 2 nodes x 4 ranks.
#include <catch2/catch.hpp>
#include <map>
#include <string>

#include "ferry/core/error.hpp"
#include "ferry/group.hpp"

using ferry::Launcher;

namespace {

using Vars = std::map<std::string, std::string>;

ferry::JobEnv resolve(const Vars& vars) {
  return ferry::resolve_job_env([&](const char* name) -> std::optional<std::string> {
    auto it = vars.find(name);
    return it == vars.end() ? std::nullopt : std::optional<std::string>(it->second);
  });
}

// What every line exports: the head node and a shared secret.
Vars exported() {
  return {{"MASTER_ADDR", "node0"}, {"MASTER_PORT", "29500"}, {"FERRY_SECRET", "5e1ec7ed"}};
}

void check_rank_6(const ferry::JobEnv& job, Launcher launcher) {
  CHECK(job.launcher == launcher);
  CHECK(job.rank == 6);
  CHECK(job.world_size == 8);
  CHECK(job.local_rank == 2);
  CHECK(job.local_size == 4);
  CHECK(job.node() == 1);
  CHECK(job.store_host == "node0");
  CHECK(job.store_port == 29501);  // MASTER_PORT + 1: the launcher may use MASTER_PORT itself
  CHECK(job.secret == "5e1ec7ed");
}

}  // namespace

TEST_CASE("launcher lines: mpirun -x MASTER_ADDR -x MASTER_PORT -x FERRY_SECRET", "[launchers]") {
  Vars vars = exported();
  vars.insert({{"OMPI_COMM_WORLD_RANK", "6"},
               {"OMPI_COMM_WORLD_SIZE", "8"},
               {"OMPI_COMM_WORLD_LOCAL_RANK", "2"},
               {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"}});
  check_rank_6(resolve(vars), Launcher::openmpi);
  vars.erase("MASTER_PORT");
  CHECK_THROWS_WITH(resolve(vars), Catch::Contains("MASTER_PORT"));
}

TEST_CASE("launcher lines: srun --ntasks-per-node 4 with MASTER_ADDR from scontrol", "[launchers]") {
  Vars vars = exported();
  vars.insert({{"SLURM_PROCID", "6"},
               {"SLURM_NTASKS", "8"},
               {"SLURM_LOCALID", "2"},
               {"SLURM_NTASKS_PER_NODE", "4"},
               {"SLURM_JOB_ID", "4242"},
               {"SLURM_STEP_ID", "1"}});
  const auto job = resolve(vars);
  check_rank_6(job, Launcher::slurm);
  CHECK(job.job_id == "4242.1");
  // Without the secret a job on several nodes is refused, with the way out.
  vars.erase("FERRY_SECRET");
  CHECK_THROWS_WITH(resolve(vars), Catch::Contains("FERRY_SECRET"));
}

TEST_CASE("launcher lines: torchrun --nnodes 2 --nproc-per-node 4", "[launchers]") {
  Vars vars = exported();
  vars.insert({{"RANK", "6"},
               {"WORLD_SIZE", "8"},
               {"LOCAL_RANK", "2"},
               {"LOCAL_WORLD_SIZE", "4"},
               {"GROUP_RANK", "1"},
               {"TORCHELASTIC_RUN_ID", "run7"}});
  const auto job = resolve(vars);
  check_rank_6(job, Launcher::torchrun);
  CHECK(job.job_id == "run7");
}

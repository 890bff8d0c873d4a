// The store secret of a one-node job whose launcher gave none (SecretSource::local_handoff): rank 0 makes it
// and hands it over in a private file that is gone once everyone has joined; a stale file from a crashed job
// of the same name does not keep the ranks out, and a file others could read is refused.
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "ferry/core/error.hpp"
#include "ferry/group.hpp"
#include "ferry/transport/store.hpp"
#include "group_test_support.hpp"
#include "secret_handoff.hpp"

using namespace group_test;

namespace {

std::vector<ferry::JobEnv> handoff_jobs(int world, std::uint16_t port, const std::string& job_id) {
  std::vector<ferry::JobEnv> jobs;
  for (int r = 0; r < world; ++r) {
    ferry::JobEnv job = job_for(r, world, world, port);
    job.launcher = ferry::Launcher::torchrun;
    job.secret.clear();
    job.secret_source = ferry::SecretSource::local_handoff;
    job.job_id = job_id;
    jobs.push_back(job);
  }
  return jobs;
}

// Writes `text` where `job`'s secret is handed over (creating the private directory as rank 0 would).
std::string write_private_file(const ferry::JobEnv& job, const std::string& text, mode_t mode) {
  { ferry::detail::SecretHandoff make_directory(job, "placeholder", job.store_port); }
  const std::string path = ferry::detail::handoff_path(job);
  std::FILE* file = std::fopen(path.c_str(), "w");
  REQUIRE(file != nullptr);
  std::fputs(text.c_str(), file);
  std::fclose(file);
  REQUIRE(::chmod(path.c_str(), mode) == 0);
  return path;
}

bool exists(const std::string& path) {
  struct stat info {};
  return ::stat(path.c_str(), &info) == 0;
}

}  // namespace

TEST_CASE("group secret: rank 0 hands a fresh secret to the ranks of its node", "[group][secret]") {
  const auto jobs = handoff_jobs(3, free_port(), "handoff-" + std::to_string(::getpid()));
  const std::string path = ferry::detail::handoff_path(jobs[0]);
  std::vector<std::string> secrets(3);
  std::vector<char> file_left(3, 1);  // checked on the main thread
  run_jobs(jobs, [&](ferry::Group& group) {
    group.barrier("joined");
    secrets[group.rank()] = group.job().secret;
    // Nobody needs the file once all have joined: it is gone before the first collective ends.
    file_left[group.rank()] = exists(path);
    group.barrier("checked");
  });
  for (int rank = 0; rank < 3; ++rank) CHECK_FALSE(file_left[rank]);
  CHECK(secrets[0].size() == 32);
  CHECK(secrets[1] == secrets[0]);
  CHECK(secrets[2] == secrets[0]);
  CHECK(secrets[0].find(jobs[0].job_id) == std::string::npos);

  // A second job of the same name and port gets a secret of its own.
  std::string again;
  run_jobs(jobs, [&](ferry::Group& group) {
    if (group.rank() == 0) again = group.job().secret;
  });
  CHECK(again.size() == 32);
  CHECK(again != secrets[0]);
}

TEST_CASE("group secret: a stale hand-over file from a crashed job does not keep the ranks out",
          "[group][secret]") {
  const auto jobs = handoff_jobs(2, free_port(), "stale-" + std::to_string(::getpid()));
  // What a rank 0 that crashed before its ranks joined leaves behind: a private file with its secret, and a
  // pid that is running again (here, this test's).
  write_private_file(jobs[0],
                     "secret-of-a-job-long-gone " + std::to_string(jobs[0].store_port) + " " +
                         std::to_string(::getpid()) + "\n",
                     0600);
  // Rank 1 starts first and reads the stale secret; the store refuses it and rank 1 reads again.
  auto rank1 = std::async(std::launch::async, [&] {
    ferry::Group group = ferry::Group::from_job(jobs[1]);
    group.barrier("in");
  });
  std::this_thread::sleep_for(300ms);  // rank 1 has read the stale file and waits for the store to come up
  std::uint64_t refused = 0;
  {
    ferry::Group group = ferry::Group::from_job(jobs[0]);
    group.barrier("in");
    refused = group.store().server_stats().failed_hellos;
  }
  rank1.get();
  CHECK(refused == 1);
  CHECK_FALSE(exists(ferry::detail::handoff_path(jobs[0])));
}

TEST_CASE("group secret: a hand-over file others could read is refused", "[group][secret]") {
  const auto jobs = handoff_jobs(2, free_port(), "exposed-" + std::to_string(::getpid()));
  const std::string path = write_private_file(
      jobs[1], "0123456789abcdef0123456789abcdef 1 " + std::to_string(::getpid()) + "\n", 0644);
  try {
    ferry::detail::await_secret(jobs[1], ferry::Deadline(1s));
    FAIL("a world-readable secret file was accepted");
  } catch (const ferry::Error& e) {
    CHECK(e.code() == ferry::Errc::invalid_argument);
    CHECK_THAT(e.what(), Catch::Contains("is not a private file of this user (mode 0644"));
    CHECK_THAT(e.what(), Catch::Contains("FERRY_SECRET"));
  }
  std::remove(path.c_str());
}

TEST_CASE("group secret: without rank 0, the others say where they waited and how to avoid it",
          "[group][secret]") {
  const auto jobs = handoff_jobs(2, free_port(), "absent-" + std::to_string(::getpid()));
  try {
    ferry::GroupOptions options;
    options.timeout = 300ms;
    ferry::Group::from_job(jobs[1], options);
    FAIL("joined without rank 0");
  } catch (const ferry::Error& e) {
    CHECK(e.code() == ferry::Errc::timeout);
    CHECK_THAT(e.what(), Catch::Contains(ferry::detail::handoff_path(jobs[1])));
    CHECK_THAT(e.what(), Catch::Contains("Setting FERRY_SECRET on every rank avoids the hand-over"));
  }
}

TEST_CASE("group secret: a job with an empty secret is refused before anything listens", "[group][secret]") {
  ferry::JobEnv job = job_for(0, 2, 2, free_port());
  job.secret.clear();
  CHECK_THROWS_WITH(ferry::Group::from_job(job), Catch::Contains("empty store secret"));
}

TEST_CASE("group secret: a hand-over file whose rank 0 is gone is ignored", "[group][secret]") {
  const auto jobs = handoff_jobs(2, free_port(), "dead-writer-" + std::to_string(::getpid()));
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  REQUIRE(child > 0);
  REQUIRE(::waitpid(child, nullptr, 0) == child);  // a pid nobody runs any more
  const std::string path =
      write_private_file(jobs[1], "0123456789abcdef0123456789abcdef 1 " + std::to_string(child) + "\n", 0600);
  CHECK_THROWS_WITH(ferry::detail::await_handoff(jobs[1], ferry::Deadline(300ms)),
                    Catch::Contains("waited in vain for rank 0"));
  std::remove(path.c_str());
}

// `mpirun -np 3 ferry ...` on one box without MASTER_ADDR/MASTER_PORT: rank 0 picks the port and hands it
// over with the secret (the launcher's job id names the file).
TEST_CASE("group secret: rank 0 hands its port over too when the launcher names no endpoint",
          "[group][secret]") {
  auto jobs = handoff_jobs(3, 0, "ompi-" + std::to_string(::getpid()));
  for (auto& job : jobs) {
    job.launcher = ferry::Launcher::openmpi;
    job.port_handoff = true;
  }
  const std::string path = ferry::detail::handoff_path(jobs[0]);
  CHECK_THAT(path, Catch::Contains("/store-any-"));
  std::vector<std::uint16_t> ports(3);
  std::vector<std::string> secrets(3);
  std::vector<char> file_left(3, 0);  // assertions only on the main thread: collected here, checked below
  run_jobs(jobs, [&](ferry::Group& group) {
    group.barrier("joined");
    ports[group.rank()] = group.job().store_port;
    secrets[group.rank()] = group.job().secret;
    file_left[group.rank()] = exists(path) ? 1 : 0;
  });
  CHECK(file_left == std::vector<char>(3, 0));
  CHECK(ports[0] != 0);
  CHECK(ports[1] == ports[0]);
  CHECK(ports[2] == ports[0]);
  CHECK(secrets[2] == secrets[0]);

  // With FERRY_SECRET set, only the port is handed over; the secret is each rank's own.
  for (auto& job : jobs) {
    job.secret = "a-secret-from-the-environment";
    job.secret_source = ferry::SecretSource::environment;
  }
  std::vector<std::uint16_t> own_ports(3);
  run_jobs(jobs, [&](ferry::Group& group) { own_ports[group.rank()] = group.job().store_port; });
  for (const std::uint16_t port : own_ports) CHECK(port != 0);
}

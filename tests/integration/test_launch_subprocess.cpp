// The launcher's child bookkeeping (tools/launch/subprocess.cpp), in-process: listing children from /proc
// while they come and go, and reaping whatever is left.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <cerrno>
#include <thread>
#include <vector>

#include "launch/subprocess.hpp"

using ferry::tools::launch::list_children;
using ferry::tools::launch::reap_all_children;

namespace {

// A child that sleeps `micros` and exits.
pid_t short_lived_child(int micros) {
  pid_t pid = ::fork();
  if (pid == 0) {
    ::usleep(static_cast<useconds_t>(micros));
    ::_exit(0);
  }
  return pid;
}

}  // namespace

TEST_CASE("launch: children listed from /proc while another thread reaps them never make the listing throw",
          "[launch]") {
  // The launcher used to read /proc/<pid>/stat with an ifstream, which threw when the process was reaped
  // between opening and reading (ESRCH, seen once in CI): the reaper gave up and leaked its /proc handle.
  // That window is microseconds wide, so this rarely hits it; it checks that listing stays correct and never
  // throws while many children exit and a second thread reaps them.
  constexpr int kChildren = 64;
  std::vector<pid_t> children;
  for (int i = 0; i < kChildren; ++i) {
    pid_t pid = short_lived_child(3000 * i);  // spread over about 200 ms
    REQUIRE(pid > 0);
    children.push_back(pid);
  }
  std::atomic<int> reaped{0};
  std::thread reaper([&] {
    for (;;) {
      pid_t pid = ::waitpid(-1, nullptr, 0);
      if (pid > 0) ++reaped;
      if (pid < 0 && errno != EINTR) return;  // ECHILD: all gone
    }
  });
  int listings = 0;
  while (reaped.load() < kChildren) {
    std::vector<pid_t> listed;
    REQUIRE_NOTHROW(listed = list_children());
    for (pid_t pid : listed) CHECK(std::find(children.begin(), children.end(), pid) != children.end());
    ++listings;
  }
  reaper.join();
  std::printf("listed /proc %d times while %d children exited and were reaped\n", listings, kChildren);
  CHECK(reaped.load() == kChildren);
  CHECK(list_children().empty());
}

TEST_CASE("launch: reap_all_children kills and reaps every child left", "[launch]") {
  std::vector<pid_t> children;
  for (int i = 0; i < 3; ++i) {
    pid_t pid = ::fork();
    if (pid == 0) {
      for (;;) ::pause();
    }
    REQUIRE(pid > 0);
    children.push_back(pid);
  }
  auto listed = list_children();
  std::sort(listed.begin(), listed.end());
  std::sort(children.begin(), children.end());
  CHECK(listed == children);
  CHECK(reap_all_children(std::chrono::seconds(10)) == 3);
  CHECK(list_children().empty());
}

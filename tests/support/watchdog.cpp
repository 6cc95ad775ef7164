#include "support/watchdog.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace kst::testing {
namespace {

using Clock = std::chrono::steady_clock;

std::mutex mu;
std::deque<std::pair<Clock::time_point, std::string>> steps;  // guarded by mu
constexpr size_t kSteps = 12;

std::string slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

std::string cmdline(const std::string& pid) {
  std::string c = slurp("/proc/" + pid + "/cmdline");
  for (char& ch : c)
    if (ch == '\0') ch = ' ';
  return c;
}

// The process's threads' kernel stacks: where a test blocked in a syscall waits (a netlink
// recvmsg, a pipe read of a child's output, a wait4).
void dumpProcess(const std::string& pid, const std::string& indent) {
  fprintf(stderr, "%sprocess %s: %s\n", indent.c_str(), pid.c_str(), cmdline(pid).c_str());
  std::error_code ec;
  const std::string self = std::to_string(gettid());  // the watchdog's own thread: skipped
  for (auto& t : std::filesystem::directory_iterator("/proc/" + pid + "/task", ec)) {
    std::string tid = t.path().filename();
    if (tid == self) continue;
    std::string st = slurp(t.path() / "stat");
    auto close = st.rfind(')');  // "tid (comm) state ..."
    std::string state = close != std::string::npos && close + 2 < st.size() ? st.substr(close + 2, 1) : "?";
    fprintf(stderr, "%s  thread %s state %s wchan %s\n%s", indent.c_str(), tid.c_str(),
            state.c_str(), slurp(t.path() / "wchan").c_str(), slurp(t.path() / "stack").c_str());
  }
}

std::vector<std::string> children(const std::string& pid) {
  std::vector<std::string> out;
  std::error_code ec;
  for (auto& p : std::filesystem::directory_iterator("/proc", ec)) {
    std::string name = p.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string st = slurp(p.path() / "stat");
    auto close = st.rfind(')');  // "pid (comm) state ppid ..."
    if (close == std::string::npos) continue;
    std::istringstream rest(st.substr(close + 2));
    std::string state, ppid;
    rest >> state >> ppid;
    if (ppid == pid) out.push_back(name);
  }
  return out;
}

void report(const std::string& test, int seconds) {
  fprintf(stderr, "\n==== WATCHDOG: %s still running after %d s ====\n", test.c_str(), seconds);
  {
    std::lock_guard l(mu);
    auto now = Clock::now();
    fprintf(stderr, "last steps:\n");
    for (auto& [t, s] : steps)
      fprintf(stderr, "  -%.1fs %s\n", std::chrono::duration<double>(now - t).count(), s.c_str());
  }
  std::string self = std::to_string(getpid());
  dumpProcess(self, "");
  std::vector<std::pair<std::string, std::string>> todo;
  for (auto& c : children(self)) todo.push_back({c, "  "});
  for (size_t i = 0; i < todo.size() && i < 64; ++i) {
    dumpProcess(todo[i].first, todo[i].second);
    for (auto& c : children(todo[i].first)) todo.push_back({c, todo[i].second + "  "});
  }
  if (std::getenv("KST_IN_VM")) {  // the VM's own kernel: list its blocked tasks too
    std::ofstream("/proc/sysrq-trigger") << "w";
    fprintf(stderr, "kernel log (sysrq w: blocked tasks):\n");
    std::system("dmesg | tail -n 120 >&2");
  }
  fprintf(stderr, "==== WATCHDOG end ====\n");
  fflush(stderr);
}

class Watchdog : public ::testing::EmptyTestEventListener {
 public:
  explicit Watchdog(int seconds) : seconds_(seconds) {}
  void OnTestStart(const ::testing::TestInfo& info) override {
    std::string name = std::string(info.test_suite_name()) + "." + info.name();
    std::lock_guard l(m_);
    running_ = true;
    thread_ = std::thread([this, name] {
      std::unique_lock l(m_);
      if (!cv_.wait_for(l, std::chrono::seconds(seconds_), [this] { return !running_; }))
        report(name, seconds_);
    });
  }
  void OnTestEnd(const ::testing::TestInfo&) override {
    {
      std::lock_guard l(m_);
      running_ = false;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

 private:
  int seconds_;
  std::mutex m_;
  std::condition_variable cv_;
  bool running_ = false;
  std::thread thread_;
};

// Registered before main() (gtest_main) runs the tests; gtest owns the listener.
const bool registered = [] {
  const char* s = std::getenv("KST_TEST_WATCHDOG_S");
  int seconds = s ? std::atoi(s) : 0;
  if (seconds > 0) ::testing::UnitTest::GetInstance()->listeners().Append(new Watchdog(seconds));
  return true;
}();

}  // namespace

void noteStep(std::string_view step) {
  std::lock_guard l(mu);
  steps.emplace_back(Clock::now(), std::string(step.substr(0, 300)));
  if (steps.size() > kSteps) steps.pop_front();
}

}  // namespace kst::testing

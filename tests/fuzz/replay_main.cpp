// Runs a libFuzzer target over files (a regression corpus) without libFuzzer, so the main
// (g++) build checks every committed input on every test run: a crash ends the process (the
// test fails), an input that takes longer than KST_FUZZ_INPUT_TIMEOUT seconds (default 3; the
// slowest committed input takes well under 0.5 s) is reported as a hang and fails the test, and
// the address space is limited to KST_FUZZ_MEMORY_MB (default 2048) so that a blow-up fails
// (std::bad_alloc) instead of swapping the machine.
#include <dirent.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

const char* gCurrent = "";

void onAlarm(int) {
  const char msg[] = "replay: HANG (input took longer than the timeout): ";
  (void)!write(2, msg, sizeof msg - 1);
  (void)!write(2, gCurrent, __builtin_strlen(gCurrent));
  (void)!write(2, "\n", 1);
  _exit(3);
}

void collect(const std::string& path, std::vector<std::string>& out) {
  struct stat st{};
  if (stat(path.c_str(), &st) != 0) {
    std::fprintf(stderr, "replay: cannot read %s\n", path.c_str());
    std::exit(2);
  }
  if (!S_ISDIR(st.st_mode)) {
    out.push_back(path);
    return;
  }
  DIR* d = opendir(path.c_str());
  while (auto* e = readdir(d))
    if (e->d_name[0] != '.') collect(path + "/" + e->d_name, out);
  closedir(d);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> files;
  for (int i = 1; i < argc; ++i) collect(argv[i], files);
  if (files.empty()) {
    std::fprintf(stderr, "replay: no inputs\n");
    return 2;
  }
  int timeout = 3;
  if (const char* t = std::getenv("KST_FUZZ_INPUT_TIMEOUT")) timeout = std::atoi(t);
  long memoryMb = 2048;
  if (const char* m = std::getenv("KST_FUZZ_MEMORY_MB")) memoryMb = std::atol(m);
  rlimit as{rlim_t(memoryMb) << 20, rlim_t(memoryMb) << 20};
  setrlimit(RLIMIT_AS, &as);
  signal(SIGALRM, onAlarm);
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    std::string data = ss.str();
    gCurrent = f.c_str();
    alarm(unsigned(timeout));
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(data.data()), data.size());
    alarm(0);
  }
  std::printf("replay: %zu inputs ok\n", files.size());
  return 0;
}

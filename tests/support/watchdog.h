// A watchdog for every test binary (linked in by kst_add_test): when a test runs longer than
// KST_TEST_WATCHDOG_S seconds (CTest's TIMEOUT minus 10, set by kst_add_test), it prints what
// the test was doing before CTest kills it silently: the last steps the harness noted, the
// kernel stack of each of the test's threads and of its child processes, and (inside the test
// VM) the kernel's blocked tasks. It never stops the test itself.
#pragma once

#include <string_view>

namespace kst::testing {

/** Records a step (a shell command, a started process) for the watchdog's report. Cheap,
 *  thread-safe; keeps the last few. */
void noteStep(std::string_view step);

}  // namespace kst::testing

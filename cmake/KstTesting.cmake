# kst_add_test(NAME <name> SOURCES <src...> [DEPS <libs...>] [LABELS <labels...>] [TIMEOUT <s>])
# One GoogleTest binary; every TEST() becomes its own CTest test (gtest_discover_tests).
# Tests that need root carry the label "privileged"; VM-only tests carry "vm" and are run
# inside the qemu harness (tools/vm/run-ctest.sh), never on the host.
include(GoogleTest)
find_package(GTest REQUIRED)
function(kst_add_test)
  cmake_parse_arguments(T "" "NAME;TIMEOUT" "SOURCES;DEPS;LABELS" ${ARGN})
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 120)
  endif()
  # Every test binary carries the watchdog (tests/support/watchdog.h): 10 s before CTest's
  # timeout it prints where a hung test waits.
  if(NOT TARGET kst_test_watchdog)
    add_library(kst_test_watchdog OBJECT ${PROJECT_SOURCE_DIR}/tests/support/watchdog.cpp)
    target_include_directories(kst_test_watchdog PRIVATE ${PROJECT_SOURCE_DIR}/tests)
    target_link_libraries(kst_test_watchdog PRIVATE GTest::gtest)
  endif()
  math(EXPR T_WATCHDOG "${T_TIMEOUT} - 10")
  add_executable(${T_NAME} ${T_SOURCES})
  target_link_libraries(${T_NAME} PRIVATE ${T_DEPS} kst_test_watchdog GTest::gtest GTest::gmock
                        GTest::gtest_main)
  target_include_directories(${T_NAME} PRIVATE ${PROJECT_SOURCE_DIR}/src ${PROJECT_SOURCE_DIR}/tests)
  gtest_discover_tests(${T_NAME}
    PROPERTIES LABELS "${T_LABELS}" TIMEOUT ${T_TIMEOUT}
               ENVIRONMENT "KST_TEST_WATCHDOG_S=${T_WATCHDOG}"
    DISCOVERY_TIMEOUT 30)
endfunction()

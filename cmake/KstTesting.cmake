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
  add_executable(${T_NAME} ${T_SOURCES})
  target_link_libraries(${T_NAME} PRIVATE ${T_DEPS} GTest::gtest GTest::gmock GTest::gtest_main)
  target_include_directories(${T_NAME} PRIVATE ${PROJECT_SOURCE_DIR}/src ${PROJECT_SOURCE_DIR}/tests)
  gtest_discover_tests(${T_NAME}
    PROPERTIES LABELS "${T_LABELS}" TIMEOUT ${T_TIMEOUT}
    DISCOVERY_TIMEOUT 30)
endfunction()

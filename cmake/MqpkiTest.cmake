# mqpki_unit_test(MODULE SOURCES ... LIBS ...): tests/unit/test_MODULE.c (cmocka) compiled with
# the real module sources and UNIT_TESTING, so MQPKI_STATIC functions are reachable.
pkg_check_modules(CMOCKA REQUIRED IMPORTED_TARGET cmocka)

function(mqpki_unit_test module)
  cmake_parse_arguments(T "" "" "SOURCES;LIBS;INCLUDES" ${ARGN})
  list(TRANSFORM T_SOURCES PREPEND ${PROJECT_SOURCE_DIR}/)
  add_executable(test_${module} ${PROJECT_SOURCE_DIR}/tests/unit/test_${module}.c ${T_SOURCES})
  target_compile_definitions(test_${module} PRIVATE UNIT_TESTING
                             MQPKI_TEST_DATA="${PROJECT_SOURCE_DIR}/tests/data")
  target_include_directories(test_${module} PRIVATE ${PROJECT_SOURCE_DIR}/${module}
                             ${P11KIT_INCLUDE_DIRS} ${T_INCLUDES})
  target_link_libraries(test_${module} PRIVATE PkgConfig::CMOCKA ${T_LIBS})
  set_target_properties(test_${module} PROPERTIES RUNTIME_OUTPUT_DIRECTORY
                        ${CMAKE_BINARY_DIR}/tests)
  add_test(NAME unit/${module} COMMAND test_${module})
  set_tests_properties(unit/${module} PROPERTIES LABELS unit TIMEOUT 300)
endfunction()

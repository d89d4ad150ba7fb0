# Passed as -DCMAKE_PROJECT_INCLUDE=<this file>, so it runs right after project().
#
# The ROS 2 pip wheels export their `<pkg>::<pkg>__rosidl_generator_py` targets
# with the include directories of the machine that built them (a manylinux
# /opt/python/... Python and its numpy). CMake refuses to generate a project that
# links such a target, because those directories do not exist here. The targets
# only exist after find_package(), so the correction is deferred to the end of
# the top-level CMakeLists, where it points every such target at this
# interpreter's Python and numpy headers. The installed files stay untouched.

if(CMAKE_VERSION VERSION_LESS 3.21)
  message(FATAL_ERROR "Building the interfaces needs CMake 3.21 or newer (for IMPORTED_TARGETS); "
    "this is ${CMAKE_VERSION}. `pip install cmake` into the venv gives a current one.")
endif()

find_package(Python3 REQUIRED COMPONENTS Interpreter Development.Module NumPy)

function(_fix_rosidl_generator_py_includes)
  get_property(_targets DIRECTORY "${CMAKE_SOURCE_DIR}" PROPERTY IMPORTED_TARGETS)
  foreach(_target IN LISTS _targets)
    if(NOT _target MATCHES "::.*__rosidl_generator_py$")
      continue()
    endif()
    get_target_property(_dirs ${_target} INTERFACE_INCLUDE_DIRECTORIES)
    set(_stale FALSE)
    foreach(_dir IN LISTS _dirs)
      if(_dir AND NOT EXISTS "${_dir}")
        set(_stale TRUE)
      endif()
    endforeach()
    if(_stale)
      set_target_properties(${_target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES
        "${Python3_INCLUDE_DIRS};${Python3_NumPy_INCLUDE_DIRS}")
      message(STATUS "Using this Python's headers for ${_target}")
    endif()
  endforeach()
endfunction()

cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL _fix_rosidl_generator_py_includes)

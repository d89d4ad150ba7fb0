#!/usr/bin/env bash
# Build one of the project's interface packages (interfaces/PACKAGE: vision_msgs,
# tf2_msgs) and install it into a Python virtual environment that holds the
# ROS 2 pip wheels and their rosidl toolchain.
#
#   interfaces/build_interfaces.sh VENV_DIR PACKAGE
#
# The venv is both the CMake prefix path and the install prefix, so the generated
# Python package lands in its site-packages and the C libraries in VENV/lib,
# which the wheels' start-up hook puts on the library path. Nothing needs
# sourcing afterwards.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ $# -ne 2 || ! -x "$1/bin/python" || ! -f "$here/${2:-}/package.xml" ]]; then
  echo "usage: $0 VENV_DIR PACKAGE   (a virtual environment with the ROS 2 wheels, and a package under $here; got '${1:-}' '${2:-}')" >&2
  exit 2
fi

venv="$(cd "$1" && pwd)"
package="$2"

# The generated type support is C and C++ with a Python extension.
for tool in cc c++; do
  command -v "$tool" >/dev/null || { echo "building $package needs $tool (Debian/Ubuntu: apt install build-essential)" >&2; exit 1; }
done
"$venv/bin/python" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || { echo "building $package needs the Python headers (Debian/Ubuntu: apt install python3-dev)" >&2; exit 1; }
root="$(dirname "$here")"
build="$root/build/$package"

# A cmake or ninja that pip installed into the venv wins over the system's.
export PATH="$venv/bin:$PATH"

generator=()
if command -v ninja >/dev/null; then
  generator=(-G Ninja)
fi

# A cache from another venv would point at the wrong prefix and interpreter.
rm -rf "$build"
cmake -S "$here/$package" -B "$build" "${generator[@]}" \
  -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_TESTING=OFF \
  -DCMAKE_PREFIX_PATH="$venv" \
  -DCMAKE_INSTALL_PREFIX="$venv" \
  -DPython3_EXECUTABLE="$venv/bin/python" \
  -DCMAKE_PROJECT_INCLUDE="$here/fix_rosidl_exports.cmake"
cmake --build "$build" --parallel "$(nproc 2>/dev/null || echo 2)"
cmake --install "$build"

"$venv/bin/python" -c "import $package.msg"
echo "$package installed into $venv"

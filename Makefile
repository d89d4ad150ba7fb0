# efficientps_ros: set-up, tests and demo in a plain virtual environment.
#
#   make demo   set up, then run the node on a synthetic camera stream
#   make test   set up, then run the whole test suite
#
# Set-up is idempotent: each step leaves a stamp in the venv and runs again
# only when its inputs change.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
# Drops pip's noise about unreachable extra indexes; keeps pip's exit status.
QUIET_PIP := { grep -v 'is ignored: it is neither a file nor a directory' || true; }

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec

ROS_PACKAGES := "ros-kilted-rclpy[fastrtps]" ros-kilted-sensor-msgs ros-kilted-std-msgs \
	ros-kilted-geometry-msgs ros-kilted-visualization-msgs ros-kilted-diagnostic-msgs \
	ros-kilted-lifecycle-msgs ros-kilted-rosgraph-msgs
# Only needed to build the interfaces of interfaces/ where they are missing.
ROSIDL_PACKAGES := ros-kilted-ament-cmake ros-kilted-ament-cmake-include-directories \
	ros-kilted-ament-cmake-ros-core ros-kilted-rosidl-default-generators \
	ros-kilted-rosidl-core-generators ros-kilted-ament-package catkin-pkg \
	"cmake>=3.21" ninja
# Default PyPI builds: a CPU-only torch breaks torchvision's compiled ops.
ML_PACKAGES := "torch>=2.4" "torchvision>=0.19" "timm>=1.0" "safetensors>=0.4" \
	"numpy>=1.24" pyyaml pillow "simplejpeg>=1.7" "rosbags>=0.11,<0.12" "tqdm>=4.60" "matplotlib>=3.7"
# cityscapesscripts: the official evaluation the metrics are checked against.
TEST_PACKAGES := "pytest>=7" "cityscapesscripts==2.3.0"

# Every ROS process of the tests and the demo uses this transport: 6 MB images
# need LARGE_DATA, and processes with and without it do not talk to each other.
# The value is efficientps_ros/ros/middleware.py's, which says why.
export FASTDDS_BUILTIN_TRANSPORTS := LARGE_DATA?tcp_negotiation_timeout=50
# The pip wheels do not set it, and ament_index lookups need it.
export AMENT_PREFIX_PATH := $(abspath $(VENV))

# Run a command in a private network namespace with only loopback, so that DDS
# discovery and data never leave this machine, and with a /dev/shm of its own,
# so that Fast DDS shared-memory ports left by processes killed elsewhere (or by
# an earlier run) cannot hang or starve its participants. Where user namespaces
# are not available, ROS discovery is limited to localhost instead.
SANDBOX_SETUP := mount -t tmpfs -o mode=1777 efficientps-shm /dev/shm && ip link set lo up && ip link set lo multicast on
ifeq ($(shell unshare -rnm sh -c '$(SANDBOX_SETUP)' 2>/dev/null && echo yes),yes)
SANDBOX := unshare -rnm sh -c '$(SANDBOX_SETUP) && exec "$$@"' sandbox
else
SANDBOX := env ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
$(warning no private network namespace here (needs user namespaces and iproute2's ip): ROS discovery is limited to localhost instead)
endif

STAMP_DEPS    := $(VENV)/.stamp-deps
STAMP_INTERFACES := $(VENV)/.stamp-interfaces
# Interface packages with no Kilted pip wheel, built from interfaces/ where missing.
INTERFACES    := vision_msgs tf2_msgs
STAMP_PACKAGE := $(VENV)/.stamp-package

.PHONY: setup test demo bench bench-node qos-probe clean
.DEFAULT_GOAL := test

setup: $(STAMP_PACKAGE)

$(VENV)/bin/python:
	$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 10) <= v <= (3, 12) else "Python 3.10 to 3.12 is needed, found %d.%d" % v)'
	$(PYTHON) -m venv $(VENV) || { echo "cannot create $(VENV): on Debian/Ubuntu, apt install python3-venv" >&2; exit 1; }
	$(PIP) install -q --upgrade pip setuptools wheel 2>&1 | $(QUIET_PIP)

$(STAMP_DEPS): Makefile | $(VENV)/bin/python
	$(PIP) install -q $(ROS_PACKAGES) $(ROSIDL_PACKAGES) $(ML_PACKAGES) $(TEST_PACKAGES) 2>&1 | $(QUIET_PIP)
	$(PY) -c 'import rclpy, torch, torchvision.ops, timm, safetensors, rosbags, simplejpeg'
	touch $@

$(STAMP_INTERFACES): $(STAMP_DEPS) interfaces/build_interfaces.sh $(wildcard $(INTERFACES:%=interfaces/%/*) $(INTERFACES:%=interfaces/%/msg/*))
	for package in $(INTERFACES); do \
		$(PY) -c "import $$package.msg" 2>/dev/null || interfaces/build_interfaces.sh $(abspath $(VENV)) $$package || exit 1; \
	done
	$(PY) -c 'import vision_msgs.msg, tf2_msgs.msg'
	touch $@

$(STAMP_PACKAGE): $(STAMP_INTERFACES) setup.py
	$(PIP) install -q --no-deps --no-build-isolation -e . 2>&1 | $(QUIET_PIP)
	$(PY) -c 'import efficientps_ros'
	touch $@

test: setup
	$(SANDBOX) $(PY) -m pytest -q test

# A synthetic drive bag played into the node, its outputs recorded: report, panels and GIF in outputs/demo/.
demo: setup
	OMP_WAIT_POLICY=PASSIVE $(SANDBOX) $(PY) -m efficientps_ros.cli demo

# Per stage, camera message to outputs published, against the plain eager network;
# a small CPU configuration unless BENCH_ARGS says otherwise.
BENCH_ARGS ?= --config small --height 384 --width 768 --precision bf16 --frames 10 --json outputs/bench.json
bench: setup
	$(SANDBOX) $(PY) -m efficientps_ros.cli bench $(BENCH_ARGS)

# The node's own cost per frame (conversion, messages, publishing), model excluded.
bench-node: setup
	$(SANDBOX) $(PY) -m efficientps_ros.ros.benchmark

# Which rgb8 image sizes arrive over best effort and reliable, in the tests' network namespace.
QOS_PROBE_ARGS ?= --sizes 480x640 720x1280 1080x1920 1024x2048 --rate 30
qos-probe: setup
	$(SANDBOX) $(PY) -m efficientps_ros.ros.qos_probe $(QOS_PROBE_ARGS)

clean:
	rm -rf $(VENV) build .pytest_cache

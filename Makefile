# ringkit: the two commands of the quick start are `make demo` and `make test`.
# Both do all set-up on a fresh Debian machine that has python3 and gcc: the Debian packages the
# tests need, a virtualenv in .venv, and the project installed into it (editable, with test extras).

PY          ?= python3
VENV        := .venv
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.ringkit-installed
# libxen-dev: Xen's public headers (ring.h, blkif.h, xs_wire.h...) for the C parity/differential tests.
# xenstore-utils: Debian's xenstore-ls & co, run against ringkit's simulated xenstored.
# python3-dev: headers to compile the cffi native helper (without them only the ABI fallback exists).
# cpio: the Xen-in-QEMU harness packs its initramfs with it (its unit tests too).
# tmux: a real terminal program attached to the console backend's pty in the console tests.
DEB_PACKAGES := libxen-dev xenstore-utils python3-dev cpio tmux iproute2 iputils-ping
SUDO        := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: test check demo lint docs deps debs bench test-xen soak-xen clean

# make test is everything: `check` (ruff, mypy and the whole suite on this machine, real processes
# on the simulated Xen), then `test-xen` (the xen-marked tests under real Xen, booted in QEMU).
test: check test-xen

# check insists on both native implementations (compiled and ABI fallback) being tested, and on
# every external tool a test needs (gcc, Xen's headers, xenstore-utils...) being there: what
# `deps` installs must never turn into a silent skip.  It is the quick loop while developing.
check: deps lint docs
	RINGKIT_REQUIRE_NATIVE=compiled,abi RINGKIT_REQUIRE_TOOLS=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

demo: deps
	$(BIN)/ringkit demo

# mypy checks the package as it is installed: ringkit/ with backends/ and frontends/ mounted as
# ringkit.backends / ringkit.frontends (the editable install's import hook is invisible to mypy),
# so a link tree in build/typecheck mirrors that layout, plus examples/.
TYPECHECK := build/typecheck
lint: deps
	$(BIN)/ruff check .
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/ringkit
	for f in ringkit/*; do ln -s "$(CURDIR)/$$f" $(TYPECHECK)/ringkit/; done
	ln -s "$(CURDIR)/backends" $(TYPECHECK)/ringkit/backends
	ln -s "$(CURDIR)/frontends" $(TYPECHECK)/ringkit/frontends
	ln -s "$(CURDIR)/examples" $(TYPECHECK)/examples
	cd $(TYPECHECK) && "$(CURDIR)/$(BIN)/mypy" --config-file "$(CURDIR)/pyproject.toml" ringkit examples

# The documentation site with its API reference from the docstrings (mkdocs.yml), into
# build/site.  Strict: a broken link or cross-reference, or a public name of a documented module
# without a docstring (docs/_hooks/docstrings.py), fails it.  Never add --quiet: it drops the
# warnings before --strict counts them, and the build passes whatever is wrong.
# NO_MKDOCS_2_WARNING silences a banner mkdocs-material prints about MkDocs 2.0 at every build.
docs: deps
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

deps: debs $(STAMP)

debs:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if ! $(PY) -c 'import ensurepip, venv' >/dev/null 2>&1; then missing="$$missing python3-venv"; fi; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(STAMP): pyproject.toml setup.py ringkit/_native/_build.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

# Benchmarks print figures beside their baselines (docs/benchmarks.md); they never assert speed.
bench: deps
	for b in ring transport block requests; do $(BIN)/ringkit bench $$b || exit 1; done

# Real Xen, no KVM needed: one boot of Xen 4.17 + a Linux PV dom0 under QEMU (TCG) that runs the
# xen-marked tests in dom0, with domUs available to them (docs/real-xen.md).  The first run
# downloads Xen and a kernel (~75 MB) into ~/.cache/ringkit/xen-vm; the host's boot is untouched.
# Inside, RINGKIT_REQUIRE_XEN=1 turns a skipped real-Xen test into a failure.
# Under the old `-cpu max` a domU corrupted memory under load with no ringkit code in any
# process (the c-c and pipes controls of `make soak-xen`; docs/real-xen.md, "Memory corruption
# across domains"), and dom0's pytest died of it too; the harness runs `-cpu qemu64` since.  When the test process in
# dom0 dies by a signal -- a crash, not a test verdict -- the suite gets one fresh boot more, and
# the log says so.  A failed test (wrong bytes included), a timeout (124) or a boot failure (125)
# is never retried.
# The whole suite takes 27-31 minutes in one boot on this 2-core machine; 50 minutes is the
# ceiling, inside CI's 90 with make check's 13.
XEN_VM_TIMEOUT ?= 3000
XEN_PYTEST_ARGS ?= --durations=20
XEN_RUN = $(BIN)/ringkit xen-vm run --domu -t $(XEN_VM_TIMEOUT) -e RINGKIT_REQUIRE_XEN=1 -- \
	  $(BIN)/python -m pytest -m xen -p no:cacheprovider $(XEN_PYTEST_ARGS) tests/
test-xen: deps
	$(BIN)/ringkit xen-vm setup
	$(XEN_RUN) || { rc=$$?; \
	  if [ $$rc -gt 128 ] && [ $$rc -lt 160 ]; then \
	    echo "make test-xen: the test process in dom0 died by signal $$((rc - 128)) (a crash," \
	         "not a test failure); running the suite once more in a fresh boot" >&2; \
	    $(XEN_RUN); \
	  else exit $$rc; fi; }

# Soaks under real Xen, on request (docs/real-xen.md, "Memory corruption across domains"):
# fresh vchans across dom0 <-> domU and block from a domU, content checked, SOAK_SECONDS each.
# SOAK names them: vchan pairs server-client (ringkit-ringkit, c-ringkit, ringkit-c, and the
# control c-c with libxenvchan at both ends and no ringkit), block, and pipes (the control with
# no Xen device at all: 4 MiB a round through `cat`, in dom0 and in a domU).
SOAK ?= pipes,ringkit-ringkit,c-ringkit,block,c-c
SOAK_SECONDS ?= 120
soak-xen: deps
	$(BIN)/ringkit xen-vm setup
	$(BIN)/ringkit xen-vm run --domu -t $(XEN_VM_TIMEOUT) -e RINGKIT_REQUIRE_XEN=1 \
	  -e RINGKIT_XEN_SOAK=$(SOAK) -e RINGKIT_XEN_SOAK_SECONDS=$(SOAK_SECONDS) -- \
	  $(BIN)/python -m pytest -m xen -p no:cacheprovider -s tests/xen/test_soak.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache

# rollbackd: `make test` and `make demo` work on a fresh Debian machine.
# They create .venv, install the package with its test extras, and install the
# Debian packages the tests and the demo run for real (prometheus,
# prometheus-alertmanager, git, systemd-analyze, headless chromium, postgresql,
# victoria-metrics)
# when they are missing.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEBIAN_PACKAGES := prometheus prometheus-alertmanager git systemd chromium fonts-dejavu-core postgresql \
	victoria-metrics tinyproxy
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test demo lint unit bench bench-quick debian-packages demo-packages venv clean

# Three workers on two cores: most of the suite waits on real Prometheus, PostgreSQL, apps
# and daemons, so a third worker fills the waits (2026-11-30: 12.5-13.9 min with three,
# idle; 17.5 with two, lightly loaded). Tests are handed out one by one, long ones first, except
# a module's that share a module-scoped process (tests/conftest.py groups them).
test: venv debian-packages lint
	$(BIN)/pytest -n 3 --dist loadgroup -m "not one_process"
	$(BIN)/pytest -m one_process  # one id per schemathesis test: xdist would run one operation

unit: venv
	$(BIN)/pytest tests/unit

lint: venv
	$(BIN)/ruff check daemon tests
	$(BIN)/ruff format --check daemon tests
	$(BIN)/mypy

bench: venv debian-packages
	$(BIN)/python -m bench.run

bench-quick: venv debian-packages
	$(BIN)/python -m bench.run --quick

demo: venv demo-packages
	$(BIN)/rollbackd demo

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "rollbackd needs Python >= 3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

debian-packages:
	@missing=""; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v prometheus-alertmanager >/dev/null || missing="$$missing prometheus-alertmanager"; \
	command -v git >/dev/null || missing="$$missing git"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing="$$missing fonts-dejavu-core"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || missing="$$missing postgresql"; \
	command -v victoria-metrics >/dev/null || missing="$$missing victoria-metrics"; \
	command -v tinyproxy >/dev/null || missing="$$missing tinyproxy"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $(DEBIAN_PACKAGES)"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(DEBIAN_PACKAGES); \
	fi

demo-packages:
	@missing=""; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v git >/dev/null || missing="$$missing git"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

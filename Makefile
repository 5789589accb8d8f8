# The two commands: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo-stop test lint typecheck unit system-deps screenshots prefect-screenshots idle-runs clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	bash scripts/demo.sh

demo-stop:
	-test -f .demo/web.pid && kill $$(cat .demo/web.pid) && rm -f .demo/web.pid
	-test -f .demo/prefect-server.pid && kill $$(cat .demo/prefect-server.pid) && rm -f .demo/prefect-server.pid

# Debian packages the tests need: PostgreSQL, MariaDB (the legacy SPIP import) and Dovecot (IMAP),
# all started by the tests themselves on free ports; the packages' own services are not used; and
# Chromium, which Playwright drives for the follow-up pages' tests (Debian's build: Playwright's own
# download needs its CDN).
system-deps:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "installing PostgreSQL from Debian's packages"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	fi
	@if ! command -v mariadb-install-db >/dev/null 2>&1; then \
	  echo "installing MariaDB from Debian's packages"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server >/dev/null; \
	fi
	@if ! command -v dovecot >/dev/null 2>&1 && ! test -x /usr/sbin/dovecot; then \
	  echo "installing Dovecot from Debian's packages"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dovecot-imapd >/dev/null; \
	fi
	@if ! test -x /usr/lib/chromium/chromium && ! command -v chromium >/dev/null 2>&1; then \
	  echo "installing Chromium from Debian's packages"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) system-deps lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider --durations=10

# The follow-up pages' screenshots (the browser tests write them to artifacts/screenshots/), copied to
# docs/screenshots/ where reviewers see them.
screenshots: $(STAMP) system-deps
	$(BIN)/pytest -q -p no:cacheprovider tests/web/test_pages_browser.py
	mkdir -p docs/screenshots
	cp artifacts/screenshots/*.png docs/screenshots/

# The Prefect UI as an operator of Mailshot sees it (deployments, the create-and-send form, a send
# run's artifacts, the sendings table): a real server, `mailshot serve` and Chromium; ~1.5 min.
prefect-screenshots: $(STAMP) system-deps
	$(BIN)/python scripts/prefect_screenshots.py

# Flow runs an idle site makes (bench/RESULTS.md): a real server and `mailshot serve`, 10 minutes.
idle-runs: $(STAMP)
	$(BIN)/python bench/idle_runs.py --minutes 10

clean:
	rm -rf $(VENV) .demo demo-out *.egg-info .mypy_cache .ruff_cache

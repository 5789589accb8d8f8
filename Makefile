# The two commands: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo-stop test lint typecheck unit system-deps clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	bash scripts/demo.sh

demo-stop:
	-test -f .demo/prefect-server.pid && kill $$(cat .demo/prefect-server.pid) && rm -f .demo/prefect-server.pid

# Debian packages the tests need: PostgreSQL, MariaDB (the legacy SPIP import) and Dovecot (IMAP),
# all started by the tests themselves on free ports; the packages' own services are not used.
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

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) system-deps lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider --durations=10

clean:
	rm -rf $(VENV) .demo demo-out *.egg-info .mypy_cache .ruff_cache

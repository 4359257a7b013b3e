# Sourced by .ci/run: a throwaway PostgreSQL server on loopback for the shared-study test of
# `tierlab search` (two workers, one database). start_postgres sets TIERLAB_TEST_POSTGRES;
# where no server can be started it returns non-zero and that test is skipped with a reason.
PG_PORT=${PG_PORT:-54329}

start_postgres() {
  local bin runas=()
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  if [ -z "$bin" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    # The Debian package; the index is refreshed only when the first try finds nothing.
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q postgresql >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q postgresql >/dev/null 2>&1; } || return 1
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  fi
  [ -n "$bin" ] || return 1
  PG_DIR=$(mktemp -d /tmp/tierlab-pg.XXXXXX)
  if [ "$(id -u)" = 0 ]; then  # the server refuses to run as root
    id postgres >/dev/null 2>&1 || return 1
    chown postgres "$PG_DIR"
    runas=(runuser -u postgres --)
  fi
  "${runas[@]}" "$bin/initdb" -D "$PG_DIR/data" -A trust -U tierlab >"$PG_DIR/initdb.log" 2>&1 || return 1
  "${runas[@]}" "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
    -o "-h 127.0.0.1 -p $PG_PORT -k $PG_DIR" start >/dev/null 2>&1 || return 1
  "${runas[@]}" "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U tierlab tierlab_test || return 1
  PG_BIN=$bin
  PG_RUNAS=("${runas[@]}")
  export TIERLAB_TEST_POSTGRES="postgresql://tierlab@127.0.0.1:$PG_PORT/tierlab_test"
  echo "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT for the shared-study test"
}

stop_postgres() {
  if [ -n "${PG_BIN:-}" ]; then
    "${PG_RUNAS[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
  fi
}

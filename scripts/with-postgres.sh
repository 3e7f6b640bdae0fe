#!/usr/bin/env bash
# Runs a command beside a throwaway PostgreSQL server, then stops the server and
# deletes it:
#
#   scripts/with-postgres.sh cargo test
#
# The command sees DUEL_TEST_PG, a URL of the server's superuser; tests create a
# database of their own on it. The server also speaks TLS, with a certificate for
# localhost and 127.0.0.1 issued by an authority made here: DUEL_TEST_PG_CA is that
# authority's certificate, DUEL_TEST_PG_OTHER_CA another's. The server is Debian's `postgresql` package
# (installed with apt-get when missing and this runs as root), an `initdb` cluster
# in a temporary folder listening on a free local port, run as `nobody` when this
# runs as root (PostgreSQL refuses to run as root).
set -euo pipefail

find_bin() {
    local d
    if command -v initdb >/dev/null 2>&1; then
        dirname "$(readlink -f "$(command -v initdb)")"
        return
    fi
    for d in /usr/lib/postgresql/*/bin; do
        if [ -x "$d/initdb" ]; then
            echo "$d"
            return
        fi
    done
}

bin=$(find_bin)
if [ -z "$bin" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "with-postgres: installing Debian's postgresql package" >&2
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
        bin=$(find_bin)
    fi
fi
if [ -z "$bin" ]; then
    echo "with-postgres: no PostgreSQL found (install Debian's postgresql package)" >&2
    exit 1
fi
if ! command -v openssl >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
    else
        echo "with-postgres: openssl is needed for the test server's certificate" >&2
        exit 1
    fi
fi

dir=$(mktemp -d /tmp/duel-pg.XXXXXX)
as=()
if [ "$(id -u)" = 0 ]; then
    chown nobody "$dir"
    as=(runuser -u nobody --)
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

stop() {
    "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap stop EXIT

"${as[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 \
    --no-sync >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
# An authority, the server's certificate issued by it, and another authority.
authority() {
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=duel test $1" \
        -keyout "$dir/$1.key" -out "$dir/$1.crt" >/dev/null 2>&1
}
authority ca
authority other
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >"$dir/server.ext"
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$dir/server.key" -out "$dir/server.csr" >/dev/null 2>&1
openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
    -CAcreateserial -days 2 -extfile "$dir/server.ext" -out "$dir/server.crt" >/dev/null 2>&1
chmod 600 "$dir/server.key"
if [ "$(id -u)" = 0 ]; then
    chown nobody "$dir/server.key" "$dir/server.crt"
fi
# fsync off: a test server's files need not survive the machine, only its processes.
"${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -o \
    "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200 \
     -c ssl=on -c ssl_cert_file=$dir/server.crt -c ssl_key_file=$dir/server.key" \
    start >/dev/null || { cat "$dir/server.log" >&2; exit 1; }

export DUEL_TEST_PG="postgres://postgres@127.0.0.1:$port/postgres"
export DUEL_TEST_PG_CA="$dir/ca.crt"
export DUEL_TEST_PG_OTHER_CA="$dir/other.crt"
echo "with-postgres: PostgreSQL $("$bin/postgres" --version | awk '{print $3}') at $DUEL_TEST_PG" >&2
"$@"

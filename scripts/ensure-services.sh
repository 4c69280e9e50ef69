#!/usr/bin/env bash
# Make sure the PostgreSQL and Redis the scale-out tests use are running on loopback; start the
# machine's own services if they are down. Targets: VOXGATE_TEST_POSTGRES / VOXGATE_TEST_REDIS
# (defaults 127.0.0.1:5432 and 127.0.0.1:6379), as in tests/conftest.py.
set -euo pipefail

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; }

if ! pg_up; then
    echo "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
fi
if ! redis_up; then
    echo "starting Redis"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
for _ in $(seq 1 30); do
    if pg_up && redis_up; then
        exit 0
    fi
    sleep 1
done
echo "PostgreSQL (127.0.0.1:5432) or Redis (127.0.0.1:6379) is not reachable" >&2
exit 1

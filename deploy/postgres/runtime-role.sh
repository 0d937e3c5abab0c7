#!/bin/sh
# Run once by the postgres image when it creates the database (docker-entrypoint-initdb.d):
# the role the API and ingest connect as. It owns nothing; `watchfloor db migrate` (the
# `migrate` service, as the owner) grants it what it needs (docs/operations.md, "Database roles").
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v password="$WATCHFLOOR_APP_DB_PASSWORD" <<'SQL'
CREATE ROLE watchfloor_app LOGIN PASSWORD :'password';
SQL

#!/bin/sh
# Registers the Debezium PostgreSQL connector for the example `inventory`
# database (run inside the connect container: /register.sh). Topics are
# dbserver1.inventory.<table>, JSON without schemas, as vigil's compose
# configuration expects.
set -eu
curl -sf -X POST -H 'Content-Type: application/json' http://localhost:8083/connectors -d '{
  "name": "inventory",
  "config": {
    "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
    "plugin.name": "pgoutput",
    "database.hostname": "postgres",
    "database.port": "5432",
    "database.user": "postgres",
    "database.password": "postgres",
    "database.dbname": "postgres",
    "topic.prefix": "dbserver1",
    "schema.include.list": "inventory"
  }
}'
echo

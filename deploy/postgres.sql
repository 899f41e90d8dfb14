-- Creates the role and database dadd-master uses in production.
-- Run as a superuser: psql -U postgres -f deploy/postgres.sql
-- then set DADD_DATABASE_URL=postgres://dadd:<password>@<host>:5432/dadd.
-- dadd-master creates its tables itself at start (embedded migrations).
CREATE ROLE dadd WITH LOGIN PASSWORD 'change-me';
CREATE DATABASE dadd OWNER dadd ENCODING 'UTF8';
\connect dadd
-- The schema belongs to dadd so migrations can create tables in it.
ALTER SCHEMA public OWNER TO dadd;

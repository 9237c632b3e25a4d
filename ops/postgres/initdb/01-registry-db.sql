-- Runs once, when the Postgres volume is first initialised (docker-compose.yml mounts this folder
-- at /docker-entrypoint-initdb.d). The schema registry (Apicurio, SQL storage) keeps its schemas
-- in their own database, so `paystream db migrate` and the registry never touch each other's tables.
CREATE DATABASE registry;

-- Runs once, when the PostgreSQL volume is first created: one database per service.
-- Each service's migration one-shot (`python -m <package>.migrate`) then creates its tables.
CREATE DATABASE users;
CREATE DATABASE orders;
CREATE DATABASE notifications;

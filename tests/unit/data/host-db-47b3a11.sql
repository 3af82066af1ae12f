-- A database made by the Host at commit 47b3a11 (before schema migrations), with a few rows:
-- its tables as that version's start created them, then rows in that version's columns. The
-- admin's API token is hkr_migration-fixture-admin.
BEGIN TRANSACTION;
CREATE TABLE api_tokens (
	token_id VARCHAR NOT NULL, 
	secret_hash VARCHAR NOT NULL, 
	user VARCHAR NOT NULL, 
	description VARCHAR NOT NULL, 
	created_at DATETIME NOT NULL, 
	expires_at DATETIME, 
	revoked_at DATETIME, 
	PRIMARY KEY (token_id), 
	UNIQUE (secret_hash)
);
INSERT INTO "api_tokens" VALUES('t1','e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855','alice','laptop','2026-11-30 08:00:00.000000',NULL,NULL);
CREATE TABLE audit_events (
	id INTEGER NOT NULL, 
	at DATETIME NOT NULL, 
	actor VARCHAR NOT NULL, 
	role VARCHAR NOT NULL, 
	action VARCHAR NOT NULL, 
	target VARCHAR NOT NULL, 
	outcome VARCHAR NOT NULL, 
	detail VARCHAR NOT NULL, 
	peer VARCHAR NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO "audit_events" VALUES(1,'2026-11-30 08:00:00.000000','admin','admin','user.add','alice','ok','','ipv4:127.0.0.1');
CREATE TABLE cluster (
	cluster_id VARCHAR NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (cluster_id)
);
INSERT INTO "cluster" VALUES('00c0ffee00c0ffee','2026-11-30 08:00:00.000000');
CREATE TABLE nodes (
	hostname VARCHAR NOT NULL, 
	total_cores INTEGER NOT NULL, 
	total_memory_bytes BIGINT NOT NULL, 
	numa_nodes JSON, 
	gpus JSON, 
	registered_at DATETIME NOT NULL, 
	last_heartbeat DATETIME, 
	draining BOOLEAN NOT NULL, 
	environments JSON, 
	PRIMARY KEY (hostname)
);
INSERT INTO "nodes" VALUES('n1',8,34359738368,'[]','[]','2026-11-30 08:00:00.000000','2026-11-30 09:00:00.000000',1,'["hakuriver/hakuriver-base:base"]');
CREATE TABLE runner_credentials (
	hostname VARCHAR NOT NULL, 
	secret_hash VARCHAR NOT NULL, 
	issued_at DATETIME NOT NULL, 
	revoked_at DATETIME, 
	PRIMARY KEY (hostname), 
	UNIQUE (secret_hash)
);
CREATE TABLE task_events (
	id INTEGER NOT NULL, 
	task_id BIGINT NOT NULL, 
	status VARCHAR NOT NULL, 
	at DATETIME NOT NULL, 
	detail VARCHAR NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO "task_events" VALUES(1,42,'pending','2026-11-30 08:01:00.000000','');
INSERT INTO "task_events" VALUES(2,42,'completed','2026-11-30 08:01:02.000000','exit code 0');
CREATE TABLE tasks (
	task_id BIGINT NOT NULL, 
	kind VARCHAR NOT NULL, 
	batch_id BIGINT NOT NULL, 
	command VARCHAR NOT NULL, 
	arguments JSON, 
	env JSON, 
	status VARCHAR NOT NULL, 
	assigned_node VARCHAR, 
	target_hostname VARCHAR, 
	required_cores INTEGER NOT NULL, 
	required_memory_bytes BIGINT NOT NULL, 
	required_gpus JSON, 
	target_numa_node_id INTEGER, 
	container_name VARCHAR NOT NULL, 
	privileged BOOLEAN NOT NULL, 
	mounts JSON, 
	priority INTEGER NOT NULL, 
	submitted_at DATETIME NOT NULL, 
	started_at DATETIME, 
	completed_at DATETIME, 
	exit_code INTEGER, 
	error_message VARCHAR NOT NULL, 
	ssh_port INTEGER NOT NULL, 
	stdout_path VARCHAR NOT NULL, 
	stderr_path VARCHAR NOT NULL, 
	kill_requested BOOLEAN NOT NULL, 
	assigned_cpus JSON, 
	gpu_count INTEGER NOT NULL, 
	status_detail VARCHAR NOT NULL, 
	ssh_public_key VARCHAR NOT NULL, 
	owner VARCHAR NOT NULL, 
	network VARCHAR NOT NULL, 
	PRIMARY KEY (task_id)
);
INSERT INTO "tasks" VALUES(42,'command',42,'echo','["hello"]','{}','completed','n1',NULL,1,0,'[]',NULL,'hakuriver/hakuriver-base:base',0,'[]',0,'2026-11-30 08:01:00.000000','2026-11-30 08:01:01.000000','2026-11-30 08:01:02.000000',0,'',0,'','',0,'[0]',0,'','','alice','host');
INSERT INTO "tasks" VALUES(43,'command',43,'sleep','["60"]','{}','pending',NULL,NULL,1,0,'[]',NULL,'hakuriver/hakuriver-base:base',0,'[]',5,'2026-11-30 08:02:00.000000',NULL,NULL,NULL,'',0,'','',0,'[]',0,'','','alice','host');
CREATE TABLE users (
	name VARCHAR NOT NULL, 
	role VARCHAR NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (name)
);
INSERT INTO "users" VALUES('admin','admin','2026-11-30 08:00:00.000000');
INSERT INTO "api_tokens" VALUES('t0','b4c4668e3f3b8e39e90fe8392c577cae96349b99c3cd6e7aa18c83a41235b4a4','admin','','2026-11-30 08:00:00.000000',NULL,NULL);
INSERT INTO "users" VALUES('alice','user','2026-11-30 08:00:00.000000');
CREATE INDEX ix_tasks_owner ON tasks (owner);
CREATE INDEX ix_tasks_assigned_node ON tasks (assigned_node);
CREATE INDEX ix_tasks_status ON tasks (status);
CREATE INDEX ix_tasks_batch_id ON tasks (batch_id);
CREATE INDEX ix_task_events_task_id ON task_events (task_id);
CREATE INDEX ix_api_tokens_user ON api_tokens (user);
CREATE INDEX ix_audit_events_actor ON audit_events (actor);
CREATE INDEX ix_audit_events_action ON audit_events (action);
CREATE INDEX ix_audit_events_at ON audit_events (at);
COMMIT;

"""Versioned schema migrations, written in the SQL that SQLite and PostgreSQL share.

Each entry upgrades the schema by one version; the store applies the missing ones in
order inside one transaction and records the version reached. Never edit a released
migration: add a new one.
"""

from __future__ import annotations

MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            "CREATE TABLE counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
            "INSERT INTO counters (name, value) VALUES ('ca_serial', 0)",
            """CREATE TABLE targets (
                name TEXT PRIMARY KEY,
                kind TEXT NOT NULL,
                host TEXT NOT NULL,
                port INTEGER NOT NULL,
                login TEXT NOT NULL,
                host_key TEXT,
                dbname TEXT,
                sslmode TEXT,
                sslrootcert TEXT,
                created_at TEXT NOT NULL,
                created_by TEXT NOT NULL
            )""",
            """CREATE TABLE target_secrets (
                target TEXT PRIMARY KEY REFERENCES targets(name) ON DELETE CASCADE,
                secret TEXT NOT NULL
            )""",
            """CREATE TABLE grants (
                id TEXT PRIMARY KEY,
                agent TEXT NOT NULL,
                task TEXT NOT NULL,
                reason TEXT NOT NULL,
                valid_after TEXT NOT NULL,
                valid_before TEXT NOT NULL,
                created_at TEXT NOT NULL,
                created_by TEXT NOT NULL,
                permit_pty INTEGER NOT NULL,
                permit_port_forwarding INTEGER NOT NULL,
                source_addresses TEXT NOT NULL,
                force_command TEXT
            )""",
            "CREATE INDEX grants_valid_before ON grants (valid_before)",
            "CREATE INDEX grants_task ON grants (task)",
            """CREATE TABLE grant_targets (
                grant_id TEXT NOT NULL REFERENCES grants(id),
                target TEXT NOT NULL,
                position INTEGER NOT NULL,
                PRIMARY KEY (grant_id, target)
            )""",
            """CREATE TABLE certificates (
                serial BIGINT PRIMARY KEY,
                grant_id TEXT NOT NULL UNIQUE REFERENCES grants(id),
                key_id TEXT NOT NULL,
                key_fingerprint TEXT NOT NULL
            )""",
            """CREATE TABLE revocations (
                grant_id TEXT PRIMARY KEY REFERENCES grants(id),
                revoked_at TEXT NOT NULL,
                revoked_by TEXT NOT NULL,
                reason TEXT NOT NULL
            )""",
            """CREATE TABLE audit_events (
                seq BIGINT PRIMARY KEY,
                at TEXT NOT NULL,
                actor TEXT NOT NULL,
                action TEXT NOT NULL,
                details TEXT NOT NULL,
                prev_hash TEXT NOT NULL,
                hash TEXT NOT NULL
            )""",
            "CREATE INDEX audit_events_at ON audit_events (at)",
        ],
    ),
]

MIGRATIONS.append(
    (
        2,
        [
            """CREATE TABLE sessions (
                id TEXT PRIMARY KEY,
                grant_id TEXT NOT NULL,
                agent TEXT NOT NULL,
                task TEXT NOT NULL,
                target TEXT NOT NULL,
                kind TEXT NOT NULL,
                client TEXT NOT NULL,
                command TEXT,
                started_at TEXT NOT NULL,
                node TEXT NOT NULL,
                ended_at TEXT,
                end_reason TEXT,
                exit_status INTEGER,
                bytes_up BIGINT NOT NULL DEFAULT 0,
                bytes_down BIGINT NOT NULL DEFAULT 0,
                detail TEXT NOT NULL DEFAULT ''
            )""",
            "CREATE INDEX sessions_active ON sessions (ended_at)",
            "CREATE INDEX sessions_grant ON sessions (grant_id)",
            """CREATE TABLE approvals (
                id TEXT PRIMARY KEY,
                kind TEXT NOT NULL,
                session_id TEXT NOT NULL,
                grant_id TEXT NOT NULL,
                agent TEXT NOT NULL,
                task TEXT NOT NULL,
                target TEXT NOT NULL,
                body TEXT NOT NULL,
                reasons TEXT NOT NULL,
                requested_at TEXT NOT NULL,
                expires_at TEXT NOT NULL,
                state TEXT NOT NULL,
                decided_at TEXT,
                decided_by TEXT,
                decision_reason TEXT
            )""",
            "CREATE INDEX approvals_state ON approvals (state)",
        ],
    )
)
MIGRATIONS.append(
    (
        3,
        [
            """CREATE TABLE recordings (
                session_id TEXT PRIMARY KEY,
                path TEXT NOT NULL,
                node TEXT NOT NULL,
                agent TEXT NOT NULL,
                grant_id TEXT NOT NULL,
                task TEXT NOT NULL,
                target TEXT NOT NULL,
                kind TEXT NOT NULL,
                started_at TEXT NOT NULL,
                state TEXT NOT NULL,
                ended_at TEXT,
                size BIGINT,
                sha256 TEXT
            )""",
            "CREATE INDEX recordings_started ON recordings (started_at)",
            "CREATE INDEX recordings_task ON recordings (task)",
        ],
    )
)
MIGRATIONS.append(
    (
        4,
        [
            """CREATE TABLE agents (
                name TEXT PRIMARY KEY,
                public_key TEXT NOT NULL,
                key_fingerprint TEXT NOT NULL UNIQUE,
                may_request TEXT NOT NULL,
                max_ttl_seconds BIGINT,
                created_at TEXT NOT NULL,
                created_by TEXT NOT NULL
            )""",
            """CREATE TABLE access_requests (
                id TEXT PRIMARY KEY,
                agent TEXT NOT NULL,
                key_fingerprint TEXT NOT NULL,
                targets TEXT NOT NULL,
                task TEXT NOT NULL,
                reason TEXT NOT NULL,
                ttl_seconds BIGINT NOT NULL,
                client TEXT NOT NULL,
                node TEXT NOT NULL,
                requested_at TEXT NOT NULL,
                expires_at TEXT NOT NULL,
                state TEXT NOT NULL,
                decided_at TEXT,
                decided_by TEXT,
                decision_reason TEXT,
                grant_id TEXT,
                certificate TEXT
            )""",
            "CREATE INDEX access_requests_state ON access_requests (state)",
            "CREATE INDEX access_requests_task ON access_requests (task)",
        ],
    )
)
MIGRATIONS.append(
    (
        5,
        [
            # Nodes sharing one store: each `bastion serve` registers and heartbeats here.
            """CREATE TABLE nodes (
                name TEXT PRIMARY KEY,
                address TEXT NOT NULL,
                started_at TEXT NOT NULL,
                heartbeat_at TEXT NOT NULL,
                stopped_at TEXT,
                lost_at TEXT
            )""",
            "CREATE INDEX sessions_node ON sessions (node, ended_at)",
        ],
    )
)
MIGRATIONS.append(
    (
        6,
        [
            # Web console accounts, and its sessions and login links by token hash.
            """CREATE TABLE web_users (
                name TEXT PRIMARY KEY,
                role TEXT NOT NULL,
                password_hash TEXT,
                created_at TEXT NOT NULL,
                created_by TEXT NOT NULL
            )""",
            """CREATE TABLE web_tokens (
                token_hash TEXT PRIMARY KEY,
                kind TEXT NOT NULL,
                user_name TEXT NOT NULL REFERENCES web_users(name) ON DELETE CASCADE,
                created_at TEXT NOT NULL,
                expires_at TEXT NOT NULL,
                client TEXT NOT NULL
            )""",
            "CREATE INDEX web_tokens_expires ON web_tokens (expires_at)",
        ],
    )
)
LATEST_VERSION = MIGRATIONS[-1][0]

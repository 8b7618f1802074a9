-- usermgmt schema. Applied at start under an advisory lock when its digest differs from the
-- one recorded in schema_version; every statement is re-runnable, and later versions only add
-- (ADD COLUMN IF NOT EXISTS, CREATE ... IF NOT EXISTS) or replace an index by one under a new
-- name (DROP INDEX IF EXISTS the old), so a database made by an earlier version is brought up
-- to date in place.

-- pg_trgm lets the admin search (ILIKE '%q%') use an index instead of scanning every user.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TABLE IF NOT EXISTS users (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username      text        NOT NULL,
    first_name    text        NOT NULL,
    last_name     text        NOT NULL,
    email         text        NOT NULL,
    password_hash text        NOT NULL,
    role          text        NOT NULL DEFAULT 'User' CHECK (role IN ('Admin', 'User')),
    is_active     boolean     NOT NULL DEFAULT true,
    -- Every access token carries the version it was issued under; bumping it revokes them all.
    token_version integer     NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Usernames and emails are unique regardless of ASCII letter case, and of nothing else:
-- lower(x COLLATE "C") folds A-Z alone whatever the database's collation, as foldCase does in
-- Go, and every comparison of names and addresses is written the same way. The first
-- release's indexes used a plain lower(), which folds non-ASCII letters too by the collation
-- (K, U+212A, is k in most), so the database and the code could disagree on whether two values
-- are one; they are replaced. Values unique under the old indexes are unique under these.
CREATE UNIQUE INDEX IF NOT EXISTS users_username_ascii_key ON users (lower(username COLLATE "C"));
CREATE UNIQUE INDEX IF NOT EXISTS users_email_ascii_key ON users (lower(email COLLATE "C"));
DROP INDEX IF EXISTS users_username_key;
DROP INDEX IF EXISTS users_email_key;
CREATE INDEX IF NOT EXISTS users_role_idx ON users (role) WHERE role = 'Admin';
CREATE INDEX IF NOT EXISTS users_created_at_idx ON users (created_at);
CREATE INDEX IF NOT EXISTS users_search_idx ON users
    USING gin (username gin_trgm_ops, email gin_trgm_ops, first_name gin_trgm_ops, last_name gin_trgm_ops);

-- user_id_blocks counts the users of each block of 1,024 ids, kept by the triggers below in the
-- transaction of every insert and delete: the admin list reads its total from it, and finds
-- where a page of the id order starts, without counting or skipping every user before it
-- (OFFSET 500,000 reads 500,000 index entries; this reads 500 counts, then under 1,024 ids).
CREATE TABLE IF NOT EXISTS user_id_blocks (
    block bigint PRIMARY KEY, -- id >> 10
    users bigint NOT NULL
);
CREATE OR REPLACE FUNCTION count_user_id_blocks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO user_id_blocks (block, users)
        SELECT id >> 10, count(*) FROM inserted GROUP BY 1 ORDER BY 1
        ON CONFLICT (block) DO UPDATE SET users = user_id_blocks.users + EXCLUDED.users;
    ELSE
        UPDATE user_id_blocks b SET users = b.users - d.users
        FROM (SELECT id >> 10 AS block, count(*) AS users FROM deleted GROUP BY 1) d WHERE b.block = d.block;
    END IF;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS users_count_inserted ON users;
CREATE TRIGGER users_count_inserted AFTER INSERT ON users REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION count_user_id_blocks();
DROP TRIGGER IF EXISTS users_count_deleted ON users;
CREATE TRIGGER users_count_deleted AFTER DELETE ON users REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION count_user_id_blocks();
-- A database made before the counts gets them once; the triggers' lock on users, held until
-- this transaction commits, keeps inserts of other instances from slipping between the two.
INSERT INTO user_id_blocks (block, users)
SELECT id >> 10, count(*) FROM users WHERE NOT EXISTS (SELECT 1 FROM user_id_blocks) GROUP BY 1;

-- Only a SHA-256 of each reset token is kept: a leaked table cannot be used to reset passwords.
CREATE TABLE IF NOT EXISTS password_reset_tokens (
    token_hash bytea       PRIMARY KEY,
    user_id    bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS password_reset_tokens_user_idx ON password_reset_tokens (user_id);

-- A session is one login: its refresh tokens rotate within it, and every access token names it,
-- so revoking the session ends both at the next request.
CREATE TABLE IF NOT EXISTS sessions (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id      bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL,
    last_used_at timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL, -- that of its newest refresh token
    ip           text        NOT NULL,
    user_agent   text        NOT NULL,
    revoked_at   timestamptz
);
CREATE INDEX IF NOT EXISTS sessions_user_idx ON sessions (user_id) WHERE revoked_at IS NULL;

-- Refresh tokens, stored as SHA-256 only. A rotated token is kept (rotated_at set) so that its
-- reuse can be told apart from an unknown token.
CREATE TABLE IF NOT EXISTS refresh_tokens (
    token_hash bytea       PRIMARY KEY,
    session_id bigint      NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    expires_at timestamptz NOT NULL,
    rotated_at timestamptz
);
CREATE INDEX IF NOT EXISTS refresh_tokens_session_idx ON refresh_tokens (session_id);

-- Consecutive failed logins per account and client address, for the lockout back-off.
CREATE TABLE IF NOT EXISTS login_failures (
    login        text        NOT NULL, -- 'user:<id>', or 'login:<name as typed>' for unknown names
    ip           text        NOT NULL, -- the client address; for IPv6, its /64
    failures     integer     NOT NULL,
    locked_until timestamptz,
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (login, ip)
);

-- Token buckets of the per-address limit on authentication endpoints, shared by all instances.
CREATE TABLE IF NOT EXISTS rate_limits (
    key        text             PRIMARY KEY,
    tokens     double precision NOT NULL,
    updated_at timestamptz      NOT NULL
);

-- Who did what to whom, written in the same transaction as the change itself. Never a
-- password or token. No foreign keys: the history outlives deleted users.
CREATE TABLE IF NOT EXISTS audit_log (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at timestamptz NOT NULL,
    action     text        NOT NULL,
    actor_id   bigint,
    target_id  bigint,
    ip         text        NOT NULL DEFAULT '',
    details    jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS audit_log_created_idx ON audit_log (created_at);
CREATE INDEX IF NOT EXISTS audit_log_target_idx ON audit_log (target_id, action, created_at);
CREATE INDEX IF NOT EXISTS audit_log_actor_idx ON audit_log (actor_id, created_at);

-- Email verification (added after the first release: existing users start unverified).
ALTER TABLE users ADD COLUMN IF NOT EXISTS email_verified boolean NOT NULL DEFAULT false;

-- Verification tokens, stored as SHA-256 only, each for the address it was mailed to.
CREATE TABLE IF NOT EXISTS email_verification_tokens (
    token_hash bytea       PRIMARY KEY,
    user_id    bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    email      text        NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS email_verification_tokens_user_idx ON email_verification_tokens (user_id);

-- Mail waiting to be sent, written in the transaction of the change that causes it, so that
-- no mail is lost when SMTP fails or the process dies. data holds what the template needs
-- (a token among it) and is emptied once the message is sent or given up.
CREATE TABLE IF NOT EXISTS mail_outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind            text        NOT NULL,
    recipient       text        NOT NULL,
    data            jsonb       NOT NULL,
    created_at      timestamptz NOT NULL,
    next_attempt_at timestamptz NOT NULL,
    attempts        integer     NOT NULL DEFAULT 0,
    sent_at         timestamptz,
    failed_at       timestamptz,
    last_error      text
);
CREATE INDEX IF NOT EXISTS mail_outbox_due_idx ON mail_outbox (next_attempt_at)
    WHERE sent_at IS NULL AND failed_at IS NULL;
-- The user a message is about (added after the first release; no foreign key: the user may be
-- deleted before the message is sent), and the mail an address was sent lately, for the caps.
ALTER TABLE mail_outbox ADD COLUMN IF NOT EXISTS user_id bigint;
UPDATE mail_outbox o SET user_id = u.id FROM users u
    WHERE o.user_id IS NULL AND lower(u.email COLLATE "C") = lower(o.recipient COLLATE "C");
CREATE INDEX IF NOT EXISTS mail_outbox_recipient_ascii_idx ON mail_outbox (lower(recipient COLLATE "C"), created_at);
DROP INDEX IF EXISTS mail_outbox_recipient_idx;
CREATE INDEX IF NOT EXISTS mail_outbox_user_idx ON mail_outbox (user_id, created_at);

-- Addresses are ASCII only since this version (mail goes out without SMTPUTF8). One that an
-- earlier version accepted stays as it was, so that its account keeps working and can log in
-- with it, but it no longer counts as verified: no mail can reach it now, and the old case
-- folding could carry the verified mark of an address over to a non-ASCII look-alike without
-- any mail (liz@ to l + U+0130 + z@). Its owner, or an admin, changes it to a deliverable one.
UPDATE users SET email_verified = false WHERE email_verified AND email COLLATE "C" ~ '[^!-~]';

-- Metadata: user_metadata the user may write, app_metadata only admins may (see users.go),
-- each a JSON object. The GIN index serves the admin list's app_metadata.<key>=<value> filter
-- (app_metadata @> '{"<key>": "<value>"}').
ALTER TABLE users ADD COLUMN IF NOT EXISTS user_metadata jsonb NOT NULL DEFAULT '{}'
    CHECK (jsonb_typeof(user_metadata) = 'object');
ALTER TABLE users ADD COLUMN IF NOT EXISTS app_metadata jsonb NOT NULL DEFAULT '{}'
    CHECK (jsonb_typeof(app_metadata) = 'object');
CREATE INDEX IF NOT EXISTS users_app_metadata_idx ON users USING gin (app_metadata jsonb_path_ops);

-- Invitations of users an admin created without a password (their password_hash is '' until
-- they accept: see invite.go). Stored as SHA-256 only, each for the address it was mailed to.
CREATE TABLE IF NOT EXISTS invitation_tokens (
    token_hash bytea       PRIMARY KEY,
    user_id    bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    email      text        NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS invitation_tokens_user_idx ON invitation_tokens (user_id);

-- Two-factor login (TOTP). mfa_enabled mirrors an enabled mfa_totp row, so that the user row
-- alone says whether a login needs a second factor.
ALTER TABLE users ADD COLUMN IF NOT EXISTS mfa_enabled boolean NOT NULL DEFAULT false;

-- How each session was authenticated (RFC 8176 method names), carried by its access tokens as
-- "amr". Sessions from before two-factor login were opened with a password.
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS amr text[] NOT NULL DEFAULT '{pwd}';

-- A user's TOTP secret, sealed (AES-256-GCM, see seal.go): a copy of the database holds no
-- usable secret. enabled_at is NULL while the enrolment waits for its first code. last_step is
-- the time step of the last code accepted: a code is accepted only for a later step, so none
-- works twice (RFC 6238 section 5.2).
CREATE TABLE IF NOT EXISTS mfa_totp (
    user_id       bigint      PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    sealed_secret text        NOT NULL,
    created_at    timestamptz NOT NULL,
    enabled_at    timestamptz,
    last_step     bigint      NOT NULL DEFAULT 0
);

-- Recovery codes, as salted SHA-256 only; a code is deleted when it is used.
CREATE TABLE IF NOT EXISTS mfa_recovery_codes (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id   bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    salt      bytea  NOT NULL,
    code_hash bytea  NOT NULL
);
CREATE INDEX IF NOT EXISTS mfa_recovery_codes_user_idx ON mfa_recovery_codes (user_id);

-- The second step of a login: a token, stored as SHA-256 only, given for the right password of
-- a user with TOTP on, and traded once for a session with a code. token_version is the user's
-- when the password was checked: a password change or reset since voids the token.
CREATE TABLE IF NOT EXISTS mfa_tokens (
    token_hash    bytea       PRIMARY KEY,
    user_id       bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_version integer     NOT NULL,
    expires_at    timestamptz NOT NULL,
    failures      integer     NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS mfa_tokens_user_idx ON mfa_tokens (user_id);

-- Webhooks: endpoints that receive the account events. The secret is sealed like the outbox's
-- tokens; after a rotation the previous one keeps signing until previous_secret_until.
CREATE TABLE IF NOT EXISTS webhooks (
    id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    url                   text        NOT NULL,
    events                text[]      NOT NULL,
    description           text        NOT NULL DEFAULT '',
    enabled               boolean     NOT NULL DEFAULT true,
    secret                text        NOT NULL,
    previous_secret       text,
    previous_secret_until timestamptz,
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL
);

-- One row per event and endpoint, written in the transaction of the event's audit row, so
-- that an event exists if and only if its change committed. payload is the exact body sent.
-- A worker leases a row (leased_until) while it sends it; a lease that runs out (the instance
-- died) makes the row due again.
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    webhook_id      bigint      NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id        bigint      NOT NULL, -- the audit row's id
    type            text        NOT NULL,
    payload         text        NOT NULL,
    status          text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL,
    next_attempt_at timestamptz NOT NULL,
    leased_until    timestamptz,
    last_status     integer,
    last_error      text,
    delivered_at    timestamptz
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_webhook_idx ON webhook_deliveries (webhook_id, id);

-- The digest of the schema last applied: a start with the same schema.sql runs no DDL.
CREATE TABLE IF NOT EXISTS schema_version (
    id         integer     PRIMARY KEY CHECK (id = 1),
    digest     text        NOT NULL,
    applied_at timestamptz NOT NULL
);

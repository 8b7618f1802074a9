-- usermgmt schema. Applied at every start under an advisory lock; every statement is
-- re-runnable, and later versions only add (ADD COLUMN IF NOT EXISTS, CREATE ... IF NOT
-- EXISTS), so a database made by an earlier version is brought up to date in place.

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

-- Usernames and emails are unique regardless of case.
CREATE UNIQUE INDEX IF NOT EXISTS users_username_key ON users (lower(username));
CREATE UNIQUE INDEX IF NOT EXISTS users_email_key ON users (lower(email));
CREATE INDEX IF NOT EXISTS users_role_idx ON users (role) WHERE role = 'Admin';
CREATE INDEX IF NOT EXISTS users_created_at_idx ON users (created_at);
CREATE INDEX IF NOT EXISTS users_search_idx ON users
    USING gin (username gin_trgm_ops, email gin_trgm_ops, first_name gin_trgm_ops, last_name gin_trgm_ops);

-- Only a SHA-256 of each reset token is kept: a leaked table cannot be used to reset passwords.
CREATE TABLE IF NOT EXISTS password_reset_tokens (
    token_hash bytea       PRIMARY KEY,
    user_id    bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS password_reset_tokens_user_idx ON password_reset_tokens (user_id);

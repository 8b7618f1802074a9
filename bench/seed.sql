-- Seeds the bench database, whose schema the server has applied, with :users users, one admin
-- and :sessions refresh sessions. Every user has the password whose bcrypt hash is :'hash'
-- (one hash made beforehand: hashing 100,000 passwords at cost 12 would take hours).
-- Set-based, so it takes seconds.
--   user000001 .. user100000  role User,  email userNNNNNN@bench.example, verified
--   benchadmin                role Admin, email benchadmin@bench.example, verified
--   sessions of user000001 .. (one each), each with the refresh token bench-refresh-N
\set ON_ERROR_STOP on

INSERT INTO users (username, first_name, last_name, email, password_hash, role, email_verified, created_at, updated_at)
SELECT 'user' || lpad(i::text, 6, '0'),
       (ARRAY['Alice', 'Bruno', 'Chloé', 'Dmitri', 'Emma', 'Farid', 'Grace', 'Hiroshi', 'Ines', 'Jonas',
              'Kofi', 'Lena', 'Mateo', 'Nadia', 'Oskar', 'Priya', 'Quentin', 'Rosa', 'Sven', 'Tariq'])[1 + i % 20],
       (ARRAY['Smith', 'García', 'Müller', 'Rossi', 'Dubois', 'Nowak', 'Silva', 'Kim', 'Jensen', 'Okafor',
              'Novak', 'Haddad', 'Tanaka', 'Larsen', 'Moreau', 'Kowalski', 'Pereira', 'Cohen', 'Ivanova',
              'Nguyen', 'Schmidt', 'Costa', 'Andersen', 'Yilmaz', 'Murphy'])[1 + (i / 20) % 25],
       'user' || lpad(i::text, 6, '0') || '@bench.example',
       :'hash', 'User', true,
       now() - make_interval(mins => :users - i), now() - make_interval(mins => :users - i)
FROM generate_series(1, :users) AS i;

INSERT INTO users (username, first_name, last_name, email, password_hash, role, email_verified)
VALUES ('benchadmin', 'Bench', 'Admin', 'benchadmin@bench.example', :'hash', 'Admin', true);

-- Refresh tokens are stored as SHA-256 of the token text, as the server's hashToken does.
WITH s AS (
    INSERT INTO sessions (user_id, created_at, last_used_at, expires_at, ip, user_agent)
    SELECT id, now(), now(), now() + interval '30 days', '10.255.0.1', 'usermgmt bench seed'
    FROM users WHERE username LIKE 'user%' ORDER BY id LIMIT :sessions
    RETURNING id
)
INSERT INTO refresh_tokens (token_hash, session_id, expires_at)
SELECT sha256(convert_to('bench-refresh-' || row_number() OVER (ORDER BY id), 'UTF8')), id, now() + interval '30 days'
FROM s;

-- Fresh statistics and visibility map, as a long-running database would have.
VACUUM ANALYZE users;

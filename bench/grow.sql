-- Grows the bench database of bench/seed.sql from :from users to :users, each new user with
-- one session, so that there are as many sessions as users: the scale scenarios of
-- bench/run.sh. The new users are named as the seeded ones (user000001 .., and from
-- user1000000 on without padding); every one has the password whose bcrypt hash is :'hash'.
\set ON_ERROR_STOP on

INSERT INTO users (username, first_name, last_name, email, password_hash, role, email_verified, created_at, updated_at)
SELECT 'user' || n,
       (ARRAY['Alice', 'Bruno', 'Chloé', 'Dmitri', 'Emma', 'Farid', 'Grace', 'Hiroshi', 'Ines', 'Jonas',
              'Kofi', 'Lena', 'Mateo', 'Nadia', 'Oskar', 'Priya', 'Quentin', 'Rosa', 'Sven', 'Tariq'])[1 + i % 20],
       (ARRAY['Smith', 'García', 'Müller', 'Rossi', 'Dubois', 'Nowak', 'Silva', 'Kim', 'Jensen', 'Okafor',
              'Novak', 'Haddad', 'Tanaka', 'Larsen', 'Moreau', 'Kowalski', 'Pereira', 'Cohen', 'Ivanova',
              'Nguyen', 'Schmidt', 'Costa', 'Andersen', 'Yilmaz', 'Murphy'])[1 + (i / 20) % 25],
       'user' || n || '@bench.example',
       :'hash', 'User', true,
       now() - make_interval(mins => :users - i), now() - make_interval(mins => :users - i)
FROM generate_series(:from + 1, :users) AS i,
     LATERAL (SELECT CASE WHEN i < 1000000 THEN lpad(i::text, 6, '0') ELSE i::text END AS n) AS name;

INSERT INTO sessions (user_id, created_at, last_used_at, expires_at, ip, user_agent)
SELECT id, now(), now(), now() + interval '30 days', '10.255.0.2', 'usermgmt bench grow'
FROM users u WHERE NOT EXISTS (SELECT 1 FROM sessions s WHERE s.user_id = u.id);

VACUUM ANALYZE users;
VACUUM ANALYZE sessions;
